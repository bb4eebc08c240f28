"""Closing the HTTP ingest's producer while its poll thread is replacing it
(`IngestProducer.close`). No broker: the producers here never connect."""

from __future__ import annotations

import threading
from collections.abc import Callable

import pytest
from confluent_kafka import KafkaError, Producer

from services.metering.ingest_producer import IngestProducer

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
