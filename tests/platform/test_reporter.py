"""UsageReporter against the real broker and metering."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

from devtools.localinfra.stack import Infra
from quartermaster import kafka
from quartermaster.partitioning import partition_of
from quartermaster.reporter import UsageReporter
from quartermaster.topics import Topic
from quartermaster.v1 import policy_pb2
from tests.conftest import PARTITIONS, MeteringWorker
from tests.helpers import eventually, new_topic, new_user, usage

if TYPE_CHECKING:
    from quartermaster.v1.policy_pb2_grpc import PolicyServiceAsyncStub as Stub

pytestmark = pytest.mark.infra


def used_of(policy: Stub, user: str):  # type: ignore[no-untyped-def]
    async def probe() -> int:
        return (await policy.GetBudget(policy_pb2.GetBudgetRequest(user_id=user))).used_micros

    return probe


def test_our_producers_partition_like_the_java_client(infra: Infra) -> None:
    # Made first: no Quartermaster producer lets the broker auto-create a topic.
    topic = new_topic(infra.kafka_bootstrap, "qm.partition-probe", 12)
    producer = kafka.producer(infra.kafka_bootstrap)
    got: dict[str, int] = {}

    def delivered(err: object, msg: object) -> None:
        assert err is None
        got[msg.key().decode()] = msg.partition()  # type: ignore[attr-defined]

    keys = [f"partition-probe-{i}" for i in range(200)]
    for k in keys:
        producer.produce(topic, key=k.encode(), value=b"x", on_delivery=delivered)
    assert producer.flush(30) == 0
    meta = producer.list_topics(topic, timeout=10)
    n = len(meta.topics[topic].partitions)
    assert n == 12
    assert got == {k: partition_of(k, n) for k in keys}


async def test_two_lines_report_usage_that_metering_counts(
    infra: Infra, metering: MeteringWorker, policy: Stub
) -> None:
    user = new_user()
    reporter = UsageReporter(infra.kafka_bootstrap)
    for _ in range(20):
        reporter.report(usage(user))
    reporter.close()
    reporter.close()  # a second close (a finally after an explicit one) is harmless
    assert reporter.errors == []
    await eventually(used_of(policy, user), 20 * 6_250)


async def test_batching_reporter_groups_events_per_partition(
    infra: Infra, metering: MeteringWorker, policy: Stub
) -> None:
    users = [new_user() for _ in range(30)]
    reporter = UsageReporter(infra.kafka_bootstrap, batch_max=50, linger_ms=5)
    assert reporter.partitions == PARTITIONS
    for i in range(300):
        reporter.report(usage(users[i % 30]))
    reporter.close()
    assert reporter.errors == []
    for u in users:
        await eventually(used_of(policy, u), 10 * 6_250)
    assert Topic.USAGE.value == reporter.topic


def test_a_bad_batch_size_is_refused(infra: Infra) -> None:
    with pytest.raises(ValueError, match="batch_max: must be at least 1"):
        UsageReporter(infra.kafka_bootstrap, batch_max=0)
