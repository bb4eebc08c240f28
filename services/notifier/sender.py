"""The delivery loop: claim due deliveries, hand each to its channel, write back what
came of it; and the reconciler that hands back claims whose sender died.

Failure: a channel that raises instead of answering is taken as a transient failure
(retried on the schedule), so one bad delivery never stops the others; while
Postgres is away, claiming is tried again every `poll_seconds`, and an outcome that
could not be written leaves the row 'sending' until its claim runs out, when the
reconciler marks it `unsure` and the next sender asks the channel before sending
again (stores/deliveries.py says why that is exactly once for Slack).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from zoneinfo import ZoneInfo

import asyncpg

from services.notifier.channel import Channel, Message, Outcome, Recipient
from services.notifier.intake import Intake
from services.notifier.plan import Plan, plan_digest
from services.notifier.schedule import Queued, digest_cut, gives_up, retry_delay
from services.notifier.stores.deliveries import Delivery, DeliveryStore

log = logging.getLogger("qm.notifier.sender")


async def _confirm(channel: Channel, to: Recipient, message: Message, key: str) -> Outcome | None:
    confirm = getattr(channel, "confirm", None)
    if confirm is None:
        # E-mail and webhooks can't be asked: sent again with the same delivery id
        # (Message-ID / webhook-id) for the receiver to drop; at least once here.
        return None
    out: Outcome | None = await confirm(to, message, key)
    return out


class Sender:
    """Sends what is due through `channels` (by name), `batch` at a time."""

    def __init__(
        self, store: DeliveryStore, channels: Mapping[str, Channel], *, batch: int,
        lease_seconds: float, poll_seconds: float, max_attempts: int,
        hold_after_send: bool = False,
    ) -> None:  # fmt: skip
        self._store = store
        self._channels = channels
        self._batch = batch
        self._lease = lease_seconds
        self._poll = poll_seconds
        self._max = max_attempts
        self._hold = hold_after_send
        self.stopping = False
        self.sent = 0
        self.confirmed = 0
        self.held = asyncio.Event()

    async def run(self) -> None:
        """Until `stopping`."""
        while not self.stopping:
            try:
                claimed = await self._store.claim(self._batch, self._lease)
            except (OSError, asyncpg.PostgresError) as exc:
                log.warning("claiming deliveries failed (tried again in 1 s): %s", exc)
                await asyncio.sleep(max(self._poll, 1.0))
                continue
            if not claimed:
                await asyncio.sleep(self._poll)
                continue
            await asyncio.gather(*(self._one(d) for d in claimed))

    async def _attempt(self, d: Delivery, channel: Channel) -> Outcome:
        to = Recipient(d.recipient, d.address, d.display_name)
        key = str(d.id)
        try:
            if d.unsure:
                found = await _confirm(channel, to, d.message, key)
                if found is not None:
                    if found.kind == "delivered":
                        self.confirmed += 1
                        log.info("delivery %d was there already (%s): not sent again",
                                 d.id, found.ref)  # fmt: skip
                    return found
            return await channel.send(to, d.message, key)
        except Exception as exc:  # a channel's bug must not stop the others
            log.exception("channel %s raised on delivery %d", d.channel, d.id)
            return Outcome("retry", reason=f"{type(exc).__name__}: {exc}")

    async def _one(self, d: Delivery) -> None:
        channel = self._channels.get(d.channel)
        if channel is None:
            out = Outcome("failed", reason=f"channel {d.channel!r} is not configured here")
        else:
            out = await self._attempt(d, channel)
        if self._hold and out.kind == "delivered" and not self.held.is_set():
            log.warning("holding after delivery %d was accepted (QM_NOTIFIER_HOLD_AFTER_SEND)",
                        d.id)  # fmt: skip
            self.held.set()
            await asyncio.Event().wait()  # for good: the kill test SIGKILLs us here
        try:
            await self._record(d, out)
        except (OSError, asyncpg.PostgresError) as exc:
            log.warning("outcome of delivery %d not recorded (its claim runs out, then it"
                        " is confirmed or sent again): %s", d.id, exc)  # fmt: skip

    async def _record(self, d: Delivery, out: Outcome) -> None:
        if out.kind == "delivered":
            self.sent += 1
            await self._store.delivered(d.id, out.ref)
        elif out.kind == "retry" and not gives_up(d.attempts, self._max):
            delay = retry_delay(d.attempts, out.retry_after_seconds)
            await self._store.retry(d.id, delay, out.reason)
        elif out.kind == "retry":
            await self._store.failed(d.id, f"gave up after {d.attempts} attempts: {out.reason}")
        else:
            reason = out.reason or out.kind
            log.warning("delivery %d (%s to %s) failed: %s", d.id, d.channel, d.recipient, reason)
            await self._store.failed(d.id, reason)


class Reconciler:
    """Every `every` seconds, hands back claims that ran out (store.reconcile)."""

    def __init__(self, store: DeliveryStore, every: float) -> None:
        self._store = store
        self._every = every
        self.stopping = False
        self.returned = 0

    async def run(self) -> None:
        while not self.stopping:
            try:
                n = await self._store.reconcile()
                if n:
                    log.warning("%d delivery claim(s) ran out without an outcome; handed back", n)
                self.returned += n
            except (OSError, asyncpg.PostgresError) as exc:
                log.warning("reconciling deliveries failed (tried again): %s", exc)
            await asyncio.sleep(self._every)


class Digester:
    """Every `every` seconds: the facts queued for managers' digests before the latest
    digest hour become one digest delivery per manager (and channel) for that day.
    A replica that was down catches up at its next look; two replicas never take
    one fact twice (store.take_digests)."""

    def __init__(
        self, store: DeliveryStore, intake: Intake, hour: int, tz: ZoneInfo, every: float = 60.0,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:  # fmt: skip
        self._store = store
        self._intake = intake
        self._hour = hour
        self._tz = tz
        self._every = every
        self._clock = clock
        self.stopping = False
        self.taken = 0

    async def once(self) -> int:
        """Take what is due now; how many facts."""
        now = self._clock()
        cut = digest_cut(now, self._hour, self._tz)

        async def build(waiting: list[Queued]) -> Plan:
            who = await self._intake.audience([q.user_id for q in waiting])
            return plan_digest(waiting, cut.date(), who, now)

        n = await self._store.take_digests(cut, build)
        self.taken += n
        return n

    async def run(self) -> None:
        while not self.stopping:
            try:
                await self.once()
            except (OSError, asyncpg.PostgresError) as exc:
                log.warning("digests not taken (tried again in %s s): %s", self._every, exc)
            await asyncio.sleep(self._every)
