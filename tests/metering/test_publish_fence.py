"""Only committed totals stay the newest on `qm.usage.totals.v1` (issue 14, item 5).

Two `Processor`s count one partition under one consumer name against the real
PostgreSQL and broker, fenced against each other, the way two workers do while a
partition moves between them. Where a frozen worker would resume is made a gate, so
each interleaving is exact rather than timed:

- a worker whose fence fails (another committed the partition while it was frozen
  before its commit) publishes nothing;
- a worker frozen while publishing, whose session PostgreSQL ends meanwhile (so its
  commit is refused after its stale, lower total went out), publishes the committed
  totals again, so the newest record of each key is the committed one.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime, timedelta

import asyncpg
import pytest
from confluent_kafka import Consumer, TopicPartition

from devtools.localinfra.stack import Infra
from quartermaster.kafka import OutRecord
from quartermaster.partitioning import partition_of
from quartermaster.publisher import Publisher
from quartermaster.topics import CONTENT_TYPE, PROTOBUF, Topic
from quartermaster.v1 import usage_pb2
from services.metering.aggregate import Meter, Record
from services.metering.pricing import PriceCatalog
from services.metering.processor import Processor
from services.metering.settings import DEFAULT_PRICES
from services.metering.state import Rollup, RollupKey, Total, TotalKey
from services.metering.stores.counting import CountingStore
from services.metering.stores.rollups import RollupStore
from tests.conftest import PARTITIONS
from tests.helpers import new_user, usage
from tests.metering.test_metering import EVENT_MICROS, UTC_ZONE

pytestmark = pytest.mark.infra


class Sink:
    """The real Publisher, keeping what this worker sent; `hold` (when set) keeps the
    first send waiting inside the transaction until `resume` is set."""

    def __init__(self, publisher: Publisher, hold: bool = False) -> None:
        self.publisher = publisher
        self.sent: list[usage_pb2.UsageTotal] = []
        self.entered, self.resume = asyncio.Event(), asyncio.Event()
        self.hold = hold

    async def send(self, records: list[OutRecord]) -> None:
        if self.hold:
            self.hold = False
            self.entered.set()
            await self.resume.wait()
        self.sent += [usage_pb2.UsageTotal.FromString(r[2]) for r in records]
        await self.publisher.send(records)


class GatedCounting(CountingStore):
    """A CountingStore whose next commit waits at `gate` (a worker frozen between
    planning and committing)."""

    gate: asyncio.Event | None = None
    waiting = asyncio.Event()  # replaced per instance in `freeze`

    def freeze(self) -> asyncio.Event:
        """Hold the next commit; returns the event that lets it go on (`waiting` is
        set once it is held)."""
        self.gate, self.waiting = asyncio.Event(), asyncio.Event()
        return self.gate

    async def commit(
        self,
        partition: int,
        expected_offset: int,
        next_offset: int,
        totals: dict[TotalKey, Total],
        seen: dict[int, float],
        rollups: dict[RollupKey, Rollup],
        publish: Callable[[], Awaitable[None]] | None = None,
    ) -> bool:
        gate, self.gate = self.gate, None
        if gate is not None:
            self.waiting.set()
            await gate.wait()
        return await super().commit(
            partition, expected_offset, next_offset, totals, seen, rollups, publish
        )


class Workers:
    def __init__(self, infra: Infra) -> None:
        self.infra = infra
        self.consumer = f"qm-fence-test-{uuid.uuid4().hex[:8]}"
        self.publisher = Publisher(infra.kafka_bootstrap)
        self.pools: list[asyncpg.Pool] = []

    async def worker(self, name: str, sink: Sink) -> tuple[Processor, GatedCounting]:
        pool = await asyncpg.create_pool(
            self.infra.database_url, min_size=1, max_size=2,
            server_settings={"application_name": name},
        )  # fmt: skip
        assert pool is not None
        self.pools.append(pool)
        meter = Meter(PriceCatalog.from_file(DEFAULT_PRICES), UTC_ZONE, PARTITIONS, "tests",
                      max_age=timedelta(days=35), dedupe_window=timedelta(hours=24),
                      clock=lambda: datetime.now(UTC))  # fmt: skip
        rollups = RollupStore(pool)
        counting = GatedCounting(pool, self.consumer, Topic.USAGE.value, rollups)
        return Processor(meter, counting, rollups, sink, retry_seconds=0.05), counting

    async def close(self) -> None:
        for pool in self.pools:
            await pool.close()
        self.publisher.close()


@pytest.fixture
async def workers(infra: Infra) -> AsyncIterator[Workers]:
    w = Workers(infra)
    try:
        yield w
    finally:
        await w.close()


def records(user: str, n: int) -> tuple[int, list[Record]]:
    partition = partition_of(user, PARTITIONS)
    headers = {CONTENT_TYPE: PROTOBUF}
    return partition, [
        Record(partition, i, user.encode(), usage(user).SerializeToString(), headers)
        for i in range(n)
    ]


def ends(bootstrap: str) -> list[TopicPartition]:
    """Where each totals partition ends now (the test reads what comes after)."""
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": f"t-{uuid.uuid4()}"})
    try:
        topic = Topic.USAGE_TOTALS.value
        return [
            TopicPartition(topic, p, c.get_watermark_offsets(TopicPartition(topic, p), 10)[1])
            for p in range(PARTITIONS)
        ]
    finally:
        c.close()


def newest(bootstrap: str, start: list[TopicPartition], user: str) -> dict[int, int]:
    """period kind → event_count of the newest total of `user` published since `start`."""
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": f"t-{uuid.uuid4()}",
                  "enable.partition.eof": True})  # fmt: skip
    try:
        c.assign(start)
        out: dict[int, int] = {}
        at_end: set[int] = set()
        while len(at_end) < len(start):
            msg = c.poll(10)
            assert msg is not None, "the totals topic did not answer"
            if msg.error() is not None:
                at_end.add(msg.partition() or 0)
                continue
            total = usage_pb2.UsageTotal.FromString(msg.value() or b"")
            if total.subject_id == user:
                out[total.period_kind] = total.event_count
        return out
    finally:
        c.close()


async def stored_events(infra: Infra, user: str) -> int:
    conn = await asyncpg.connect(infra.database_url)
    try:
        n = await conn.fetchval(
            "SELECT event_count FROM metering.totals WHERE subject_kind = 'user'"
            " AND subject_id = $1 AND period_kind = 'month'",
            user,
        )
        return int(n)
    finally:
        await conn.close()


ALL_KINDS = (usage_pb2.PERIOD_KIND_DAY, usage_pb2.PERIOD_KIND_WEEK, usage_pb2.PERIOD_KIND_MONTH)


async def test_a_worker_whose_fence_failed_publishes_nothing(
    infra: Infra, workers: Workers
) -> None:
    user = new_user()
    partition, recs = records(user, 3)
    start = ends(infra.kafka_bootstrap)
    a_sink, b_sink = Sink(workers.publisher), Sink(workers.publisher)
    a, a_counting = await workers.worker("qm-test-a", a_sink)
    b, _ = await workers.worker("qm-test-b", b_sink)

    gate = a_counting.freeze()
    frozen = asyncio.create_task(a.process(partition, recs[:2]))
    await a_counting.waiting.wait()  # A planned offsets 0-1 and is frozen before committing
    await b.process(partition, recs)  # takes the partition over and commits all three
    gate.set()
    await frozen  # its fence fails; it plans again from offset 3: nothing left

    assert a_sink.sent == [], "a fenced-off worker published"
    assert {t.event_count for t in b_sink.sent} == {3}
    assert await stored_events(infra, user) == 3
    assert newest(infra.kafka_bootstrap, start, user) == dict.fromkeys(ALL_KINDS, 3)


async def test_a_commit_refused_after_a_stale_publish_is_followed_by_the_committed_totals(
    infra: Infra, workers: Workers
) -> None:
    user = new_user()
    partition, recs = records(user, 3)
    start = ends(infra.kafka_bootstrap)
    a_sink, b_sink = Sink(workers.publisher, hold=True), Sink(workers.publisher)
    a, _ = await workers.worker("qm-test-a-held", a_sink)
    b, _ = await workers.worker("qm-test-b-held", b_sink)

    frozen = asyncio.create_task(a.process(partition, recs[:2]))
    await a_sink.entered.wait()  # A holds the offset row, about to publish 2 events
    taking_over = asyncio.create_task(b.process(partition, recs))  # waits on A's lock
    conn = await asyncpg.connect(infra.database_url)
    try:
        # PostgreSQL ends the frozen worker's session (a timeout, a failover, an admin):
        # its transaction is gone, and B commits past it.
        ended = await conn.fetchval(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
            " WHERE application_name = 'qm-test-a-held' AND state LIKE 'idle in transaction%'"
        )
        assert ended == 1
    finally:
        await conn.close()
    await taking_over
    assert await stored_events(infra, user) == 3
    a_sink.resume.set()  # A wakes: its stale totals go out, then its COMMIT fails
    await frozen

    assert [t.event_count for t in a_sink.sent[:3]] == [2, 2, 2], "the stale publish"
    assert [t.event_count for t in a_sink.sent[3:]] == [3, 3, 3], "then the committed totals"
    assert await stored_events(infra, user) == 3
    assert newest(infra.kafka_bootstrap, start, user) == dict.fromkeys(ALL_KINDS, 3)
    day = [t.used_micros for t in b_sink.sent if t.period_kind == usage_pb2.PERIOD_KIND_DAY]
    assert day == [3 * EVENT_MICROS]
