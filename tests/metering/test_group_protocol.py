"""A worker whose consumer group holds a member of another assignment protocol (a
leftover eager `range` consumer with the same group id) cannot join: it says so as an
ERROR naming the group and what to do, not as a once-a-minute WARNING that reads like
an outage.

Infra test: a broker of the test's own; the worker's UsageConsumer alone."""

from __future__ import annotations

import asyncio
import logging
import uuid

import pytest
from confluent_kafka import Consumer

from devtools.localinfra.broker import LocalBroker
from quartermaster.topics import Topic
from services.metering.consumer import UsageConsumer
from services.metering.settings import MeteringSettings

pytestmark = pytest.mark.infra


async def test_a_member_of_another_protocol_is_named_as_an_error(
    own_broker: LocalBroker, caplog: pytest.LogCaptureFixture
) -> None:
    group = f"qm-protocol-test-{uuid.uuid4().hex[:6]}"
    other = Consumer({
        "bootstrap.servers": own_broker.bootstrap, "group.id": group,
        "partition.assignment.strategy": "range", "session.timeout.ms": 6000,
    })  # fmt: skip
    other.subscribe([Topic.USAGE.value])
    for _ in range(40):  # joined: it owns the group's protocol
        other.poll(0.2)
        if other.assignment():
            break
    assert other.assignment()
    env = {"QM_KAFKA_BOOTSTRAP": own_broker.bootstrap, "QM_METERING_APP_ID": group,
           "QM_METERING_SESSION_TIMEOUT": "4"}  # fmt: skip
    consumer = UsageConsumer(MeteringSettings.from_env(env))
    try:
        with caplog.at_level(logging.WARNING, "qm.metering"):
            # take waits for records it will never get: stopped once the ERROR is seen
            taking = asyncio.ensure_future(consumer.take(10, 0.1, 1 << 20))
            for _ in range(100):
                other.poll(0.05)
                await asyncio.sleep(0.1)
                if any(r.levelno == logging.ERROR for r in caplog.records):
                    break
            consumer.stop_taking()
            taken = await asyncio.wait_for(taking, 10)
            assert not taken.assigned
        errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
        assert errors, [r.getMessage() for r in caplog.records]
        assert f"cannot join group '{group}'" in errors[0]
        assert "Inconsistent group protocol" in errors[0]
    finally:
        await asyncio.wait_for(consumer.close(), 15)
        other.close()
