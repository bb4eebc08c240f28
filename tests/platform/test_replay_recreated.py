"""ReplayConsumer tells a topic that is no longer the one it read (issue 14, item 1):
the broker restarted empty and the topic was created again with the same partition
count, so only the end offsets show it; and how far it got, for readiness messages.
A broker of the test's own, since it is restarted.
"""

from __future__ import annotations

import time

import pytest
from confluent_kafka import KafkaException

from devtools.localinfra.broker import LocalBroker
from quartermaster.consumers import ReplayConsumer
from quartermaster.kafka import ensure_topics
from quartermaster.topics import Topic
from tests.helpers import produce

pytestmark = pytest.mark.infra
TOPIC = Topic.USAGE_TOTALS.value


def _read_to_end(consumer: ReplayConsumer) -> int:
    read = 0
    for _ in range(2_000):  # bounded: 2,000 polls of at most 50 ms
        if consumer.poll(0.05) is not None:
            read += 1
        if consumer.caught_up.is_set():
            return read
    raise AssertionError(f"not caught up after reading {read} records")


def _recreated(consumer: ReplayConsumer) -> str | None:
    """`consumer.recreated()`, asked again while the client reconnects (bounded)."""
    for _ in range(100):
        try:
            return consumer.recreated(timeout=1.0)
        except KafkaException:
            time.sleep(0.1)
    raise AssertionError("the broker never answered")


def test_a_topic_recreated_with_as_many_partitions_is_told_by_its_end_offsets(
    own_broker: LocalBroker,
) -> None:
    produce(own_broker.bootstrap, [(f"k{i}".encode(), b"v", []) for i in range(30)], TOPIC)
    consumer = ReplayConsumer(own_broker.bootstrap, TOPIC, "test-recreated")
    try:
        consumer.assign()
        assert _read_to_end(consumer) == 30
        # (The end offsets at assignment may be short on the local broker: see
        # ReplayConsumer.progress.)
        assert consumer.progress()[0] == 30
        assert consumer.recreated() is None, "the same topic, read to its end"

        own_broker.stop()
        own_broker.start()
        ensure_topics(own_broker.bootstrap, 3)  # as an operator would after a restart
        produce(own_broker.bootstrap, [(b"k0", b"new", [])], TOPIC)

        problem = _recreated(consumer)
        assert problem is not None
        assert "was recreated or lost records" in problem, problem
    finally:
        consumer.close()
