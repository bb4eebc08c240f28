"""Usage totals held in memory, fed from `qm.usage.totals.v1`.

Every replica reads the whole topic from the beginning (manual assignment, no
consumer group, no commits): the topic is compacted and carries absolute totals, so
the newest record per key is the truth and replaying it any number of times is
harmless. A background thread polls; readers on the event loop only do dict
look-ups, which are atomic under the GIL.
"""

from __future__ import annotations

import logging
import threading
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, TopicPartition

from quartermaster.topics import Topic
from quartermaster.v1 import usage_pb2

log = logging.getLogger("qm.policy.totals")


@dataclass(frozen=True)
class UserTotal:
    used_micros: int
    period_start: datetime
    period_end: datetime
    updated_at: datetime


class TotalsView:
    def __init__(self, bootstrap: str) -> None:
        self._bootstrap = bootstrap
        # (user_id, period_key) → newest total
        self._totals: dict[tuple[str, str], UserTotal] = {}
        self._stop = threading.Event()
        self._caught_up = threading.Event()
        self._thread = threading.Thread(target=self._run, name="totals-consumer", daemon=True)
        self.records = 0
        self.rejected = 0

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def wait_caught_up(self, timeout: float) -> bool:
        """True once every partition has been read to its end at least once."""
        return self._caught_up.wait(timeout)

    @property
    def caught_up(self) -> bool:
        return self._caught_up.is_set()

    def used(self, user_id: str, period_key: str) -> int:
        total = self._totals.get((user_id, period_key))
        return total.used_micros if total is not None else 0

    def apply(self, value: bytes | None) -> None:
        """Fold one record's value into the view (newest `updated_at` wins)."""
        msg = usage_pb2.UsageTotal()
        try:
            msg.ParseFromString(value or b"")
        except Exception:
            self.rejected += 1
            log.warning("ignoring a totals record that is not a UsageTotal")
            return
        if msg.subject_kind != usage_pb2.SUBJECT_KIND_USER or not msg.subject_id:
            return
        key = (msg.subject_id, msg.period_key)
        new = UserTotal(
            used_micros=msg.used_micros,
            period_start=msg.period_start.ToDatetime(tzinfo=UTC),
            period_end=msg.period_end.ToDatetime(tzinfo=UTC),
            updated_at=msg.updated_at.ToDatetime(tzinfo=UTC),
        )
        old = self._totals.get(key)
        if old is None or new.updated_at >= old.updated_at:
            self._totals[key] = new
        self.records += 1

    def _run(self) -> None:
        consumer = Consumer(
            {
                "bootstrap.servers": self._bootstrap,
                # Required by the client even without group membership; never committed.
                "group.id": f"qm-policy-view-{uuid.uuid4()}",
                "enable.auto.commit": False,
                "enable.partition.eof": True,
                "fetch.wait.max.ms": 10,
                "fetch.error.backoff.ms": 50,
            }
        )
        try:
            topic = Topic.USAGE_TOTALS.value
            meta = consumer.list_topics(topic, timeout=30)
            partitions = sorted(meta.topics[topic].partitions)
            if not partitions:
                raise RuntimeError(f"topic {topic} has no partitions")
            consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in partitions])
            pending = set(partitions)
            while not self._stop.is_set():
                msg = consumer.poll(0.05)
                if msg is None:
                    continue
                err = msg.error()
                if err is not None:
                    if err.code() == KafkaError._PARTITION_EOF:
                        pending.discard(msg.partition())
                        if not pending and not self._caught_up.is_set():
                            log.info("totals view caught up: %d records", self.records)
                            self._caught_up.set()
                    else:
                        log.warning("totals consumer: %s", err)
                    continue
                self.apply(msg.value())
        except Exception:
            log.exception("totals consumer stopped")
            raise
        finally:
            consumer.close()
