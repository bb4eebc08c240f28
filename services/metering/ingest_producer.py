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
gone), or whose queue ran out after its first records (they are still delivered, and
count as waiting until they are), is `Undelivered`. Either way the producer sends the
body again later: what of it did reach the broker is counted once by metering's
event-id dedupe.

A producer that can send nothing more (a fatal error, or the broker refusing its
producer id or epoch: `quartermaster.kafka.producer_failed`) is replaced by a new one
from the poll thread, within about `IngestProducer.renew_seconds`; its bodies in
flight are `Undelivered`, and so is every body posted until the new one is in place
(`unusable` says why, and /healthz with it). Without that, one broker stall past the
message timeout left the ingest answering 503 PRODUCER_FENCED to every post, for
good, while /healthz said ok.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import Callable, Sequence

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
    every record queued has its delivery report (from the poll thread; `cut` from
    the event loop when librdkafka refused the rest of the body, hence the lock);
    `failed` is told of an error that says the producer itself can send nothing more
    (`kafka.producer_failed`)."""

    __slots__ = ("error", "failed", "future", "lock", "loop", "records", "remaining")

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        records: int,
        failed: Callable[[KafkaError], None],
    ) -> None:
        self.loop = loop
        self.future: asyncio.Future[None] = loop.create_future()
        self.records = records
        self.remaining = records
        self.failed = failed
        self.error: str | None = None
        self.lock = threading.Lock()

    def delivered(self, err: KafkaError | None, _msg: object) -> None:
        if err is not None and kafka.producer_failed(err):
            self.failed(err)
        with self.lock:
            if err is not None and self.error is None:
                self.error = err.str()
            self.remaining -= 1
            done = self.remaining == 0
        if done:
            self._done()

    def cut(self, queued: int, why: str) -> None:
        """Only the first `queued` records were queued (librdkafka refused the next,
        for `why`): the future resolves, as refused, once their reports are in."""
        with self.lock:
            self.remaining -= self.records - queued
            self.error = self.error or why
            done = self.remaining == 0
        if done:
            self._done()

    def _done(self) -> None:
        # RuntimeError: the loop that sent the body is closed (a server stopping)
        # and nobody waits for the answer. Raised here, it ended the poll thread.
        with contextlib.suppress(RuntimeError):
            self.loop.call_soon_threadsafe(self._resolve)

    def _resolve(self) -> None:
        if not self.future.done():
            if self.error is None:
                self.future.set_result(None)
            else:
                self.future.set_exception(Undelivered(f"the broker refused: {self.error}"))


class IngestProducer:
    """Sends records to `topic` on `bootstrap` (see the module docstring).

    The producer is replaced when it can send nothing more (`quartermaster.kafka.
    producer_failed`: a fatal error through `error_cb`, or a delivery report or a
    `produce` refusing the producer itself, e.g. PRODUCER_FENCED after the broker
    stalled past the message timeout), by `quartermaster.kafka.Renewing` as every
    service's producers are. Until the new one is in place `unusable` says why
    (/healthz answers 503) and `send` refuses bodies at once (Undelivered). The old
    producer's records are purged: their bodies are answered Undelivered (some of
    their records may have reached the broker; the reporter sends the body again and
    metering counts each event id once). At most one new producer a `renew_seconds`,
    so a broker that refuses every new producer too is not asked for a producer id in
    a tight loop.
    """

    renew_seconds = 1.0

    def __init__(
        self, bootstrap: str, topic: str, queue_events: int, delivery_timeout: float
    ) -> None:
        self.topic = topic
        self.queue_events = queue_events
        self.delivery_timeout = delivery_timeout
        self.in_flight = 0  # events sent and not yet confirmed (event loop only)
        config = {
            "enable.idempotence": True,
            "acks": "all",
            "linger.ms": 2,
            # librdkafka gives up on a record a second after the answer did (so the
            # answer says why), and it leaves the queue
            "message.timeout.ms": int(delivery_timeout * 1000) + 1000,
        }
        # Held around a body's `produce` calls, and (by Renewing) around the swap of
        # producers and the marking of one failed: no record goes to a producer that
        # is being purged.
        self._lock = threading.RLock()
        self._kafka = kafka.Renewing(
            lambda error_cb: kafka.producer(bootstrap, error_cb=error_cb, **config),
            "ingest's Kafka producer (its bodies in flight are answered 503)",
            self._lock,
        )
        self._renewed_at = time.monotonic()
        self._stop = threading.Event()
        self._poller = threading.Thread(target=self._poll, name="ingest-poll", daemon=True)
        self._poller.start()

    @property
    def renewals(self) -> int:
        """Producers replaced since the start."""
        return self._kafka.renewals

    def unusable(self) -> str | None:
        """Why the producer can't send now (it is being replaced, or the thread that
        serves its delivery reports ended: no body would ever be confirmed), or None."""
        why = self._kafka.broken
        if why is not None:
            return f"the Kafka producer is being replaced after {why}"
        if not self._poller.is_alive() and not self._stop.is_set():
            return "the thread that confirms deliveries ended (see the log): restart the ingest"
        return None

    def _poll(self) -> None:
        while not self._stop.is_set():
            self._kafka.poll(0.1)
            if self._kafka.broken is not None:
                self._renew()

    def _renew(self) -> None:
        """Replace the broken producer (poll thread only): a new one takes the bodies
        from now on; the old one's records are purged and their bodies answered
        Undelivered. A new producer that can't be made (a configuration librdkafka
        refuses now) is tried again a `renew_seconds` later; until then the ingest
        stays unusable."""
        wait = self._renewed_at + self.renew_seconds - time.monotonic()
        if wait > 0:
            self._stop.wait(min(wait, 0.1))
            return
        self._renewed_at = time.monotonic()
        try:
            old = self._kafka.renew()
        except KafkaException as exc:
            log.error("a new Kafka producer could not be made (tried again): %s", exc)
            return
        if old is None:
            return
        # Every record of the old producer gets its report now (_PURGE_QUEUE or
        # _PURGE_INFLIGHT): its body is answered 503 rather than waiting for the
        # delivery timeout.
        left = kafka.retire(old, 2.0)
        if left:
            log.warning("%d reports of the replaced producer were not served", left)
        del old  # librdkafka's threads of it end here

    def partitions(self, timeout: float = 5.0) -> int:
        """How many partitions the topic has (blocking); OSError when the broker does
        not say within `timeout` s."""
        try:
            meta = self._kafka.producer.list_topics(self.topic, timeout=timeout)
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
        Undelivered when the producer is being replaced (nothing sent), a record was
        refused or not confirmed within the delivery timeout."""
        if self.in_flight + events > self.queue_events:
            raise Busy(f"{self.in_flight} events already wait for the broker")
        with self._lock:
            body, refused = self._produce(records)
        self.in_flight += events
        try:
            if refused is not None:
                raise refused
            # shielded: the answer gives up on the body, the body's reports still count
            async with asyncio.timeout(self.delivery_timeout):
                await asyncio.shield(body.future)
        except TimeoutError:
            raise Undelivered(
                f"the broker did not confirm within {self.delivery_timeout:g} s"
            ) from None
        finally:
            # The events leave the count once their reports are in, not when the
            # answer gave up on them: until then they hold librdkafka's queue.
            body.future.add_done_callback(lambda f: self._release(f, events))

    def _produce(self, records: Sequence[Record]) -> tuple[_Body, Undelivered | None]:
        """Hand every record to the current producer (under `_lock`): the body in
        flight and None; or Busy / Undelivered raised when nothing was queued; or,
        when librdkafka refused a record after queuing others, the body of those and
        the Undelivered to answer (their events hold the queue until reported)."""
        why = self.unusable()
        if why is not None:
            raise Undelivered(why)
        generation = self._kafka.generation
        body = _Body(asyncio.get_running_loop(), len(records),
                     lambda err: self._kafka.failed(generation, err))  # fmt: skip
        for i, (key, value, headers, partition) in enumerate(records):
            try:
                self._kafka.producer.produce(
                    self.topic, key=key, value=value, headers=headers, partition=partition,
                    on_delivery=body.delivered,
                )  # fmt: skip
            except (BufferError, KafkaException) as exc:
                failed = isinstance(exc, KafkaException) and kafka.producer_failed(exc.args[0])
                if failed:
                    self._kafka.failed(generation, exc.args[0])
                if i == 0:
                    if not failed:
                        raise Busy(f"the producer's queue is full: {exc}") from None
                    raise Undelivered(f"the producer refused the body: {exc}") from None
                # The first i records are queued and will be delivered; the rest never
                # will be. The body is refused (sent again, its events count once), and
                # its events stay in `in_flight` until the queued ones are reported:
                # they hold librdkafka's queue meanwhile.
                why = f"the producer refused the body: {exc}"
                body.cut(i, why)
                return body, Undelivered(why)
        return body, None

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
        self._kafka.flush(timeout)
        self._stop.set()
        self._poller.join(timeout=1)
        if self._poller.is_alive():
            # Still serving reports or making a producer: it ends at its next check of
            # `_stop`, with the producers it still reads (deleted under it, it died
            # with an AttributeError).
            log.warning("the ingest's poll thread did not stop within 1 s")
            return
        del self._kafka  # librdkafka's threads go with it, not at interpreter exit
