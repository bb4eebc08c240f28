"""Checks the broker's topics against what metering stored, before counting trusts its
stored offsets; and the operator's way out (`accept`). The decision is
`topic_check.problems`; this module does the reading around it.

When it runs: at worker start (before joining the consumer group), whenever a
partition's state is loaded (an assignment, a reload after an outage), whenever a
batch holds records below the stored offset (a broker restarted under a running worker
serves the recreated topic from offset 0: those records would be skipped as counted),
and (`TopicWatch`) every QM_METERING_TOPIC_CHECK_SECONDS and at each partition
assignment. The last two are what notice a broker that lost its data within seconds
of its return: before them, when metering had faust, the worker noticed only once
faust's consumer had reconnected, rejoined the group and fetched a record below a
stored offset (about 95 s on the local broker).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

from quartermaster.db import outage_text
from quartermaster.kafka import OutRecord
from quartermaster.topics import CONTENT_TYPE, PROTOBUF, Topic
from quartermaster.wire import timestamp
from services.metering.broker_view import BrokerView
from services.metering.mapping import total_message
from services.metering.processor import OUTAGE, RecordSink
from services.metering.state import Total, TotalKey
from services.metering.stores.topics import TopicStore
from services.metering.topic_check import Observed, Stored, TopicMark, TopicRefused, problems

log = logging.getLogger("qm.metering")
_HEADERS: list[tuple[str, str | bytes | None]] = [(CONTENT_TYPE, PROTOBUF.encode())]


class TopicGuard:
    """`verify()` raises TopicRefused when counting must stop (see `topic_check`);
    OSError when the broker does not answer (an outage: retried by the caller)."""

    def __init__(self, view: BrokerView, store: TopicStore, partitions: int) -> None:
        self.view = view
        self.store = store
        self.partitions = partitions

    async def observe(self, stored: Stored) -> Observed:
        """What the broker holds now of the usage and totals topics."""
        return await asyncio.get_running_loop().run_in_executor(None, self._observe, stored)

    def _observe(self, stored: Stored) -> Observed:
        usage = self.view.mark(self.store.usage)
        totals = self.view.mark(self.store.totals)
        offsets = stored.offsets
        if usage is not None and _new_id(stored.usage, usage):
            # Refused for its id anyway: no probe (up to probe_seconds a partition)
            # confirming an end that only a same-id topic could be let through by.
            offsets = {}
        logs = {} if usage is None else self.view.logs(
            self.store.usage, usage.partitions, offsets
        )  # fmt: skip
        cleanup = None if totals is None else self.view.cleanup_policy(self.store.totals)
        return Observed(usage, logs, totals, cleanup)

    async def check(self) -> tuple[Stored, Observed, list[str]]:
        """What is stored, what the broker holds, and every reason not to count."""
        stored = await self.store.load()
        observed = await self.observe(stored)
        found = problems(stored, observed, self.store.usage, self.store.totals, self.partitions)
        return stored, observed, found

    async def verify(self) -> None:
        """Go on quietly, or raise TopicRefused naming what is wrong and what to do.
        The first time the topics are seen, their marks are recorded."""
        _stored, observed, found = await self.check()
        if found:
            raise TopicRefused(self.store.usage, found)
        marks = {
            topic: mark
            for topic, mark in ((self.store.usage, observed.usage),
                                (self.store.totals, observed.totals))
            if mark is not None
        }  # fmt: skip
        await self.store.record_first(marks, "metering", "first seen when counting")


def _new_id(before: TopicMark | None, now: TopicMark) -> bool:
    """Whether both marks have a topic id and they differ (a recreated topic)."""
    return (
        before is not None
        and bool(before.topic_id and now.topic_id)
        and (before.topic_id != now.topic_id)
    )


class TopicWatch:
    """Runs `guard.verify()` every `interval` seconds and soon after `poke()` (a
    partition assignment), for as long as `run()` runs; `on_refused(exc)` gets the
    TopicRefused (it ends the worker) once a second check `confirm` seconds later
    agrees, so one odd answer of a broker in a leader election costs no restart.
    A broker or PostgreSQL that does not answer (`processor.OUTAGE`: the stored
    offsets are read too) is an outage: logged at DEBUG, checked again at the next
    tick (the counting path retries its own work meanwhile). Anything else escapes
    `run` and ends the worker (a bug, not a state to wait out)."""

    def __init__(
        self,
        guard: TopicGuard,
        interval: float,
        on_refused: Callable[[TopicRefused], None],
        confirm: float = 1.0,
    ) -> None:
        self.guard = guard
        self.interval = interval
        self.confirm = confirm
        self._on_refused = on_refused
        self._soon = asyncio.Event()

    def poke(self) -> None:
        """Check soon (without waiting for the interval)."""
        self._soon.set()

    async def run(self) -> None:
        """Check until cancelled, or until a refusal was handed to `on_refused`."""
        while True:
            with contextlib.suppress(TimeoutError):  # the interval passed: check anyway
                await asyncio.wait_for(self._soon.wait(), self.interval)
            self._soon.clear()
            if await self.check():
                return

    async def check(self) -> bool:
        """One check (confirmed when it finds problems); True when it refused."""
        try:
            await self.guard.verify()
            return False
        except OUTAGE as exc:
            log.debug(
                "topics not checked (the broker or PostgreSQL does not answer): %s",
                outage_text(exc),
            )
            return False
        except TopicRefused:
            pass
        await asyncio.sleep(self.confirm)
        try:
            await self.guard.verify()
        except OUTAGE:
            return False  # the broker went away between the two: the next tick decides
        except TopicRefused as exc:
            self._on_refused(exc)
            return True
        return False


@dataclass(frozen=True)
class Accepted:
    """What `accept` did: the problems it accepted, the new offsets per partition, and
    how many open-period totals it published again."""

    problems: list[str]
    offsets: dict[int, int]
    republished: int


async def accept(guard: TopicGuard, sink: RecordSink, by: str, reason: str) -> Accepted:
    """Accept the topics as the broker holds them now (`TopicStore.accept`: stored
    offsets to each partition's first record, marks replaced, an audit row) and, in
    the same transaction, publish every open period's total from Postgres to the
    totals topic again, so policy, reading that topic from the beginning, has them
    back. ValueError for an empty `by`/`reason`, a missing topic, or topics with
    nothing wrong; OSError when the broker does not answer (run it again: both steps
    can be repeated)."""
    if not by.strip() or not reason.strip():
        raise ValueError("say who accepts (--by) and why (--reason): both are kept")
    _stored, observed, found = await guard.check()
    if not found:
        # Moving offsets that are right would count every record of the topic again
        # (the event_id dedupe covers only QM_METERING_DEDUPE_HOURS).
        raise ValueError("nothing to accept: the topics are the ones the stored offsets count")
    published = 0

    async def publish(totals: dict[TotalKey, Total]) -> None:
        nonlocal published
        now = timestamp(datetime.now(UTC))
        records: list[OutRecord] = [
            (
                Topic.USAGE_TOTALS.value,
                f"user:{key[0]}:{key[2]}".encode(),
                total_message(key, total, now).SerializeToString(),
                _HEADERS,
            )
            for key, total in totals.items()
        ]
        if records:
            await sink.send(records)
        published = len(records)

    offsets = await guard.store.accept(observed, found, by.strip(), reason.strip(), publish)
    log.warning(
        "%s accepted %s as the broker holds it (%s); offsets now %s; %d open totals "
        "published again. Problems accepted: %s",
        by, guard.store.usage, reason, offsets, published, " ".join(found) or "none",
    )  # fmt: skip
    return Accepted(found, offsets, published)
