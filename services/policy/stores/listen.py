"""The LISTEN connection: limit, directory and reservation changes from every replica
within milliseconds (issue 14, item 13: it was never re-created after a PostgreSQL
restart, and holds took up to a minute to reach the other replicas).

One asyncpg connection outside the pool LISTENs on the two channels. When it is lost
(PostgreSQL restarted, the connection was killed, or a ping every `refresh_seconds`
fails), it is connected again with backoff (0.1 s doubling to RETRY_MAX_SECONDS), and
on every reconnect what may have changed meanwhile is read again: a NOTIFY sent while
nobody listened is lost. Until then the replica answers from polling: limits by
config_version every refresh_seconds (SnapshotRefresh), open reservations every
refresh_seconds here; the log says so.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable

import asyncpg

from quartermaster.db import RETRIED_NEXT_ROUND, close_connection, outage_text
from services.policy.reservations import ReservationsView, from_notice
from services.policy.stores.changes import CHANGED_CHANNEL
from services.policy.stores.reservations import RESERVATIONS_CHANNEL

log = logging.getLogger("qm.policy.listen")
# Short, so a replica hears changes again well within a second of PostgreSQL's return
# (a failed connect to a stopped server costs a refused TCP connection).
RETRY_MAX_SECONDS = 0.4
PING_TIMEOUT_SECONDS = 5.0
RESYNC_ATTEMPTS = 8  # about two seconds of tries after a reconnect


class ChangeListener:
    """LISTENs for the workspace's changes: sets `changed` when its limits or
    directory change and puts every reservation made or settled on any replica in
    `view`. `resync()` reads open reservations again (after a gap); `refresh_seconds`
    is how often the connection is pinged, and how often `resync` polls while it is
    down."""

    def __init__(
        self,
        database_url: str,
        workspace_id: str,
        changed: asyncio.Event,
        view: ReservationsView,
        resync: Callable[[], Awaitable[None]],
        refresh_seconds: float,
    ) -> None:
        self._url = database_url
        self._ws = workspace_id
        self._changed = changed
        self._view = view
        self._resync = resync
        self._refresh_seconds = refresh_seconds
        self._conn: asyncpg.Connection | None = None
        self._lost = asyncio.Event()
        self.reconnects = 0

    @property
    def connected(self) -> bool:
        return self._conn is not None and not self._conn.is_closed()

    async def connect(self) -> None:
        """Connect and LISTEN; raises what asyncpg raises when PostgreSQL can't be
        reached (OSError, asyncpg.PostgresError)."""
        # Every statement bounded (LISTEN too): a PostgreSQL frozen between the
        # handshake and LISTEN held this connect, and the close below, for good.
        conn = await asyncpg.connect(
            self._url, timeout=PING_TIMEOUT_SECONDS, command_timeout=PING_TIMEOUT_SECONDS
        )
        try:
            await conn.add_listener(CHANGED_CHANNEL, self._on_change)
            await conn.add_listener(RESERVATIONS_CHANNEL, self._on_reservation)
        except BaseException:
            conn.terminate()  # it failed: nothing to say goodbye to
            raise
        self._lost.clear()
        conn.add_termination_listener(lambda _c: self._lost.set())
        self._conn = conn

    def _on_change(self, _c: object, _pid: object, _channel: object, payload: str) -> None:
        if payload == self._ws:
            self._changed.set()

    def _on_reservation(self, _c: object, _pid: object, _channel: object, payload: str) -> None:
        workspace, reservation = from_notice(payload)
        if workspace == self._ws:
            self._view.put(reservation)

    async def run(self) -> None:
        """Forever (after `connect`): notice a lost connection, connect again, catch up."""
        while True:
            await self._until_lost()
            log.warning(
                "the LISTEN connection to PostgreSQL is lost: reconnecting; until then "
                "limits and reservations are polled every %s s",
                self._refresh_seconds,
            )
            began = time.monotonic()
            await self._reconnect()
            self.reconnects += 1
            # Whatever was NOTIFYed during the gap is lost: read it all again.
            self._changed.set()
            await self._resync_soon()
            log.info(
                "LISTEN connection back after %.1f s; limits and reservations read again",
                time.monotonic() - began,
            )

    async def _until_lost(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._lost.wait(), self._refresh_seconds)
                return
            # A half-open TCP connection says nothing: ask.
            try:
                assert self._conn is not None
                await self._conn.execute("SELECT 1", timeout=PING_TIMEOUT_SECONDS)
            except RETRIED_NEXT_ROUND:
                return

    async def _reconnect(self) -> None:
        if self._conn is not None:
            self._conn.terminate()
            self._conn = None
        delay, polled = 0.1, time.monotonic()
        while True:
            try:
                await self.connect()
                return
            except RETRIED_NEXT_ROUND as exc:
                log.debug("LISTEN reconnect failed: %s", exc)
            if time.monotonic() - polled >= self._refresh_seconds:
                polled = time.monotonic()
                await self._try_resync()
            await asyncio.sleep(delay)
            delay = min(delay * 2, RETRY_MAX_SECONDS)

    async def _resync_soon(self) -> None:
        # Just after a restart the pool may still hand out dead connections, or the
        # server may say it is starting up: try again shortly rather than wait for
        # the next poll, since what was NOTIFYed during the gap is unseen until then.
        delay = 0.1
        for _ in range(RESYNC_ATTEMPTS - 1):
            if await self._try_resync(quiet=True):
                return
            await asyncio.sleep(delay)
            delay = min(delay * 2, RETRY_MAX_SECONDS)
        await self._try_resync()

    async def _try_resync(self, quiet: bool = False) -> bool:
        try:
            await self._resync()
            return True
        except RETRIED_NEXT_ROUND as exc:
            # Housekeeping reads them again within a minute anyway.
            (log.debug if quiet else log.warning)(
                "could not read open reservations again: %s", outage_text(exc)
            )
            return False

    async def close(self) -> None:
        """Close the connection within PING_TIMEOUT_SECONDS (its close waited for good
        on a frozen PostgreSQL, and with it policy's stop)."""
        if self._conn is not None:
            await close_connection(self._conn, PING_TIMEOUT_SECONDS)
