"""What the broker holds of metering's topics (confluent-kafka), for `topic_guard`.

Blocking calls (librdkafka's own threads do the I/O); callers run them in an
executor. A broker that does not answer within `timeout` is an outage: OSError,
which the counting path retries.
"""

from __future__ import annotations

import uuid

from confluent_kafka import Consumer, KafkaError, KafkaException, TopicPartition
from confluent_kafka.admin import AdminClient
from confluent_kafka.admin._config import ConfigResource  # not re-exported for mypy
from confluent_kafka.admin._resource import ResourceType

from quartermaster import kafka
from services.metering.topic_check import LogRange, TopicMark


class BrokerView:
    """Marks, log ranges and cleanup policies of topics on the broker at `bootstrap`."""

    def __init__(self, bootstrap: str, timeout: float = 10.0, probe_seconds: float = 3.0) -> None:
        self.bootstrap = bootstrap
        self.timeout = timeout
        # How long a fetch waits for a record that may not exist (tansu answers a fetch
        # past the end with nothing rather than an error, so this is spent when it
        # doesn't, that is when metering is about to refuse anyway).
        self.probe_seconds = probe_seconds
        self._admin = AdminClient(kafka.client_config(bootstrap, log_level=3))

    def mark(self, topic: str) -> TopicMark | None:
        """The topic's id and partition count; None when it does not exist."""
        found = kafka.topic_identity(self._admin, topic, self.timeout)
        return None if found is None else TopicMark(*found)

    def cleanup_policy(self, topic: str) -> str | None:
        """The topic's cleanup.policy (e.g. "compact"); None when it does not exist."""
        resource = ConfigResource(ResourceType.TOPIC, topic)
        futures = self._admin.describe_configs([resource], request_timeout=self.timeout)
        try:
            configs = next(iter(futures.values())).result()
        except KafkaException as exc:
            if exc.args[0].code() == KafkaError.UNKNOWN_TOPIC_OR_PART:
                return None
            raise OSError(f"describing {topic}'s configuration: {exc.args[0].str()}") from exc
        entry = configs.get("cleanup.policy")
        return "delete" if entry is None or entry.value is None else str(entry.value)

    def logs(self, topic: str, partitions: int, stored: dict[int, int]) -> dict[int, LogRange]:
        """Each partition's first offset and end. Where the reported end is below the
        stored offset, the record before the stored offset is fetched to confirm it:
        the local broker (tansu) reports the first offset of the last batch + 1 as the
        end, so a stored offset inside the last batch would look past it."""
        consumer = self._consumer()
        try:
            out = {}
            for p in range(partitions):
                try:
                    start, end = consumer.get_watermark_offsets(
                        TopicPartition(topic, p), timeout=self.timeout
                    )
                except KafkaException as exc:
                    raise OSError(f"{topic}[{p}] offsets: {exc.args[0].str()}") from exc
                wanted = stored.get(p, 0)
                if wanted > end and self._has(consumer, topic, p, wanted - 1):
                    end = wanted
                out[p] = LogRange(start, end)
            return out
        finally:
            consumer.close()

    def _consumer(self) -> Consumer:
        return Consumer(
            kafka.client_config(
                self.bootstrap,
                **{
                    "group.id": f"qm-metering-topic-check-{uuid.uuid4().hex[:8]}",
                    "enable.auto.commit": False,
                    # An offset past the end is an error, not a silent jump elsewhere.
                    "auto.offset.reset": "error",
                    "log_level": 3,
                },
            )
        )

    def _has(self, consumer: Consumer, topic: str, partition: int, offset: int) -> bool:
        """Whether the partition holds a record at `offset` (a fetch from there)."""
        consumer.assign([TopicPartition(topic, partition, offset)])
        try:
            msg = consumer.poll(self.probe_seconds)
        finally:
            consumer.unassign()
        if msg is None:
            return False  # nothing came within the wait: nothing at or past `offset`
        if msg.error() is not None:
            return False  # offset out of range: the log ends before it
        return (msg.offset() or 0) >= offset
