"""`Publisher`: sends records with confluent-kafka and waits until the broker has every
one (metering's DLQ records, totals and notices, policy's notices, the requests
outbox), replacing a producer that can send nothing more (`kafka.producer_failed`).
Its records and their types are `quartermaster.kafka`'s (`OutRecord`)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence

from confluent_kafka import KafkaError, KafkaException

from quartermaster import telemetry
from quartermaster.kafka import (
    RECORD_ERRORS,
    OutRecord,
    Renewing,
    producer,
    producer_failed,
    retire,
)

log = logging.getLogger(__name__)


class Publisher:
    """Sends records with confluent-kafka (C; several times faster here than the
    aiokafka producer faust gave metering, when it had faust) and waits until the
    broker has every one: metering's DLQ records and totals, policy's notification
    intents, the requests outbox.

    A producer that can send nothing more (`producer_failed`: a fatal error through
    `error_cb`, a delivery report or `produce` refusing the producer itself, e.g.
    PRODUCER_FENCED after the broker stalled past `message.timeout.ms`) is replaced
    by a new one before the `send` / `deliver` that saw it raises OSError, so the
    caller's retry (every caller retries an OSError) goes out on the new one. Its
    records are purged; what of them reached the broker is sent again by the retry
    (consumers dedupe: metering by total key, policy and the notifier by id).
    Without that, a failed producer refused every record for good while its process
    retried forever: the outbox relay, metering's counting and policy's notices
    wedged. `config` overrides librdkafka properties (tests: a short
    `message.timeout.ms`).
    """

    def __init__(self, bootstrap: str, **config: object) -> None:
        settings = {"linger.ms": 2, "enable.idempotence": True, "acks": "all", **config}
        self._kafka = Renewing(
            lambda error_cb: producer(bootstrap, error_cb=error_cb, **settings), "Kafka producer"
        )

    @property
    def renewals(self) -> int:
        """Producers replaced since the start."""
        return self._kafka.renewals

    def _failed(self, generation: int, err: KafkaError) -> None:
        """Producer `generation` can send nothing more (its error callback's path)."""
        self._kafka.failed(generation, err)

    async def _renew(self) -> None:
        """Replace the producer when it failed (event loop): a new one takes every
        record from now on; the old one's are purged, their reports served (as
        errors, to the sends still flushing it) in a worker thread."""
        old = self._kafka.renew()
        if old is not None:
            await asyncio.to_thread(retire, old)

    def _produce(self, record: OutRecord, traced: list[tuple[str, bytes]],
                 delivered: Callable[[KafkaError | None, object], None]) -> None:  # fmt: skip
        """Hand `record` to the producer (waiting while its local queue is full).
        Raises KafkaException when the producer refuses it before sending."""
        topic, key, value, headers = record[0], record[1], record[2], record[3]
        if traced:
            headers = [*headers, *traced]
        # confluent-kafka: a negative partition means "let the partitioner choose"
        partition = record[4] if len(record) == 5 else -1
        while True:
            try:
                self._kafka.producer.produce(
                    topic, key=key, value=value, headers=headers, partition=partition,
                    on_delivery=delivered,
                )  # fmt: skip
                return
            except BufferError:  # local queue full: let deliveries drain
                self._kafka.poll(0.05)

    def _watch(self, generation: int, err: KafkaError | None) -> None:
        """A delivery report's error of producer `generation`: marks it failed when the
        error is about the producer."""
        self._kafka.failed(generation, err)

    async def _flush(self) -> int:
        """Wait up to 30 s for every record handed over; how many are still undelivered."""
        loop = asyncio.get_running_loop()
        return int(await loop.run_in_executor(None, self._kafka.flush, 30.0))

    async def send(self, records: Sequence[OutRecord]) -> None:
        """Send `records` and wait until the broker has them all; OSError when any was
        not delivered within 30 s, the client was not ready or the producer failed (it
        is replaced: retry); a non-retriable KafkaException for a record the producer
        refuses outright, or from `Renewing.renew` when a failed producer can't be
        replaced (librdkafka refuses to make one: a certificate file gone bad since
        the start, say): neither is an outage to wait out, so neither is an OSError."""
        await self._renew()
        errors: list[str] = []
        # The sender's trace context on every record (a metering batch's, on its totals).
        traced = telemetry.inject_headers() if telemetry.tracing() else []
        generation = self._kafka.generation

        def delivered(err: KafkaError | None, _msg: object) -> None:
            if err is not None:
                self._watch(generation, err)
                errors.append(str(err))

        for record in records:
            try:
                self._produce(record, traced, delivered)
            except KafkaException as exc:
                # Refused before sending. A retriable error (the client is not ready
                # yet) is an outage, and so is a failed producer (replaced below):
                # OSError, which callers retry. Any other (a record past
                # message.max.bytes) is a bug in what we built: raised as it is, so the
                # process ends and is restarted.
                error = exc.args[0]
                self._watch(generation, error)
                if error.retriable() or producer_failed(error):
                    await self._renew()
                    raise OSError(f"{record[0]}: {error.str()}") from exc
                raise
        undelivered = await self._flush()
        if undelivered or errors:
            await self._renew()
            raise OSError(f"{undelivered} record(s) undelivered; errors: {errors[:3]}")

    async def deliver(self, records: Sequence[OutRecord]) -> list[str]:
        """Send `records` and wait until the broker has them, each on its own: what
        became of each, in order, "" for delivered or why the producer or the broker
        refused it for good (an error of RECORD_ERRORS: too large, invalid; sending it
        again can only fail again). The others are sent whatever one of them is.
        OSError when any failed for another reason (the client not ready, not
        delivered within 30 s, the producer failed and was replaced: retry them)."""
        await self._renew()
        outcome = [""] * len(records)
        others: list[str] = []
        traced = telemetry.inject_headers() if telemetry.tracing() else []
        generation = self._kafka.generation

        def reporter(i: int) -> Callable[[KafkaError | None, object], None]:
            def delivered(err: KafkaError | None, _msg: object) -> None:
                if err is None:
                    return
                self._watch(generation, err)
                if err.code() in RECORD_ERRORS:
                    outcome[i] = f"{err.name()}: {err.str()}"
                else:
                    others.append(str(err))

            return delivered

        for i, record in enumerate(records):
            try:
                self._produce(record, traced, reporter(i))
            except KafkaException as exc:
                error = exc.args[0]
                self._watch(generation, error)
                if error.code() in RECORD_ERRORS:
                    outcome[i] = f"{error.name()}: {error.str()}"
                elif error.retriable() or producer_failed(error):
                    await self._renew()
                    raise OSError(f"{record[0]}: {error.str()}") from exc
                else:
                    raise
        undelivered = await self._flush()
        if undelivered or others:
            await self._renew()
            raise OSError(f"{undelivered} record(s) undelivered; errors: {others[:3]}")
        return outcome

    def close(self) -> None:
        self._kafka.flush(5)
        del self._kafka  # librdkafka's threads go with it, not at interpreter exit
