"""The HTTP ingest comes back by itself after the broker stalled (breaker: a broker
SIGSTOPped 15 s then resumed left every post answered 503 "There is a newer producer
with the same transactionalId which fences the current one", for good, while /healthz
said ok: after the message timeout librdkafka bumped the idempotent producer's epoch,
and the broker refused every record of that producer from then on).

The fault test stalls a broker of its own under a real ingest (aiohttp in this
process, its real producer) with short timeouts (2 s to answer, 3 s for librdkafka), so
the stall outlasts them as the 15 s one outlasted the defaults. The unit test drives
the replacement through the error callback with a fatal KafkaError, the error
librdkafka raises for an idempotent producer it gives up on, which a broker can't be
made to cause on demand.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import aiohttp
import pytest
from confluent_kafka import KafkaError, Producer
from google.protobuf import json_format

from devtools.localinfra.broker import LocalBroker
from devtools.localinfra.stack import Infra
from quartermaster.topics import CONTENT_TYPE, Topic
from quartermaster.v1 import usage_pb2
from services.metering import ingest
from services.metering.ingest import RunningIngest
from services.metering.settings import MeteringSettings
from tests.helpers import TOKENS, TOKENS_SPEC, eventually, new_user, read_topic, usage

pytestmark = pytest.mark.infra
AUTH = {"Authorization": f"Bearer {TOKENS['reporter']}", "Content-Type": "application/json"}
DELIVERY_TIMEOUT = 2.0  # s; librdkafka's message timeout is a second more
STALL = 5.0  # s the broker answers nothing: past both


async def started(bootstrap: str) -> RunningIngest:
    settings = MeteringSettings.from_env({
        "QM_KAFKA_BOOTSTRAP": bootstrap, "QM_TOKENS": TOKENS_SPEC,
        "QM_METERING_INGEST_DELIVERY_TIMEOUT_SECONDS": str(DELIVERY_TIMEOUT),
    })  # fmt: skip
    return await ingest.start(settings, "127.0.0.1:0")


@pytest.fixture
async def stalling(own_broker: LocalBroker) -> AsyncIterator[RunningIngest]:
    """An ingest on the test's own broker; the broker is resumed after the test
    whatever it did (a stopped broker would hold up its fixture's stop)."""
    running = await started(own_broker.bootstrap)
    try:
        yield running
    finally:
        own_broker.resume()
        await running.stop()


def body(n: int) -> tuple[list[str], bytes]:
    """`n` events of `n` users (so the body is several records, one per home
    partition): their event ids and the JSON array."""
    events = [usage(new_user()) for _ in range(n)]
    return [e.event_id for e in events], json.dumps(
        [json_format.MessageToDict(e) for e in events]
    ).encode()


async def post(http: aiohttp.ClientSession, url: str, data: bytes) -> tuple[int, dict[str, Any]]:
    async with http.post(url, data=data, headers=AUTH) as r:
        return r.status, json.loads(await r.read())


async def health(http: aiohttp.ClientSession, url: str) -> tuple[int, dict[str, Any]]:
    async with http.get(url.replace("/v1/usage", "/healthz")) as r:
        return r.status, json.loads(await r.read())


def event_ids_on(bootstrap: str) -> list[str]:
    """The event id of every event on the usage topic (one record holds a UsageEvent
    or a UsageBatch, as its content type says)."""
    out: list[str] = []
    for msg in read_topic(bootstrap, Topic.USAGE.value):
        kind = dict(msg.headers() or [])[CONTENT_TYPE]
        value = msg.value()
        assert isinstance(kind, bytes)
        assert isinstance(value, bytes)
        if b"type=" in kind:
            out += [e.event_id for e in usage_pb2.UsageBatch.FromString(value).events]
        else:
            out.append(usage_pb2.UsageEvent.FromString(value).event_id)
    return out


async def test_posts_are_accepted_again_after_the_broker_stalled(
    own_broker: LocalBroker, stalling: RunningIngest
) -> None:
    url = stalling.url
    async with aiohttp.ClientSession() as http:
        _, first = body(3)
        assert (await post(http, url, first))[0] == 202

        # The broker stalls with a body in flight: past the delivery timeout its
        # answer is 503, and /healthz says the broker does not answer.
        own_broker.pause()
        stalled_at = time.monotonic()
        stuck_ids, stuck = body(3)
        status, answer = await post(http, url, stuck)
        assert status == 503, answer
        status, said = await health(http, url)
        assert status == 503, said
        await asyncio.sleep(max(0.0, STALL - (time.monotonic() - stalled_at)))
        own_broker.resume()

        # A reporter sends the refused body again until it is taken. Before the fix
        # every post was refused PRODUCER_FENCED from here on, for good.
        statuses: list[int] = []

        async def sent_again() -> int:
            status, _ = await post(http, url, stuck)
            statuses.append(status)
            return status

        await eventually(sent_again, 202, within=20)
        assert statuses.count(202) == 1
        assert stalling.ingest.producer.renewals >= 1, "the stall did not break the producer"

        async def healthy() -> int:
            return (await health(http, url))[0]

        await eventually(healthy, 200, within=10)

        # Posted once each after the recovery: each taken at once, on the topic once.
        after: list[str] = []
        for _ in range(5):
            ids, data = body(4)
            status, answer = await post(http, url, data)
            assert status == 202, answer
            after += ids
        status, said = await health(http, url)
        assert (status, said["producer"]) == (200, "ok")

    on_topic = await asyncio.to_thread(event_ids_on, own_broker.bootstrap)
    assert all(on_topic.count(i) == 1 for i in after), "an event after the recovery twice"
    # The body refused during the stall is there (perhaps twice: its first send may
    # have reached the broker; metering counts an event id once).
    assert all(i in on_topic for i in stuck_ids)


async def test_a_fatal_error_replaces_the_producer_and_health_says_so_meanwhile(
    infra: Infra, monkeypatch: pytest.MonkeyPatch
) -> None:
    running = await started(infra.kafka_bootstrap)
    producer = running.ingest.producer
    # The new producer waits for `make` (the poll thread makes it): the state between
    # the fatal error and the replacement is held open to be looked at.
    make = threading.Event()
    new = producer._kafka._make

    def held(error_cb: Callable[[KafkaError], None]) -> Producer:
        assert make.wait(30), "never let go"
        return new(error_cb)

    try:
        async with aiohttp.ClientSession() as http:
            _, data = body(2)
            assert (await post(http, running.url, data))[0] == 202
            monkeypatch.setattr(producer._kafka, "_make", held)
            monkeypatch.setattr(producer, "renew_seconds", 0.0)
            # What librdkafka calls with a fatal error of the producer in use (0: the first)
            producer._kafka.failed(
                0, KafkaError(KafkaError._FATAL, "test: fatal idempotence", fatal=True)
            )

            status, said = await health(http, running.url)
            assert status == 503
            assert said["producer"].startswith("the Kafka producer is being replaced after _FATAL")
            status, answer = await post(http, running.url, data)
            assert status == 503
            assert "the Kafka producer is being replaced" in answer["error"]

            make.set()

            async def healthy() -> int:
                return (await health(http, running.url))[0]

            await eventually(healthy, 200, within=10)
            assert producer.renewals == 1
            assert (await post(http, running.url, data))[0] == 202
            # A late report of the replaced producer changes nothing.
            producer._kafka.failed(0, KafkaError(KafkaError._FATAL, "late", fatal=True))
            assert producer.unusable() is None
    finally:
        make.set()
        await running.stop()
