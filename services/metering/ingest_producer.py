"""The HTTP ingest's Kafka edge: sends a body's records and tells the handler when the
broker has all of them (producer delivery confirmed, acks=all, idempotent).

A confluent-kafka producer made like every other (`quartermaster.kafka.producer`:
the process's Kafka security, murmur2); a thread of its own polls it, and each
delivery report resolves the body's future on the event loop. The handler answers
only then, so a 202 means the broker has every event of the body.

Backpressure is counted in events: at most `queue_events` sent and not yet confirmed,
across all requests. A body that would pass that is refused before anything of it is
sent (`Busy`), as is a body librdkafka's own queue has no room for; a body whose
records are not all confirmed within `delivery_timeout` seconds (the broker is slow or
gone) is `Undelivered`. Either way the producer sends the body again later: what of it
did reach the broker is counted once by metering's event-id dedupe.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Sequence

from confluent_kafka import KafkaError, KafkaException

from quartermaster import kafka
from services.metering.ingest_body import Record

log = logging.getLogger("qm.metering.ingest")


class Busy(Exception):
    """Too many events wait for the broker already: nothing of the body was sent."""


class Undelivered(Exception):
    """Not every record of the body was confirmed in time, or one was refused: some of
    it may be on the broker (sending it again is safe)."""


class _Body:
    """One body's records in flight: the future the handler awaits, resolved once
    every record has its delivery report. Touched by the poll thread only, after
    `send` made it."""

    __slots__ = ("error", "events", "future", "loop", "remaining")

    def __init__(self, loop: asyncio.AbstractEventLoop, records: int, events: int) -> None:
        self.loop = loop
        self.future: asyncio.Future[None] = loop.create_future()
        self.remaining = records
        self.events = events
        self.error: str | None = None

    def delivered(self, err: KafkaError | None, _msg: object) -> None:
        if err is not None and self.error is None:
            self.error = err.str()
        self.remaining -= 1
        if self.remaining == 0:
            self.loop.call_soon_threadsafe(self._resolve)

    def _resolve(self) -> None:
        if not self.future.done():
            if self.error is None:
                self.future.set_result(None)
            else:
                self.future.set_exception(Undelivered(f"the broker refused: {self.error}"))


class IngestProducer:
    """Sends records to `topic` on `bootstrap` (see the module docstring)."""

    def __init__(
        self, bootstrap: str, topic: str, queue_events: int, delivery_timeout: float
    ) -> None:
        self.topic = topic
        self.queue_events = queue_events
        self.delivery_timeout = delivery_timeout
        self.in_flight = 0  # events sent and not yet confirmed (event loop only)
        self._producer = kafka.producer(
            bootstrap,
            **{
                "enable.idempotence": True,
                "acks": "all",
                "linger.ms": 2,
                # librdkafka gives up on a record a second after the answer did (so
                # the answer says why), and it leaves the queue
                "message.timeout.ms": int(delivery_timeout * 1000) + 1000,
            },
        )
        self._stop = threading.Event()
        self._poller = threading.Thread(target=self._poll, name="ingest-poll", daemon=True)
        self._poller.start()

    def _poll(self) -> None:
        while not self._stop.is_set():
            self._producer.poll(0.1)

    def partitions(self, timeout: float = 5.0) -> int:
        """How many partitions the topic has (blocking); OSError when the broker does
        not say within `timeout` s."""
        try:
            meta = self._producer.list_topics(self.topic, timeout=timeout)
        except KafkaException as exc:
            raise OSError(f"{self.topic}: {exc.args[0].str()}") from None
        found = meta.topics.get(self.topic)
        if found is None or found.error is not None or not found.partitions:
            why = found.error.str() if found is not None and found.error else "no partitions"
            raise OSError(f"{self.topic}: {why}")
        return len(found.partitions)

    async def send(self, records: Sequence[Record], events: int) -> None:
        """Send `records` (carrying `events` events) and return once the broker has
        every one. Busy before anything is sent when the queue has no room;
        Undelivered when a record was refused or not confirmed within the delivery
        timeout."""
        if self.in_flight + events > self.queue_events:
            raise Busy(f"{self.in_flight} events already wait for the broker")
        body = _Body(asyncio.get_running_loop(), len(records), events)
        for i, (key, value, headers, partition) in enumerate(records):
            try:
                self._producer.produce(
                    self.topic, key=key, value=value, headers=headers, partition=partition,
                    on_delivery=body.delivered,
                )  # fmt: skip
            except (BufferError, KafkaException) as exc:
                if i == 0:
                    raise Busy(f"the producer's queue is full: {exc}") from None
                # Some records are queued: they are still delivered (their future is
                # never awaited); the rest never will be. The body is refused; sent
                # again, its events count once.
                raise Undelivered(f"the producer refused part of the body: {exc}") from None
        self.in_flight += events
        try:
            await asyncio.wait_for(asyncio.shield(body.future), self.delivery_timeout)
        except TimeoutError:
            raise Undelivered(
                f"the broker did not confirm within {self.delivery_timeout:g} s"
            ) from None
        finally:
            # The events leave the count once their reports are in, not when the
            # answer gave up on them: until then they hold librdkafka's queue.
            body.future.add_done_callback(lambda f: self._release(f, events))

    def _release(self, future: asyncio.Future[None], events: int) -> None:
        self.in_flight -= events
        if not future.cancelled():
            future.exception()  # retrieved: a late refusal was answered already

    async def reachable(self) -> tuple[bool, str]:
        """(True, "N partitions") when the broker describes the topic within 2 s, else
        (False, why): what /healthz says."""
        try:
            n = await asyncio.to_thread(self.partitions, 2.0)
        except OSError as exc:
            return False, str(exc)
        return True, f"{self.topic}: {n} partitions"

    def close(self, timeout: float = 5.0) -> None:
        """Deliver what is queued (up to `timeout` s), then stop the poll thread."""
        self._producer.flush(timeout)
        self._stop.set()
        self._poller.join(timeout=1)
        del self._producer  # librdkafka's threads go with it, not at interpreter exit
