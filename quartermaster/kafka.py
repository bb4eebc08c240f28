"""Kafka adapters shared by the services (confluent-kafka)."""

from __future__ import annotations

import logging
import time

from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import AdminClient
from confluent_kafka.cimpl import NewTopic

from quartermaster.topics import SPECS

log = logging.getLogger(__name__)


def ensure_topics(bootstrap: str, partitions: int, timeout: float = 30.0) -> None:
    """Create every topic in `quartermaster.topics.SPECS` that does not exist yet.

    Topics are created explicitly so their partition counts are ours, not whatever the
    broker auto-creates. An existing topic is left as it is.
    """
    admin = AdminClient({"bootstrap.servers": bootstrap})
    deadline = time.monotonic() + timeout
    new = [
        NewTopic(
            spec.topic.value, num_partitions=partitions, replication_factor=1, config=spec.config
        )
        for spec in SPECS
    ]
    while True:
        try:
            futures = admin.create_topics(new, request_timeout=10)
            for name, fut in futures.items():
                try:
                    fut.result()
                    log.info("created topic %s (%d partitions)", name, partitions)
                except KafkaException as exc:
                    if exc.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:
                        raise
            return
        except KafkaException:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)
