"""`UsageReporter`: how an internal service reports usage, in two lines.

    reporter = UsageReporter("kafka:9092")
    reporter.report(usage_event)          # non-blocking; reporter.close() at exit

Events are keyed by user_id and partitioned with Kafka's default murmur2 partitioner,
so all of a person's events land in one partition, in order. The producer is
idempotent (no duplicates from its own retries). With `batch_max > 1` the reporter
groups events per partition into `UsageBatch` records (up to `batch_max` events or
`linger_ms`), which lets one metering worker count far more events a second.
"""

from __future__ import annotations

import threading
import time
from collections import defaultdict

from confluent_kafka import KafkaException

from quartermaster import kafka
from quartermaster.partitioning import partition_of
from quartermaster.telemetry import inject_headers
from quartermaster.topics import CONTENT_TYPE, PROTOBUF, USAGE_BATCH_TYPE, Topic
from quartermaster.v1.usage_pb2 import UsageBatch, UsageEvent

_BATCH_CONTENT_TYPE = f"{PROTOBUF}; type={USAGE_BATCH_TYPE}".encode()


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
        self._producer = kafka.producer(
            bootstrap,
            **{"enable.idempotence": True, "linger.ms": linger_ms, **producer_config},
        )
        meta = self._producer.list_topics(topic, timeout=10)
        if meta.topics[topic].error is not None:
            raise KafkaException(meta.topics[topic].error)
        self.partitions = len(meta.topics[topic].partitions)
        self._pending: dict[int, list[UsageEvent]] = defaultdict(list)
        self._oldest: dict[int, float] = {}
        self._lock = threading.Lock()
        self.errors: list[str] = []

    def _delivered(self, err: object, _msg: object) -> None:
        if err is not None:
            self.errors.append(str(err))

    def report(self, event: UsageEvent) -> None:
        """Queue one event for delivery (validation happens in metering; bad ones go
        to its DLQ with the reason)."""
        if self.batch_max == 1:
            self._producer.produce(
                self.topic,
                key=event.user_id.encode(),
                value=event.SerializeToString(),
                headers=[(CONTENT_TYPE, PROTOBUF.encode()), *inject_headers()],
                on_delivery=self._delivered,
            )
            self._producer.poll(0)
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
        self._producer.poll(0)

    def _send(self, partition: int) -> None:
        events = self._pending.pop(partition, [])
        self._oldest.pop(partition, None)
        if events:
            self._producer.produce(
                self.topic,
                key=events[0].user_id.encode(),
                value=UsageBatch(events=events).SerializeToString(),
                partition=partition,
                headers=[(CONTENT_TYPE, _BATCH_CONTENT_TYPE), *inject_headers()],
                on_delivery=self._delivered,
            )

    def _send_lingering(self) -> None:
        now = time.monotonic()
        for partition, since in list(self._oldest.items()):
            if now - since >= self.linger:
                self._send(partition)

    def flush(self, timeout: float = 30.0) -> int:
        """Send everything queued; the number of records still undelivered."""
        with self._lock:
            for partition in list(self._pending):
                self._send(partition)
        remaining: int = self._producer.flush(timeout)
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
            self._producer.close()
