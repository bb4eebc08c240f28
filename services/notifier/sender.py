"""The delivery loop: claim due deliveries, hand each to its channel, write back what
came of it; and the reconciler that hands back claims whose sender died.

Retries follow each channel's schedule (`schedules`: webhooks the Standard Webhooks
steps over hours, services.notifier.retries; others the core's doubling one,
services.notifier.schedule). An outcome `disabled` (a webhook's 410) fails the
delivery and closes the endpoint through the `gate`, which is asked before every
send, so the endpoint's other deliveries fail without being posted.

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
from collections.abc import Callable, Collection, Mapping
from datetime import UTC, datetime
from typing import Protocol
from zoneinfo import ZoneInfo

from quartermaster.db import RETRIED_NEXT_ROUND, outage_text
from services.notifier.channel import Channel, Outcome, Recipient
from services.notifier.intake import Intake
from services.notifier.plan import Plan, plan_digest
from services.notifier.schedule import Queued, digest_cut, gives_up, retry_delay
from services.notifier.stores.deliveries import Delivery, DeliveryStore

log = logging.getLogger("qm.notifier.sender")

Schedule = Callable[[int, float | None], float | None]
"""(failed attempts so far, the receiver's Retry-After in seconds or None) → seconds
until the next attempt, or None when the delivery has had its last attempt."""


def core_schedule(max_attempts: int) -> Schedule:
    """The core's schedule (5 s doubling to 1 h), `max_attempts` attempts in all."""

    def delay(attempts: int, retry_after: float | None) -> float | None:
        return None if gives_up(attempts, max_attempts) else retry_delay(attempts, retry_after)

    return delay


class Gate(Protocol):
    """Endpoints closed to delivery (webhooks that answered 410)."""

    async def closed(self, channel: str, recipient: str) -> str | None: ...

    async def close(self, channel: str, recipient: str, reason: str) -> None: ...


class Observer(Protocol):
    """What the sender reports of each attempt (services.notifier.metrics)."""

    def attempt(self, channel: str, outcome: str, lag_seconds: float | None) -> None: ...


async def _confirm(channel: Channel, to: Recipient, d: Delivery) -> Outcome | None:
    """The channel's answer to "was delivery `d` sent already?" (Slack reads back from
    `d.created_at`: its message can't be older than its row), or None: send it."""
    confirm = getattr(channel, "confirm", None)
    if confirm is None:
        # E-mail and webhooks can't be asked: sent again with the same delivery id
        # (Message-ID / webhook-id) for the receiver to drop; at least once here.
        return None
    out: Outcome | None = await confirm(to, d.message, str(d.id), since=d.created_at)
    return out


class Sender:
    """Sends what is due through `channels` (by name), `batch` at a time; retries by
    `schedules[channel]`, else the core's schedule of `max_attempts`."""

    def __init__(
        self, store: DeliveryStore, channels: Mapping[str, Channel], *, batch: int,
        lease_seconds: float, poll_seconds: float, max_attempts: int,
        hold_after_send: bool = False, schedules: Mapping[str, Schedule] | None = None,
        gate: Gate | None = None, observer: Observer | None = None,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        serial: Collection[str] = (),
    ) -> None:  # fmt: skip
        self._serial = tuple(serial)
        self._store = store
        self._channels = channels
        self._batch = batch
        self._lease = lease_seconds
        self._poll = poll_seconds
        self._default_schedule = core_schedule(max_attempts)
        self._schedules = dict(schedules or {})
        self._gate = gate
        self._observer = observer
        self._clock = clock
        self._hold = hold_after_send
        self.stopping = False
        self.sent = 0
        self.confirmed = 0
        self.held = asyncio.Event()

    async def run(self) -> None:
        """Until `stopping`: up to `batch` deliveries in flight, a slot taken again as
        soon as its delivery is done, so a slow or paced one holds only its own slot
        (for the `serial` channels, those paced per address, the store gives one
        delivery at a time per address, so a burst to one person waits on their pace,
        not everyone's). When stopped (its
        task cancelled), deliveries in flight are cut off: their claims run out and
        the reconciler hands them on, marked unsure."""
        flying: set[asyncio.Task[None]] = set()
        try:
            while not self.stopping:
                free = 0 if self.held.is_set() else self._batch - len(flying)
                claimed: list[Delivery] = []
                if free > 0:
                    try:
                        claimed = await self._store.claim(free, self._lease, self._serial)
                    except RETRIED_NEXT_ROUND as exc:
                        log.warning(
                            "claiming deliveries failed (tried again in 1 s): %s", outage_text(exc)
                        )
                        await asyncio.sleep(max(self._poll, 1.0))
                        continue
                flying |= {asyncio.create_task(self._one(d)) for d in claimed}
                if not flying:
                    await asyncio.sleep(self._poll)
                    continue
                # All of them, or `poll` seconds: fast sends are claimed again as one
                # batch (a claim per freed slot would cost a round trip per delivery);
                # a slow or paced one holds its slot only, the others go on meanwhile.
                done, flying = await asyncio.wait(flying, timeout=self._poll)
                for task in done:
                    if not task.cancelled() and task.exception() is not None:
                        log.error("a delivery's task raised", exc_info=task.exception())
        finally:
            for task in flying:
                task.cancel()
            await asyncio.gather(*flying, return_exceptions=True)

    async def _attempt(self, d: Delivery, channel: Channel) -> Outcome:
        to = Recipient(d.recipient, d.address, d.display_name)
        key = str(d.id)
        try:
            if d.unsure:
                found = await _confirm(channel, to, d)
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
        closed = None
        if self._gate is not None and channel is not None:
            try:
                closed = await self._gate.closed(d.channel, d.recipient)
            except RETRIED_NEXT_ROUND as exc:
                closed = None  # sent; a 410 answer closes it again
                log.warning(
                    "could not ask whether %s is disabled: %s", d.recipient, outage_text(exc)
                )
        if channel is None:
            out = Outcome("failed", reason=f"channel {d.channel!r} is not configured here")
        elif closed is not None:
            out = Outcome("failed", reason=closed)
        else:
            out = await self._attempt(d, channel)
        if self._observer is not None:
            lag = (self._clock() - d.intent_at).total_seconds()
            self._observer.attempt(d.channel, out.kind, lag if out.kind == "delivered" else None)
        if self._hold and out.kind == "delivered" and not self.held.is_set():
            log.warning("holding after delivery %d was accepted (QM_NOTIFIER_HOLD_AFTER_SEND)",
                        d.id)  # fmt: skip
            self.held.set()
            await asyncio.Event().wait()  # for good: the kill test SIGKILLs us here
        try:
            await self._record(d, out)
        except RETRIED_NEXT_ROUND as exc:
            log.warning("outcome of delivery %d not recorded (its claim runs out, then it"
                        " is confirmed or sent again): %s", d.id, outage_text(exc))  # fmt: skip

    async def _record(self, d: Delivery, out: Outcome) -> None:
        schedule = self._schedules.get(d.channel, self._default_schedule)
        delay = schedule(d.attempts, out.retry_after_seconds) if out.kind == "retry" else None
        if out.kind == "delivered":
            self.sent += 1
            await self._store.delivered(d.id, out.ref)
        elif out.kind == "retry" and delay is not None:
            await self._store.retry(d.id, delay, out.reason)
        elif out.kind == "retry":
            await self._store.failed(d.id, f"gave up after {d.attempts} attempts: {out.reason}")
        elif out.kind == "disabled":
            reason = out.reason or "disabled by the receiver"
            log.warning("%s endpoint %s disabled itself: %s", d.channel, d.recipient, reason)
            if self._gate is not None:
                await self._gate.close(d.channel, d.recipient, reason)
            await self._store.failed(d.id, f"endpoint disabled: {reason}")
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
            except RETRIED_NEXT_ROUND as exc:
                log.warning("reconciling deliveries failed (tried again): %s", outage_text(exc))
            await asyncio.sleep(self._every)


class Digester:
    """Every `every` seconds: the facts queued for managers' digests before the latest
    digest hour become one digest delivery per manager (and channel) for that day.
    A replica that was down catches up at its next look; two replicas never take
    one fact twice (store.take_digests)."""

    def __init__(
        self, store: DeliveryStore, intake: Intake, hour: int, tz: ZoneInfo, every: float = 60.0,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        serial: Collection[str] = (),
    ) -> None:  # fmt: skip
        self._serial = tuple(serial)
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
            except RETRIED_NEXT_ROUND as exc:
                log.warning(
                    "digests not taken (tried again in %s s): %s", self._every, outage_text(exc)
                )
            await asyncio.sleep(self._every)
