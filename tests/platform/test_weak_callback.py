"""A producer's error callback does not keep its owner alive (quartermaster.kafka
`weak_callback`): librdkafka's C producer holds its callbacks where Python's
collector cannot see them, so an owner held by its producer's callback, holding the
producer, was never collected (its producer's threads and connections lived until
the process ended)."""

from __future__ import annotations

import gc
import weakref

from confluent_kafka import KafkaError

from quartermaster import kafka

NOWHERE = "127.0.0.1:1"  # no broker: the producers here never connect


class Owner:
    def __init__(self) -> None:
        self.seen: list[tuple[int, KafkaError]] = []

    def failed(self, generation: int, err: KafkaError) -> None:
        self.seen.append((generation, err))


def test_the_callback_calls_its_owner_while_it_lives_and_nothing_after() -> None:
    owner = Owner()
    callback = kafka.weak_callback(owner.failed, 7)
    err = KafkaError(KafkaError._FATAL)
    callback(err)
    assert owner.seen == [(7, err)]
    gone = weakref.ref(owner)
    del owner
    gc.collect()
    assert gone() is None
    callback(err)  # its owner collected: nothing happens, nothing raised


def test_a_renewing_producer_and_its_owner_are_collected() -> None:
    renewing = kafka.Renewing(
        lambda error_cb: kafka.producer(NOWHERE, error_cb=error_cb, log_level=0), "test"
    )
    gone = weakref.ref(renewing)
    del renewing
    gc.collect()
    assert gone() is None, "the producer's error callback kept its owner alive"
