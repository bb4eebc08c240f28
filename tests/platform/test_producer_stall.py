"""`quartermaster.publisher.Publisher` and `quartermaster.reporter.UsageReporter` send
again after their broker stalled past the message timeout (the HTTP ingest's breaker
finding, in the other long-lived producers: after the stall librdkafka bumped the
idempotent producer's epoch and the broker refused every record of it,
PRODUCER_FENCED, for good, while metering's counting, the requests outbox relay and
policy's notices retried the OSError forever, and a reporter's events all failed).

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
from typing import Any

import pytest
from confluent_kafka import KafkaError

from devtools.localinfra.broker import LocalBroker
from devtools.localinfra.stack import Infra
from quartermaster.kafka import OutRecord
from quartermaster.publisher import Publisher
from quartermaster.reporter import UsageReporter
from quartermaster.topics import Topic
from quartermaster.v1 import usage_pb2
from tests.helpers import eventually, new_topic, new_user, read_topic, usage

pytestmark = pytest.mark.infra
TOPIC = Topic.NOTIFICATIONS.value
STALL = 5.0  # s: past the 2 s message timeout


def records(n: int, topic: str = TOPIC) -> list[OutRecord]:
    """`n` records of random bytes: on a broker of the test's own, or a topic of its
    own (other tests parse every record of the session's qm.notifications.v1)."""
    return [(topic, b"k", uuid.uuid4().hex.encode(), []) for _ in range(n)]


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
    topic = new_topic(infra.kafka_bootstrap, "test-publisher-renewal")
    publisher = Publisher(infra.kafka_bootstrap)
    try:
        assert await sends(publisher, records(1, topic)) == "sent"
        # What the error callback of the producer in use (generation 0) does with a
        # fatal error; the next send goes out on a new producer.
        publisher._failed(0, KafkaError(KafkaError._FATAL, "test: fatal idempotence", fatal=True))
        assert await sends(publisher, records(2, topic)) == "sent"
        assert publisher.renewals == 1
        # A late error of the replaced producer changes nothing.
        publisher._failed(0, KafkaError(KafkaError._FATAL, "late", fatal=True))
        assert await sends(publisher, records(1, topic)) == "sent"
        assert publisher.renewals == 1
    finally:
        publisher.close()


def reported(reporter: UsageReporter, event: usage_pb2.UsageEvent) -> bool:
    """Whether `event`, reported and flushed, was delivered without an error."""
    before = len(reporter.errors)
    reporter.report(event)
    return reporter.flush(5) == 0 and len(reporter.errors) == before


async def test_a_usage_reporter_reports_again_after_the_broker_stalled(
    own_broker: LocalBroker,
) -> None:
    config: dict[str, Any] = {"message.timeout.ms": 2000}  # librdkafka's, past the keywords
    reporter = UsageReporter(own_broker.bootstrap, **config)
    try:
        assert reported(reporter, usage(new_user()))
        own_broker.pause()
        try:
            paused = time.monotonic()
            assert not reported(reporter, usage(new_user()))  # timed out
            await asyncio.sleep(max(0.0, STALL - (time.monotonic() - paused)))
        finally:
            own_broker.resume()

        async def fresh_event_reported() -> bool:
            return await asyncio.to_thread(reported, reporter, usage(new_user()))

        await eventually(fresh_event_reported, True, within=20)
        assert reporter.renewals >= 1, "the stall did not break the producer"
        after = [usage(new_user()) for _ in range(5)]
        for event in after:
            reporter.report(event)
        assert reporter.flush(10) == 0
    finally:
        reporter.close(5)
    values = [m.value() for m in await asyncio.to_thread(read_topic, own_broker.bootstrap,
                                                         Topic.USAGE.value)]  # fmt: skip
    assert all(values.count(e.SerializeToString()) == 1 for e in after)


def test_a_fatal_error_replaces_the_reporters_producer(infra: Infra) -> None:
    reporter = UsageReporter(infra.kafka_bootstrap, batch_max=10, linger_ms=1)
    try:
        assert reported(reporter, usage(new_user()))
        # What the error callback of the producer in use (generation 0) does
        reporter._watch(0, KafkaError(KafkaError._FATAL, "test: fatal idempotence", fatal=True))
        assert reported(reporter, usage(new_user()))
        assert reporter.renewals == 1
        reporter._watch(0, KafkaError(KafkaError._FATAL, "late", fatal=True))  # stale
        assert reported(reporter, usage(new_user()))
        assert reporter.renewals == 1
    finally:
        reporter.close(5)
