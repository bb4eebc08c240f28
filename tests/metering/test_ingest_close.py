"""Closing the HTTP ingest's producer while its poll thread is replacing it
(`IngestProducer.close`). No broker: the producers here never connect."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest
from confluent_kafka import KafkaError, Producer

from services.metering.ingest_body import Record
from services.metering.ingest_producer import Busy, IngestProducer, Undelivered

NOWHERE = "127.0.0.1:1"
FATAL = KafkaError(KafkaError._FATAL, "test: fatal", fatal=True)


def test_close_during_a_renewal_leaves_the_poll_thread_what_it_reads(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    crashed: list[threading.ExceptHookArgs] = []
    monkeypatch.setattr(threading, "excepthook", crashed.append)
    producer = IngestProducer(NOWHERE, "qm.usage.v1", 100, 1.0)
    producer.renew_seconds = 0.0
    entered, release = threading.Event(), threading.Event()
    make = producer._kafka._make

    def held(error_cb: Callable[[KafkaError], None]) -> Producer:
        entered.set()
        release.wait(10)
        return make(error_cb)

    monkeypatch.setattr(producer._kafka, "_make", held)
    try:
        producer._kafka.failed(0, FATAL)
        assert entered.wait(5), "the poll thread never began the renewal"
        producer.close(0.1)  # the poll thread is still making the new producer
    finally:
        release.set()
    producer._poller.join(5)
    assert not producer._poller.is_alive()
    assert crashed == [], f"the poll thread died: {crashed[0].exc_value!r}"
    assert producer.renewals == 1


def test_a_report_after_its_requests_loop_closed_leaves_the_poll_thread_serving(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A body's delivery report that comes once the event loop that sent it is closed
    (a server stopping; here the record times out against no broker) has nobody to
    tell: before, resolving its future raised in the poll thread and ended it, and
    from then on no body was ever confirmed while /healthz said ok."""
    crashed: list[threading.ExceptHookArgs] = []
    monkeypatch.setattr(threading, "excepthook", crashed.append)
    producer = IngestProducer(NOWHERE, "qm.usage.v1", 100, 0.2)  # reports within ~1.2 s
    record: Record = (b"k", b"v", [], 0)

    async def send() -> None:
        with pytest.raises(Undelivered):
            await producer.send([record], 1)

    loop = asyncio.new_event_loop()
    loop.run_until_complete(send())
    loop.close()
    time.sleep(2.5)  # the record's report comes and is served meanwhile
    try:
        assert crashed == [], f"the poll thread died: {crashed[0].exc_value!r}"
        assert producer._poller.is_alive()
        assert producer.unusable() is None
    finally:
        producer.close(0.1)


def test_a_poll_thread_that_ended_makes_the_producer_unusable() -> None:
    producer = IngestProducer(NOWHERE, "qm.usage.v1", 100, 0.2)
    producer._stop.set()  # as if it had ended otherwise than by close()
    producer._poller.join(5)
    producer._stop.clear()
    try:
        why = producer.unusable()
        assert why is not None
        assert "the thread that confirms deliveries ended" in why
    finally:
        producer.close(0.1)


class _RefusesAfter:
    """A producer that queues the first `queued` records of each call sequence and
    refuses the next with librdkafka's queue-full BufferError."""

    def __init__(self, real: Producer, queued: int) -> None:
        self.real, self.queued, self.calls = real, queued, 0

    def produce(self, *args: Any, **kwargs: Any) -> None:
        self.calls += 1
        if self.calls > self.queued:
            raise BufferError("Local: Queue full")
        self.real.produce(*args, **kwargs)

    def __getattr__(self, name: str) -> object:
        return getattr(self.real, name)


@pytest.mark.parametrize("queued", [2])
def test_a_body_refused_half_sent_holds_the_queue_until_its_queued_records_report(
    queued: int,
) -> None:
    """librdkafka refused a record after queuing the body's first ones: the body is
    answered Undelivered at once, and its events stay counted as waiting for the
    broker until the queued records' reports are in (before, they left the count at
    once though they held librdkafka's queue: backpressure undercounted them)."""
    producer = IngestProducer(NOWHERE, "qm.usage.v1", 100, 0.2)  # reports within ~1.2 s
    real = producer._kafka.producer
    refusing = _RefusesAfter(real, queued)
    producer._kafka.producer = refusing  # type: ignore[assignment]
    records: list[Record] = [(b"k", b"v", [], 0)] * 3

    async def scenario() -> tuple[int, int, int]:
        with pytest.raises(Undelivered, match="refused the body"):
            await producer.send(records, 30)
        waiting = producer.in_flight
        with pytest.raises(Busy):  # what waits leaves no room for 71 more
            await producer.send(records, 71)
        for _ in range(200):  # the reports come within ~1.2 s
            if not producer.in_flight:
                break
            await asyncio.sleep(0.05)
        return waiting, producer.in_flight, refusing.calls

    try:
        waiting, after, calls = asyncio.run(scenario())
    finally:
        producer._kafka.producer = real
        producer.close(0.1)
    assert waiting == 30
    assert after == 0, "the queued records' reports never released the body's events"
    assert calls == queued + 1
