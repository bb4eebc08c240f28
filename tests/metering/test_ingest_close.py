"""Closing the HTTP ingest's producer while its poll thread is replacing it
(`IngestProducer.close`). No broker: the producers here never connect."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable

import pytest
from confluent_kafka import KafkaError, Producer

from services.metering.ingest_body import Record
from services.metering.ingest_producer import IngestProducer, Undelivered
from tests.helpers import FATAL, NOWHERE


def test_close_during_a_renewal_leaves_the_poll_thread_what_it_reads(
    monkeypatch: pytest.MonkeyPatch,
    crashed: list[threading.ExceptHookArgs],
) -> None:
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
    crashed: list[threading.ExceptHookArgs],
) -> None:
    """A body's delivery report that comes once the event loop that sent it is closed
    (a server stopping; here the record times out against no broker) has nobody to
    tell: before, resolving its future raised in the poll thread and ended it, and
    from then on no body was ever confirmed while /healthz said ok."""
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
