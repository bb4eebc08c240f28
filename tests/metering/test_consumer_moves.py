"""`UsageConsumer` against a scripted stand-in for librdkafka's consumer (a unit test of
that layer; the real consumer in a real group is tests/metering/test_consumer.py):
librdkafka runs the rebalance callbacks inside `consume`, possibly after records of
the partitions they revoke were fetched into that call's result. Those records, and
any held from before, are never taken once their partition went to another member;
a partition assigned back within the same call keeps its records."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from confluent_kafka import TopicPartition

from quartermaster.topics import Topic
from services.metering.consumer import UsageConsumer
from services.metering.settings import MeteringSettings

T = Topic.USAGE.value


@dataclass
class Msg:
    """What `UsageConsumer` reads of a confluent-kafka Message."""

    p: int
    o: int

    def error(self) -> None:
        return None

    def partition(self) -> int:
        return self.p

    def offset(self) -> int:
        return self.o

    def key(self) -> bytes:
        return b"k"

    def value(self) -> bytes:
        return b"v"

    def headers(self) -> None:
        return None


class Scripted:
    """Each `consume` runs the next step: callbacks to run, then records to return."""

    def __init__(self, steps: list[tuple[list[Callable[[], None]], list[Msg]]]) -> None:
        self.steps = steps
        self.commits: list[tuple[list[tuple[int, int]], bool]] = []

    def consume(self, _n: int, _timeout: float) -> list[Msg]:
        if not self.steps:
            return []
        callbacks, got = self.steps.pop(0)
        for call in callbacks:
            call()
        return got

    def assignment(self) -> list[TopicPartition]:
        return []

    def commit(self, offsets: list[TopicPartition], asynchronous: bool) -> None:
        self.commits.append(([(tp.partition, tp.offset) for tp in offsets], asynchronous))

    def close(self) -> None:
        pass


def consumer_with(steps: list[tuple[list[Callable[[], None]], list[Msg]]]) -> tuple[
    UsageConsumer, Any
]:  # fmt: skip
    settings = MeteringSettings.from_env({"QM_KAFKA_BOOTSTRAP": "127.0.0.1:9"})
    uc = UsageConsumer(settings)
    uc._consumer.close()
    fake = Scripted(steps)
    uc._consumer = fake  # type: ignore[assignment]  # a stand-in: see the docstring
    uc._subscribed = True
    return uc, fake


def tps(*partitions: int) -> list[TopicPartition]:
    return [TopicPartition(T, p) for p in partitions]


def test_records_fetched_before_a_revocation_in_the_same_call_are_not_taken() -> None:
    uc, fake = consumer_with([])
    fake.steps = [
        ([lambda: uc._on_assign(fake, tps(0, 1))], [Msg(0, 0), Msg(1, 0)]),
        # partition 1 goes to another member inside the call that also returns its records
        ([lambda: uc._on_revoke(fake, tps(1))], [Msg(0, 1), Msg(1, 1), Msg(1, 2)]),
    ]
    first = uc._take(2, 0.0, 1 << 20)
    assert [(r.partition, r.offset) for r in first.records] == [(0, 0), (1, 0)]
    uc._commit({0: 1, 1: 1})
    second = uc._take(10, 0.0, 1 << 20)
    assert [(r.partition, r.offset) for r in second.records] == [(0, 1)]
    assert second.revoked == {1}
    # where the next owner starts: what this member counted of it, sent without waiting
    assert fake.commits[-1] == ([(1, 1)], True)


def test_records_held_beyond_a_batch_are_dropped_when_their_partition_moves() -> None:
    uc, fake = consumer_with([])
    fake.steps = [
        ([lambda: uc._on_assign(fake, tps(0, 1))], [Msg(0, 0), Msg(1, 0), Msg(1, 1)]),
        ([lambda: uc._on_revoke(fake, tps(1))], [Msg(0, 1)]),
    ]
    assert len(uc._take(1, 0.0, 1 << 20).records) == 1  # (0, 0); (1, 0) and (1, 1) held
    taken = uc._take(10, 0.01, 1 << 20)  # waits for company: the next call revokes
    assert [(r.partition, r.offset) for r in taken.records] == [(0, 1)]


def test_a_partition_assigned_back_within_the_call_keeps_its_records() -> None:
    uc, fake = consumer_with([])
    fake.steps = [
        ([lambda: uc._on_assign(fake, tps(0))], [Msg(0, 0)]),
        (
            [lambda: uc._on_revoke(fake, tps(0)), lambda: uc._on_assign(fake, tps(0))],
            [Msg(0, 1), Msg(0, 1), Msg(0, 2)],  # stale and fetched again: counting skips
        ),
    ]
    assert len(uc._take(1, 0.0, 1 << 20).records) == 1
    taken = uc._take(10, 0.0, 1 << 20)
    assert [(r.partition, r.offset) for r in taken.records] == [(0, 1), (0, 1), (0, 2)]
    assert taken.revoked == {0}
    assert taken.assigned == {0}


def test_lost_partitions_are_dropped_and_nothing_is_committed_for_them() -> None:
    uc, fake = consumer_with([])
    fake.steps = [
        ([lambda: uc._on_assign(fake, tps(0, 1))], [Msg(0, 0), Msg(1, 0)]),
        ([lambda: uc._on_lost(fake, tps(0, 1))], [Msg(0, 1)]),
    ]
    uc._take(2, 0.0, 1 << 20)
    uc._commit({0: 1, 1: 1})
    commits = len(fake.commits)
    taken = uc._take(10, 0.0, 1 << 20)
    assert taken.records == []
    assert taken.revoked == {0, 1}
    assert len(fake.commits) == commits
