"""Breaker's checks of a body librdkafka refuses after queuing its first records
(`_Body.cut`): with librdkafka's own queue full (a tiny `queue.buffering.max.messages`,
no wrapper), at every index, with the reports served before `cut` runs, with a fatal
refusal mid-body (renewal), and many concurrent sends. No broker: 127.0.0.1:1."""

from __future__ import annotations

import asyncio
import random
import threading
import time
from typing import Any

import pytest
from confluent_kafka import KafkaException

from quartermaster import kafka
from services.metering import ingest_producer
from services.metering.ingest_body import Record
from services.metering.ingest_producer import Busy, IngestProducer, Undelivered
from tests.helpers import FATAL, NOWHERE

RECORD: Record = (b"k", b"v", [], 0)


def _small_queue(monkeypatch: pytest.MonkeyPatch, messages: int) -> None:
    real = kafka.producer

    def producer(bootstrap: str, **config: Any) -> Any:
        return real(bootstrap, **{**config, "queue.buffering.max.messages": messages})

    monkeypatch.setattr(kafka, "producer", producer)


def _watch(monkeypatch: pytest.MonkeyPatch, producer: IngestProducer) -> list[int]:
    """in_flight after every release (never negative)."""
    seen: list[int] = []
    release = producer._release

    def watched(future: asyncio.Future[None], events: int) -> None:
        release(future, events)
        seen.append(producer.in_flight)

    monkeypatch.setattr(producer, "_release", watched)
    return seen


async def _drained(producer: IngestProducer, within: float = 10.0) -> int:
    for _ in range(int(within / 0.05)):
        if not producer.in_flight:
            break
        await asyncio.sleep(0.05)
    return producer.in_flight


@pytest.mark.parametrize("room", [2])
def test_librdkafkas_own_queue_full_mid_body_holds_the_body_until_reported(
    monkeypatch: pytest.MonkeyPatch, room: int, crashed: list[threading.ExceptHookArgs]
) -> None:
    _small_queue(monkeypatch, room)
    producer = IngestProducer(NOWHERE, "qm.usage.v1", 100, 0.3)  # reports within ~1.3 s
    seen = _watch(monkeypatch, producer)

    async def scenario() -> None:
        began = time.monotonic()
        with pytest.raises(Undelivered, match="refused the body"):
            await producer.send([RECORD] * (room + 2), 40)
        assert time.monotonic() - began < 0.3, "answered at once, not after the timeout"
        assert producer.in_flight == 40
        with pytest.raises(Busy, match="queue is full"):  # librdkafka's queue, i == 0
            await producer.send([RECORD], 1)
        assert producer.in_flight == 40
        assert await _drained(producer) == 0
        # the queue is free again: a whole body fits and is queued (then times out)
        with pytest.raises(Undelivered, match="did not confirm"):
            await producer.send([RECORD] * room, 3)
        assert await _drained(producer) == 0

    try:
        asyncio.run(scenario())
    finally:
        producer.close(0.1)
    assert min(seen) >= 0
    assert crashed == []


class _RefusesFrom:
    """The real producer, but its `produce` calls from number `at` on (counted from
    0) are refused with `refusal(body)`, librdkafka's queue-full BufferError unless a
    subclass says otherwise; `calls` counts them all."""

    def __init__(self, real: Any, at: int) -> None:
        self.real, self.at, self.calls = real, at, 0

    def produce(self, *args: Any, **kwargs: Any) -> None:
        self.calls += 1
        if self.calls > self.at:
            raise self.refusal(kwargs["on_delivery"].__self__)
        self.real.produce(*args, **kwargs)

    def refusal(self, body: ingest_producer._Body) -> Exception:
        return BufferError("Local: Queue full")

    def __getattr__(self, name: str) -> object:
        return getattr(self.real, name)


class _ServedFirst(_RefusesFrom):
    """Refuses record `at` of a body only once the reports of the records before it
    were served by the poll thread: the reports come before `cut` runs."""

    def refusal(self, body: ingest_producer._Body) -> Exception:
        until = time.monotonic() + 5
        while body.remaining != body.records - self.at and time.monotonic() < until:
            time.sleep(0.01)
        assert body.remaining == body.records - self.at
        return super().refusal(body)


def test_a_body_refused_half_sent_holds_the_queue_until_its_queued_records_report() -> None:
    """librdkafka refused a record after queuing the body's first ones: the body is
    answered Undelivered at once, and its events stay counted as waiting for the
    broker until the queued records' reports are in (before, they left the count at
    once though they held librdkafka's queue: backpressure undercounted them)."""
    producer = IngestProducer(NOWHERE, "qm.usage.v1", 100, 0.2)  # reports within ~1.2 s
    real = producer._kafka.producer
    refusing = _RefusesFrom(real, 2)
    producer._kafka.producer = refusing  # type: ignore[assignment]

    async def scenario() -> tuple[int, int]:
        with pytest.raises(Undelivered, match="refused the body"):
            await producer.send([RECORD] * 3, 30)
        waiting = producer.in_flight
        with pytest.raises(Busy):  # what waits leaves no room for 71 more
            await producer.send([RECORD] * 3, 71)
        return waiting, await _drained(producer)

    try:
        waiting, after = asyncio.run(scenario())
    finally:
        producer._kafka.producer = real
        producer.close(0.1)
    assert waiting == 30
    assert after == 0, "the queued records' reports never released the body's events"
    assert refusing.calls == 3


@pytest.mark.parametrize("at", [2])
def test_reports_served_before_cut_resolve_the_body_once(
    monkeypatch: pytest.MonkeyPatch, at: int, crashed: list[threading.ExceptHookArgs]
) -> None:
    producer = IngestProducer(NOWHERE, "qm.usage.v1", 100, 0.2)
    seen = _watch(monkeypatch, producer)
    real = producer._kafka.producer
    producer._kafka.producer = _ServedFirst(real, at)  # type: ignore[assignment]
    resolved: list[object] = []
    body_resolve = ingest_producer._Body._resolve

    def counted_resolve(body: ingest_producer._Body) -> None:
        resolved.append(body)
        body_resolve(body)

    monkeypatch.setattr(ingest_producer._Body, "_resolve", counted_resolve)

    async def scenario() -> None:
        with pytest.raises(Undelivered, match="refused the body"):
            await producer.send([RECORD] * (at + 2), 20)
        assert await _drained(producer, 2) == 0

    try:
        asyncio.run(scenario())
    finally:
        producer._kafka.producer = real
        producer.close(0.1)
    assert len(resolved) == 1
    assert seen == [0]
    assert crashed == []


class _FatalFrom(_RefusesFrom):
    """Refuses with a fatal KafkaException."""

    def refusal(self, body: ingest_producer._Body) -> Exception:
        return KafkaException(FATAL)


def test_a_fatal_refusal_mid_body_renews_and_releases_the_queued_records(
    monkeypatch: pytest.MonkeyPatch,
    crashed: list[threading.ExceptHookArgs],
) -> None:
    producer = IngestProducer(NOWHERE, "qm.usage.v1", 100, 5.0)  # timeouts far off
    producer.renew_seconds = 0.0
    seen = _watch(monkeypatch, producer)
    producer._kafka.producer = _FatalFrom(producer._kafka.producer, 2)  # type: ignore[assignment]

    async def scenario() -> None:
        with pytest.raises(Undelivered, match="refused the body"):
            await producer.send([RECORD] * 4, 10)
        assert producer.in_flight == 10
        # purged by the renewal, not the 6 s message timeout
        assert await _drained(producer, 3) == 0

    try:
        asyncio.run(scenario())
        renewals = producer.renewals
    finally:
        producer.close(0.1)
    assert renewals == 1
    assert seen == [0]
    assert crashed == []


def test_many_sends_against_a_small_real_queue_with_renewals(
    monkeypatch: pytest.MonkeyPatch,
    crashed: list[threading.ExceptHookArgs],
) -> None:
    """300 bodies from one loop against librdkafka's own queue of 7 records, with
    fatal errors marked from another thread meanwhile: every send answered, in_flight
    never negative and back to 0, the poll thread alive."""
    _small_queue(monkeypatch, 7)
    producer = IngestProducer(NOWHERE, "qm.usage.v1", 10_000, 0.3)
    producer.renew_seconds = 0.0
    seen = _watch(monkeypatch, producer)
    rng = random.Random(7)
    stop = threading.Event()

    def renewer() -> None:
        while not stop.wait(0.15):
            producer._kafka.failed(producer._kafka.generation, FATAL)

    answers: dict[str, int] = {}
    cuts: list[int] = []
    cut = ingest_producer._Body.cut

    def counted_cut(body: ingest_producer._Body, queued: int, why: str) -> None:
        cuts.append(queued)
        cut(body, queued, why)

    monkeypatch.setattr(ingest_producer._Body, "cut", counted_cut)

    async def one() -> None:
        await asyncio.sleep(rng.random() * 2)
        try:
            await producer.send([RECORD] * rng.randint(1, 6), rng.randint(1, 30))
            answers["ok"] = answers.get("ok", 0) + 1
        except (Busy, Undelivered) as exc:
            answers[type(exc).__name__] = answers.get(type(exc).__name__, 0) + 1

    async def scenario() -> int:
        await asyncio.wait_for(asyncio.gather(*(one() for _ in range(300))), 30)
        stop.set()
        return await _drained(producer)

    thread = threading.Thread(target=renewer)
    thread.start()
    try:
        left = asyncio.run(scenario())
        alive = producer._poller.is_alive()
    finally:
        stop.set()
        thread.join()
        producer.close(0.1)
    assert sum(answers.values()) == 300
    assert len(cuts) > 3, (cuts, answers)  # bodies were half-sent
    assert answers.get("Busy", 0) > 3, answers  # and librdkafka's queue refused whole ones
    assert left == 0
    assert min(seen) >= 0
    assert crashed == []
    assert alive
