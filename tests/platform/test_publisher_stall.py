"""`quartermaster.kafka.Publisher` sends again after its broker stalled past the
message timeout (the HTTP ingest's breaker finding, in the shared publisher: after the
stall librdkafka bumped the idempotent producer's epoch and the broker refused every
record of it, PRODUCER_FENCED, for good, while metering's counting, the requests
outbox relay and policy's notices retried the OSError forever).

A broker of the test's own is SIGSTOPped with a send in flight for longer than the
publisher's message timeout (2 s here; librdkafka's default is 5 minutes, so in
production it takes a stall that long). A fatal error through the error callback is
driven too: librdkafka raises it for an idempotent producer it gives up on, and a
broker can't be made to on demand.
"""

from __future__ import annotations

import asyncio
import time
import uuid

import pytest
from confluent_kafka import KafkaError

from devtools.localinfra.broker import LocalBroker
from devtools.localinfra.stack import Infra
from quartermaster.kafka import OutRecord, Publisher
from quartermaster.topics import Topic
from tests.helpers import eventually, read_topic

pytestmark = pytest.mark.infra
TOPIC = Topic.NOTIFICATIONS.value
STALL = 5.0  # s: past the 2 s message timeout


def records(n: int) -> list[OutRecord]:
    return [(TOPIC, b"k", uuid.uuid4().hex.encode(), []) for _ in range(n)]


async def sends(publisher: Publisher, batch: list[OutRecord]) -> str:
    """The outcome: "sent", or the OSError the caller would retry."""
    try:
        await publisher.send(batch)
    except OSError as exc:
        return f"OSError: {exc}"
    return "sent"


async def test_a_publisher_sends_again_after_the_broker_stalled(own_broker: LocalBroker) -> None:
    publisher = Publisher(own_broker.bootstrap, **{"message.timeout.ms": 2000})
    try:
        assert await sends(publisher, records(2)) == "sent"
        own_broker.pause()
        try:
            paused = time.monotonic()
            refused = await sends(publisher, records(2))
            assert refused.startswith("OSError"), refused
            await asyncio.sleep(max(0.0, STALL - (time.monotonic() - paused)))
        finally:
            own_broker.resume()

        # As the callers do: the same records again until they are sent. Before the
        # fix every attempt was refused PRODUCER_FENCED from here on.
        again = records(3)
        await eventually(lambda: sends(publisher, again), "sent", within=20)
        assert publisher.renewals >= 1, "the stall did not break the producer"
        after = records(5)
        assert await sends(publisher, after) == "sent"
        delivered = await publisher.deliver(records(2))
        assert delivered == ["", ""]
    finally:
        publisher.close()
    values = [m.value() for m in await asyncio.to_thread(read_topic, own_broker.bootstrap, TOPIC)]
    assert all(values.count(r[2]) == 1 for r in after)
    assert all(r[2] in values for r in again)


async def test_a_fatal_error_replaces_the_publishers_producer(infra: Infra) -> None:
    publisher = Publisher(infra.kafka_bootstrap)
    try:
        assert await sends(publisher, records(1)) == "sent"
        # What the error callback of the producer in use (generation 0) does with a
        # fatal error; the next send goes out on a new producer.
        publisher._failed(0, KafkaError(KafkaError._FATAL, "test: fatal idempotence", fatal=True))
        assert await sends(publisher, records(2)) == "sent"
        assert publisher.renewals == 1
        # A late error of the replaced producer changes nothing.
        publisher._failed(0, KafkaError(KafkaError._FATAL, "late", fatal=True))
        assert await sends(publisher, records(1)) == "sent"
        assert publisher.renewals == 1
    finally:
        publisher.close()
