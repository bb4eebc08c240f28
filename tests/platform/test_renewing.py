"""A producer replaced once it can send nothing more (quartermaster.kafka `Renewing`,
shared by the publisher, the usage reporter and the HTTP ingest), and `retire` of the
one replaced. No broker: the producers here never connect."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from typing import Any

import pytest
from confluent_kafka import KafkaError, KafkaException, Producer

from quartermaster import kafka
from quartermaster.publisher import Publisher
from tests.helpers import FATAL, NOWHERE


class Make:
    """Makes producers to nowhere; refuses while `refuse` is set; records whether the
    owner's lock was held while it made one."""

    def __init__(self, lock: threading.Lock | None = None) -> None:
        self.refuse = False
        self.lock = lock
        self.locked_while_making: list[bool] = []

    def __call__(self, error_cb: Callable[[KafkaError], None]) -> Producer:
        if self.lock is not None:
            self.locked_while_making.append(self.lock.locked())
        if self.refuse:
            raise KafkaException(KafkaError(KafkaError._INVALID_ARG, "test: refused"))
        return kafka.producer(NOWHERE, error_cb=error_cb, log_level=0)


def state(renewing: kafka.Renewing) -> tuple[int, int, str | None]:
    """(generation, renewals, broken)"""
    return renewing.generation, renewing.renewals, renewing.broken


def test_a_failed_producer_is_replaced_once_and_stale_errors_change_nothing() -> None:
    renewing = kafka.Renewing(Make(), "test producer")
    first = renewing.producer
    assert renewing.renew() is None, "nothing failed: nothing to replace"
    renewing.failed(0, KafkaError(KafkaError._TRANSPORT, "a broker down"))
    assert renewing.broken is None, "an error librdkafka retries itself is not a failure"
    renewing.failed(0, FATAL)
    assert renewing.broken == "_FATAL: test: fatal"
    old = renewing.renew()
    assert old is first
    assert state(renewing) == (1, 1, None)
    assert renewing.producer is not first
    renewing.failed(0, FATAL)  # a late report of the replaced producer
    assert renewing.broken is None
    assert renewing.renew() is None


def test_a_producer_that_cant_be_made_leaves_everything_as_it_was_until_the_next_try() -> None:
    make = Make()
    renewing = kafka.Renewing(make, "test producer")
    first = renewing.producer
    renewing.failed(0, FATAL)
    make.refuse = True
    with pytest.raises(KafkaException, match="test: refused"):
        renewing.renew()
    assert renewing.producer is first
    assert (renewing.generation, renewing.renewals) == (0, 0)
    assert renewing.broken == "_FATAL: test: fatal", "still marked: the next renew tries again"
    make.refuse = False
    assert renewing.renew() is first
    assert state(renewing) == (1, 1, None)


def test_the_owners_lock_is_held_for_the_swap_and_the_mark_not_while_making() -> None:
    lock = threading.Lock()
    make = Make(lock)
    swapped_under_lock: list[bool] = []
    marked_under_lock: list[bool] = []

    class Watched(kafka.Renewing):
        def __setattr__(self, name: str, value: Any) -> None:
            if name == "producer":
                swapped_under_lock.append(lock.locked())
            if name == "broken" and value is not None:
                marked_under_lock.append(lock.locked())
            super().__setattr__(name, value)

    renewing = Watched(make, "test producer", lock)
    renewing.failed(0, FATAL)
    renewing.renew()
    # the first producer made and set in __init__ (no lock then), then the renewal
    assert make.locked_while_making == [False, False]
    assert swapped_under_lock == [False, True]
    # failed's check and mark, one step against renew's swap
    assert marked_under_lock == [True]


def test_retire_fails_the_queued_records_of_a_replaced_producer() -> None:
    old = kafka.producer(NOWHERE, log_level=0, **{"message.timeout.ms": 60_000})
    reports: list[KafkaError | None] = []
    for i in range(3):
        old.produce("t", value=b"v%d" % i, on_delivery=lambda err, _m: reports.append(err))
    assert kafka.retire(old, 5.0) == 0
    assert len(reports) == 3
    assert all(err is not None and err.code() == KafkaError._PURGE_QUEUE for err in reports)


def test_a_report_of_the_replaced_producer_racing_the_renewal_leaves_the_new_one_usable() -> None:
    """Two reports of producer 0 on two threads (a publisher's flush thread and its
    event loop; a reporter's poll outside its lock and a report under it): the first
    is interrupted where `failed` calls into confluent-kafka (`err.name()`, where
    CPython may hand the GIL over) while the other marks producer 0 failed and renews.
    The interrupted report is of the replaced producer: it must not mark the new one
    failed (which would replace it, purging what it holds, for nothing)."""
    renewing = kafka.Renewing(Make(), "test producer")

    class Interrupted(KafkaError):
        def name(self) -> str:
            if renewing.generation == 0:  # the other thread, at this moment
                renewing.failed(0, FATAL)
                assert renewing.renew() is not None
            return str(super().name())

    renewing.failed(0, Interrupted(KafkaError._FATAL, "test: fatal too", fatal=True))
    assert (renewing.generation, renewing.renewals) == (1, 1)
    assert renewing.broken is None, "the new producer was marked by the old one's report"


def test_a_publisher_whose_failed_producer_cant_be_replaced_raises_kafkaexception() -> None:
    """What `Publisher.send` says of it: librdkafka refusing to make the new producer
    is no outage (not an OSError, which callers retry), and nothing is sent; once a
    producer can be made again, the next send replaces the failed one."""
    make = Make()
    publisher = Publisher(NOWHERE, log_level=0)
    publisher._kafka = kafka.Renewing(make, "test publisher")
    publisher._kafka.failed(0, FATAL)
    make.refuse = True
    with pytest.raises(KafkaException, match="test: refused"):
        asyncio.run(publisher.send([("qm.test", b"k", b"v", [])]))
    assert state(publisher._kafka) == (0, 0, "_FATAL: test: fatal")
    make.refuse = False
    asyncio.run(publisher._renew())  # what the next send begins with
    assert state(publisher._kafka) == (1, 1, None)


class _Raises:
    """A producer whose `poll` and `flush` raise `error` (as confluent-kafka raises a
    fatal error, its error callback never told); the rest is `real`'s."""

    def __init__(self, real: Producer, error: KafkaError) -> None:
        self._real, self._error = real, error

    def poll(self, _timeout: float) -> int:
        raise KafkaException(self._error)

    flush = poll

    def __len__(self) -> int:
        return 3

    def __getattr__(self, name: str) -> Any:
        return getattr(self._real, name)


@pytest.mark.parametrize("serve", ["poll", "flush"])
def test_a_fatal_error_raised_while_serving_reports_marks_the_producer_failed(
    serve: str, caplog: pytest.LogCaptureFixture
) -> None:
    renewing = kafka.Renewing(Make(), "test producer")
    renewing.producer = _Raises(renewing.producer, FATAL)  # type: ignore[assignment]
    served = getattr(renewing, serve)(0.01)
    assert served == (0 if serve == "poll" else 3)  # flush: every record queued is left
    assert renewing.broken == "_FATAL: test: fatal"
    assert renewing.renew() is not None
    # another KafkaException is logged, raised to nobody (it ended the ingest's poll thread)
    renewing.producer = _Raises(renewing.producer, KafkaError(KafkaError._TRANSPORT, "odd"))  # type: ignore[assignment]
    assert getattr(renewing, serve)(0.01) in (0, 3)
    assert renewing.broken is None
    assert "raised while serving its reports" in caplog.text
