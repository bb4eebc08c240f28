"""The worker's consumer (`services.metering.consumer.UsageConsumer`) in a group of two
on a real broker (issue 12 item 7): a join or a leave moves only some partitions, the
others are taken from throughout; and across the moves every record is taken exactly
once, by one member or the other, when each commits what it took (as the worker
commits what it counted): held records of a partition revoked are dropped, never
taken after it moved, and its next owner starts where the last one stopped.

Infra tests: a broker of the test's own with 12 partitions; no PostgreSQL (the
consumer alone: the worker's exactly-once rests on PostgreSQL's fenced offsets, tested
with workers in test_scale_out)."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections import defaultdict

import pytest
from confluent_kafka import Producer

from devtools.localinfra.broker import LocalBroker
from quartermaster.topics import Topic
from services.metering.consumer import UsageConsumer
from services.metering.settings import MeteringSettings

pytestmark = pytest.mark.infra
PARTS = 12


class Member:
    """A UsageConsumer taking small batches and committing each, recording what it
    took and every revocation it was told of."""

    def __init__(self, bootstrap: str, group: str) -> None:
        env = {"QM_KAFKA_BOOTSTRAP": bootstrap, "QM_METERING_APP_ID": group,
               "QM_METERING_SESSION_TIMEOUT": "4"}  # fmt: skip
        self.consumer = UsageConsumer(MeteringSettings.from_env(env))
        self.taken: dict[int, list[int]] = defaultdict(list)
        self.revocations: list[set[int]] = []
        self.owned: set[int] = set()
        self.last_at: dict[int, float] = {}  # partition → when a record of it was taken

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            taken = await self.consumer.take(50, 0.01, 1 << 20)
            if taken.revoked:
                self.revocations.append(set(taken.revoked))
                self.owned -= taken.revoked
            self.owned |= taken.assigned
            for r in taken.records:
                self.taken[r.partition].append(r.offset)
                self.last_at[r.partition] = time.monotonic()
            positions: dict[int, int] = {}
            for r in taken.records:
                positions[r.partition] = r.offset + 1
            await self.consumer.commit(positions)
            await asyncio.sleep(0.005)  # a batch's counting, briefly


def produce(bootstrap: str, stop: asyncio.Event, counts: dict[int, int]) -> None:
    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 5})
    while not stop.is_set():
        for p in range(PARTS):
            producer.produce(Topic.USAGE.value, b"x", partition=p)
            counts[p] += 1
        producer.poll(0)
        time.sleep(0.01)
    producer.flush(10)


@pytest.mark.parametrize("own_broker", [PARTS], indirect=True)
async def test_a_join_and_a_leave_move_only_some_partitions_and_each_record_is_taken_once(
    own_broker: LocalBroker,
) -> None:
    group = f"qm-consumer-test-{uuid.uuid4().hex[:6]}"
    a, b = Member(own_broker.bootstrap, group), Member(own_broker.bootstrap, group)
    stop_a, stop_b, stop_producing = asyncio.Event(), asyncio.Event(), asyncio.Event()
    counts: dict[int, int] = defaultdict(int)
    producing = asyncio.ensure_future(asyncio.to_thread(produce, own_broker.bootstrap,
                                                        stop_producing, counts))  # fmt: skip
    running_a = asyncio.ensure_future(a.run(stop_a))
    try:
        await _until(lambda: len(a.owned) == PARTS, "A owns every partition")
        await asyncio.sleep(1)
        joined_at = time.monotonic()
        running_b = asyncio.ensure_future(b.run(stop_b))
        await _until(lambda: b.owned and a.owned | b.owned == set(range(PARTS)), "B joined")
        settled_at = time.monotonic()
        kept = set(a.owned)
        # The join revoked what moved to B, only that: A counted its kept partitions on
        # while the group rebalanced (a record of each taken during the join).
        assert a.revocations == [b.owned]
        assert 0 < len(kept) < PARTS
        for p in kept:
            assert joined_at < a.last_at[p] < settled_at, f"partition {p} paused"
        await asyncio.sleep(1)
        stop_b.set()
        b.consumer.stop_taking()
        await running_b
        await b.consumer.close()  # leaves the group: its partitions go back to A
        await _until(lambda: len(a.owned) == PARTS, "A owns every partition again")
        assert len(a.revocations) == 1  # the leave revoked nothing of A's
        await asyncio.sleep(1)
        stop_producing.set()
        await producing
        await _until(
            lambda: all(len(a.taken[p]) + len(b.taken[p]) >= counts[p] for p in range(PARTS)),
            "every record taken",
        )
    finally:
        stop_a.set()
        a.consumer.stop_taking()
        stop_producing.set()
        await running_a
        await a.consumer.close()
    for p in range(PARTS):
        both = sorted(a.taken[p] + b.taken[p])
        assert both == list(range(counts[p])), f"partition {p}: a record missed or taken twice"


async def _until(ok: object, what: str, within: float = 60.0) -> None:
    deadline = time.monotonic() + within
    while not ok():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {within} s: {what}")
        await asyncio.sleep(0.05)
