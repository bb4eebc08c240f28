"""policy's background work beside the RPCs: keeping the snapshot current, recording
settled reservations, and housekeeping of reservations.

Each loop survives Postgres being away (it logs and tries again later); what that
costs is said at each one.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging

from quartermaster.consumers import take_all
from quartermaster.db import RETRIED_NEXT_ROUND, outage_text
from services.policy.evaluator import Evaluator
from services.policy.reservations import ReservationsView
from services.policy.stores.reservations import ReservationStore
from services.policy.stores.snapshot import SnapshotStore

log = logging.getLogger("qm.policy")
HOUSEKEEPING_SECONDS = 60.0
# How long released or expired reservations are kept in Postgres.
KEEP_OLD_RESERVATIONS_SECONDS = 86_400.0


class SnapshotRefresh:
    """Reads the workspace's rules and directory again when they changed and installs
    them in the evaluator whole. `changed` is set by the NOTIFY listener."""

    def __init__(
        self,
        store: SnapshotStore,
        evaluator: Evaluator,
        refresh_seconds: float,
        changed: asyncio.Event,
    ) -> None:
        self._store = store
        self._ev = evaluator
        self._refresh_seconds = refresh_seconds
        self._lock = asyncio.Lock()
        self.changed = changed
        self.reloads = 0

    async def reload(self) -> None:
        """Load the snapshot again (keeping the directory when it did not change),
        warm it and swap it in."""
        async with self._lock:
            snap = await self._store.load(self._ev.snapshot)
            self._ev.install(snap)  # warmed before any Check can see it
            self.reloads += 1
            # The snapshot lives until the next change: keep the collector from
            # walking its hundreds of thousands of objects again and again.
            gc.freeze()

    async def run(self) -> None:
        """Reload when Postgres says the rules changed (NOTIFY, within milliseconds on
        every replica), and check config_version every refresh_seconds anyway (a
        missed notification, or a listener connection that was lost, costs at most
        that long)."""
        while True:
            notified = False
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.changed.wait(), self._refresh_seconds)
                notified = True
            self.changed.clear()
            try:
                if not notified:
                    version = await self._store.config_version()
                    if version == self._ev.snapshot.version:
                        continue
                await self.reload()
            except RETRIED_NEXT_ROUND as exc:
                # Keep answering with the last known rules; Postgres may be back soon.
                log.warning("could not refresh limits, keeping the last ones: %s", outage_text(exc))


class Settlements:
    """Requests that a total reported as counted, on their way to their reservations
    in Postgres (ReservationStore.mark_settled): a replica started after the totals
    topic dropped that total learns it there, instead of counting the reservation
    and its usage both."""

    BATCH = 5_000

    def __init__(
        self, store: ReservationStore, view: ReservationsView, loop: asyncio.AbstractEventLoop
    ) -> None:
        self._store = store
        self._view = view
        self._loop = loop
        self._queue: asyncio.Queue[tuple[str, list[str]]] = asyncio.Queue()

    def seen(self, period_key: str, request_ids: list[str]) -> None:
        """Called by the totals consumer thread."""
        self._loop.call_soon_threadsafe(self._queue.put_nowait, (period_key, request_ids))

    async def run(self) -> None:
        while True:
            by_period: dict[str, list[str]] = {}
            for key, ids in await take_all(self._queue):
                # Most counted requests were never reserved: only reservations are written.
                held = self._view.held_for(ids)
                if held:
                    by_period.setdefault(key, []).extend(held)
            for key, ids in by_period.items():
                for i in range(0, len(ids), self.BATCH):
                    chunk = ids[i : i + self.BATCH]
                    try:
                        await self._store.mark_settled(key, chunk)
                    except RETRIED_NEXT_ROUND as exc:
                        # This replica knows anyway; one started later may count these
                        # reservations until they expire.
                        log.warning(
                            "could not record %d settled requests: %s", len(chunk), outage_text(exc)
                        )


async def housekeeping(store: ReservationStore, evaluator: Evaluator) -> None:
    """Every minute: drop expired reservations from memory, delete day-old ones from
    Postgres, and pick up any whose NOTIFY was missed (a lost listener)."""
    view = evaluator.reservations
    while True:
        await asyncio.sleep(HOUSEKEEPING_SECONDS)
        view.prune(evaluator.clock())
        try:
            await store.forget_old(KEEP_OLD_RESERVATIONS_SECONDS)
            await view.sync_from(store.open_reservations)
        except RETRIED_NEXT_ROUND as exc:
            log.warning("reservation housekeeping failed, will retry: %s", outage_text(exc))
