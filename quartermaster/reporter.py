"""`UsageReporter`: how an internal service reports usage, in two lines.

    reporter = UsageReporter("kafka:9092")
    reporter.report(usage_event)          # non-blocking; reporter.close() at exit

Events are keyed by user_id and partitioned with Kafka's default murmur2 partitioner,
so all of a person's events land in one partition, in order. The producer is
idempotent (no duplicates from its own retries). With `batch_max > 1` the reporter
groups events per partition into `UsageBatch` records (up to `batch_max` events or
`linger_ms`), which lets one metering worker count far more events a second.

A producer that can send nothing more (`kafka.producer_failed`: a fatal error, or the
broker refusing its producer id or epoch, as after a stall past `message.timeout.ms`)
is replaced by a new one at the next `report` or `flush`: its undelivered records are
purged (each one's error lands in `errors`, as any undelivered record's does) and the
events reported from then on go out on the new one. Without that every later event
failed, for the life of the service that held the reporter.
"""

from __future__ import annotations

import functools
import logging
import threading
import time
from collections import defaultdict
from typing import Any

from confluent_kafka import KafkaError, KafkaException

from quartermaster import kafka
from quartermaster.partitioning import partition_of
from quartermaster.telemetry import inject_headers
from quartermaster.topics import CONTENT_TYPE, PROTOBUF, USAGE_BATCH_TYPE, Topic
from quartermaster.v1.usage_pb2 import UsageBatch, UsageEvent

_BATCH_CONTENT_TYPE = f"{PROTOBUF}; type={USAGE_BATCH_TYPE}".encode()
log = logging.getLogger(__name__)


class UsageReporter:
    def __init__(
        self,
        bootstrap: str,
        *,
        batch_max: int = 1,
        linger_ms: int = 20,
        topic: str = Topic.USAGE.value,
        **producer_config: object,
    ) -> None:
        if batch_max < 1:
            raise ValueError("batch_max: must be at least 1")
        self.topic = topic
        self.batch_max = batch_max
        self.linger = linger_ms / 1000
        self._closed = False
        settings = {"enable.idempotence": True, "linger.ms": linger_ms, **producer_config}
        self._kafka = kafka.Renewing(
            lambda error_cb: kafka.producer(bootstrap, error_cb=error_cb, **settings),
            "usage producer",
        )
        meta = self._kafka.producer.list_topics(topic, timeout=10)
        if meta.topics[topic].error is not None:
            raise KafkaException(meta.topics[topic].error)
        self.partitions = len(meta.topics[topic].partitions)
        self._pending: dict[int, list[UsageEvent]] = defaultdict(list)
        self._oldest: dict[int, float] = {}
        self._lock = threading.Lock()
        self.errors: list[str] = []

    @property
    def renewals(self) -> int:
        """Producers replaced since the start."""
        return self._kafka.renewals

    def _watch(self, generation: int, err: KafkaError) -> None:
        """An error of producer `generation` (its error callback, a delivery report, a
        refused `produce`): marks it for replacement when it can send nothing more."""
        self._kafka.failed(generation, err)

    def _renew(self) -> None:
        """Replace the producer if it failed (under `_lock`): the old one's records are
        purged and their reports served (each error into `errors`) before it goes."""
        old = self._kafka.renew()
        if old is not None:
            kafka.retire(old)

    def _delivered(self, generation: int, err: KafkaError | None, _msg: object) -> None:
        if err is not None:
            self._watch(generation, err)
            self.errors.append(str(err))

    def _produce(self, **record: Any) -> None:
        """Produce `record` on the current producer, replacing it first if it failed,
        and once more on a new one if it refuses the record because it failed."""
        self._renew()
        for attempt in (1, 2):
            generation = self._kafka.generation
            try:
                self._kafka.producer.produce(
                    self.topic, **record, on_delivery=functools.partial(self._delivered, generation)
                )
                return
            except KafkaException as exc:
                if attempt == 2 or not kafka.producer_failed(exc.args[0]):
                    raise
                self._watch(generation, exc.args[0])
                self._renew()

    def report(self, event: UsageEvent) -> None:
        """Queue one event for delivery (validation happens in metering; bad ones go
        to its DLQ with the reason)."""
        if self.batch_max == 1:
            with self._lock:
                self._produce(
                    key=event.user_id.encode(),
                    value=event.SerializeToString(),
                    headers=[(CONTENT_TYPE, PROTOBUF.encode()), *inject_headers()],
                )
            self._kafka.poll(0)
            return
        partition = partition_of(event.user_id, self.partitions)
        with self._lock:
            pending = self._pending[partition]
            if not pending:
                self._oldest[partition] = time.monotonic()
            pending.append(event)
            if len(pending) >= self.batch_max:
                self._send(partition)
            self._send_lingering()
        self._kafka.poll(0)

    def _send(self, partition: int) -> None:
        events = self._pending.pop(partition, [])
        self._oldest.pop(partition, None)
        if events:
            self._produce(
                key=events[0].user_id.encode(),
                value=UsageBatch(events=events).SerializeToString(),
                partition=partition,
                headers=[(CONTENT_TYPE, _BATCH_CONTENT_TYPE), *inject_headers()],
            )

    def _send_lingering(self) -> None:
        now = time.monotonic()
        for partition, since in list(self._oldest.items()):
            if now - since >= self.linger:
                self._send(partition)

    def flush(self, timeout: float = 30.0) -> int:
        """Send everything queued; the number of records still undelivered."""
        with self._lock:
            self._renew()
            for partition in list(self._pending):
                self._send(partition)
        remaining: int = self._kafka.flush(timeout)
        return remaining

    def close(self, timeout: float = 30.0) -> None:
        """Deliver what is queued, then let librdkafka's threads go (a reporter left
        open keeps reconnecting to a broker that went away). Closing twice is fine."""
        if self._closed:
            return
        try:
            if self.flush(timeout):
                raise TimeoutError("usage records still undelivered at close")
        finally:
            self._closed = True
            self._kafka.producer.close()
