"""A broker that lost its data is noticed by a running metering worker within seconds
of its return, and metering never creates a topic (issue 14, breaker #10 and the
auto-created topics): the worker checks the topics on a short timer and at each
assignment (`topic_guard.TopicWatch`), and neither its consumer (subscribed to a
topic that is missing) nor our other confluent-kafka clients ask the broker to create
one.

Fault tests: each restarts a broker of its own (the local broker keeps nothing, so its
topics come back empty) under a real metering worker process counting into the
session's PostgreSQL under a consumer name of its own. The time from the broker's
return to the refusal is printed (run with -s to see it); the bound on it is only the
generous one of `eventually`.
"""

from __future__ import annotations

import asyncio
import os
import re
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from confluent_kafka.admin import AdminClient

from devtools.localinfra import free_port
from devtools.localinfra.broker import LocalBroker
from devtools.localinfra.stack import Infra
from quartermaster.kafka import ensure_topics
from quartermaster.topics import SPECS
from services.metering.__main__ import EXIT_REFUSED
from services.metering.consumer import UsageConsumer
from services.metering.settings import MeteringSettings
from tests.conftest import PARTITIONS, ROOT
from tests.helpers import eventually, new_user, produce_usage, usage
from tests.metering.test_broker_restart import Worker, day_total
from tests.metering.test_metering import EVENT_MICROS

pytestmark = pytest.mark.infra
REFUSES = "metering refuses to count qm.usage.v1: "


@pytest.fixture
def worker(own_broker: LocalBroker, service_env: dict[str, str]) -> Iterator[Worker]:
    env = {
        **service_env,
        "QM_KAFKA_BOOTSTRAP": own_broker.bootstrap,
        "QM_METERING_APP_ID": f"qm-metering-lost-{uuid.uuid4().hex[:8]}",
        "QM_METERING_METRICS_ADDR": f"127.0.0.1:{free_port()}",
        "QM_METERING_TOPIC_CHECK_SECONDS": "2",
    }
    log_path = ROOT / ".run" / f"test-{os.getpid()}-logs" / f"{env['QM_METERING_APP_ID']}.log"
    w = Worker(env, log_path)
    try:
        yield w
    finally:
        w.proc.stop(timeout=15)
        log_path.unlink(missing_ok=True)


def topics_on(bootstrap: str) -> set[str]:
    """Every topic the broker holds now (internal ones left out)."""
    listed = AdminClient({"bootstrap.servers": bootstrap}).list_topics(timeout=10).topics
    return {t for t in listed if not t.startswith("__")}


def said(log: str, since: datetime) -> float:
    """Seconds from `since` to the worker's refusal line in `log` (the services' format,
    `telemetry.LOG_FORMAT`: "2026-12-01 02:32:42,986 ERROR qm.metering: metering
    refuses ...", local time)."""
    found = re.search(r"^([\d-]+ [\d:,]+) ERROR qm\.metering: " + re.escape(REFUSES), log, re.M)
    assert found is not None, log[-3000:]
    at = datetime.strptime(found.group(1), "%Y-%m-%d %H:%M:%S,%f").astimezone(UTC)
    return (at - since).total_seconds()


async def exits(worker: Worker) -> int | None:
    return worker.proc.poll()


async def counting(infra: Infra, broker: LocalBroker, worker: Worker) -> None:
    """Start the worker and see it count (so it holds stored offsets and partitions)."""
    user = new_user()
    counted = day_total(infra.database_url, user)
    worker.start()
    produce_usage(broker.bootstrap, [usage(user) for _ in range(3)])
    await eventually(counted, (3 * EVENT_MICROS, 3), within=90)


async def test_a_broker_back_with_new_topics_is_refused_within_seconds(
    infra: Infra, own_broker: LocalBroker, worker: Worker
) -> None:
    await counting(infra, own_broker, worker)
    own_broker.stop()
    own_broker.start()
    back, back_at = time.monotonic(), datetime.now(UTC)
    ensure_topics(own_broker.bootstrap, PARTITIONS)  # as `make run` or the chart's Job would

    # No event is sent after the restart: the check does not wait for one.
    await eventually(lambda: exits(worker), EXIT_REFUSED, within=90)
    took = time.monotonic() - back
    log = worker.log()
    print(  # noqa: T201
        f"\nmetering refused the restarted broker {said(log, back_at):.1f} s after it came "
        f"back (and had stopped {took:.1f} s after)"
    )
    assert REFUSES in log, log[-3000:]
    # Recreated (the topics were made within a second of the broker's return), or
    # missing (the check ran in between and its confirmation too): both refuse.
    assert "qm.usage.v1 was recreated" in log or "qm.usage.v1 does not exist" in log


async def test_the_worker_declares_no_topic_and_its_consumer_asks_for_none(
    infra: Infra, own_broker: LocalBroker, worker: Worker, tmp_path: Path
) -> None:
    # A counting worker: faust, which metering had, declared its own topics.
    await counting(infra, own_broker, worker)
    assert topics_on(own_broker.bootstrap) == {spec.topic.value for spec in SPECS}

    # The worker's consumer on a broker without the usage topic: subscribed and
    # waiting for records, its metadata requests would make the broker create it
    # (Kafka's auto.create.topics.enable, and tansu) unless they say not to.
    bare = LocalBroker(tmp_path)
    bare.start()
    try:
        settings = MeteringSettings.from_env(
            {
                "QM_KAFKA_BOOTSTRAP": bare.bootstrap,
                "QM_METERING_APP_ID": f"g-{uuid.uuid4().hex[:6]}",
            }
        )
        consumer = UsageConsumer(settings)
        try:
            waiting = asyncio.ensure_future(consumer.take(100, 0.05, 1 << 20))
            await asyncio.sleep(3)  # a few metadata requests' worth
            consumer.stop_taking()
            assert (await waiting).records == []
        finally:
            await consumer.close()
        assert topics_on(bare.bootstrap) == set()
    finally:
        bare.stop()


async def test_metering_creates_no_topic_when_the_broker_comes_back_empty(
    infra: Infra, own_broker: LocalBroker, worker: Worker
) -> None:
    await counting(infra, own_broker, worker)
    own_broker.stop()
    own_broker.start()
    back, back_at = time.monotonic(), datetime.now(UTC)

    await eventually(lambda: exits(worker), EXIT_REFUSED, within=90)
    took = time.monotonic() - back
    log = worker.log()
    print(  # noqa: T201
        f"\nmetering refused the empty broker {said(log, back_at):.1f} s after it came back "
        f"(and had stopped {took:.1f} s after)"
    )
    assert f"{REFUSES}qm.usage.v1 does not exist on the broker" in log, log[-3000:]
    assert "python -m quartermaster.kafka ensure-topics" in log
    # When metering had faust, its consumer asked for the topic for seconds before the
    # check refused, and would have made the broker create it (with the broker's
    # defaults), and declared its leader topic: nothing was created.
    assert topics_on(own_broker.bootstrap) == set()

    # Restarted by a supervisor, it refuses at start, before joining the group, and
    # still creates nothing.
    worker.start()
    await eventually(lambda: exits(worker), EXIT_REFUSED, within=60)
    assert topics_on(own_broker.bootstrap) == set()

    # Once the topics are made, the refusal names what the operator must accept.
    ensure_topics(own_broker.bootstrap, PARTITIONS)
    assert topics_on(own_broker.bootstrap) == {spec.topic.value for spec in SPECS}
