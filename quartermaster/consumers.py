"""The two kinds of Kafka consumer the services use (confluent-kafka), written once.

`ReplayConsumer`: every replica reads a whole topic from its beginning (manual
assignment, no consumer group, no commits). For a compacted topic of absolute values
(usage totals) or of idempotent facts (approved requests): the newest record per key
is the truth and replaying it any number of times is harmless, so there are no joins,
leaves or rebalances to wait for.

`GroupConsumer`: a consumer group that shares a topic's partitions between replicas,
auto-commit off. An offset is committed only after the handler's side effect
returned, so a crash between the two re-delivers the record (at least once: the
handler must be idempotent). A handler that raises does not stop the others: the
record and the error go to `on_error` (e.g. a dead-letter queue), then its offset is
committed like any other.

`take_all` hands work from a consumer thread to the event loop a burst at a time.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import uuid
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from confluent_kafka import (
    OFFSET_BEGINNING,
    Consumer,
    KafkaError,
    KafkaException,
    Message,
    TopicPartition,
)

from quartermaster import kafka

log = logging.getLogger(__name__)
T = TypeVar("T")


async def take_all(queue: asyncio.Queue[T]) -> list[T]:
    """Wait for one item, then take every item already queued behind it (work that
    arrives from another thread in bursts is done once per burst)."""
    out = [await queue.get()]
    while not queue.empty():
        out.append(queue.get_nowait())
    return out


class ReplayConsumer:
    """Reads every partition of `topic` from its beginning, forever.

    `poll` returns data records only; partition ends and broker errors are handled
    here (errors are logged and polling goes on: the client reconnects by itself).
    `caught_up` is set once every partition has been read to its end at least once.
    Not thread-safe: one thread polls at a time (a poll may run in a worker thread).
    """

    def __init__(self, bootstrap: str, topic: str, name: str, fetch_wait_ms: int = 10) -> None:
        self.topic = topic
        self._name = name
        self._consumer = Consumer(
            kafka.client_config(
                bootstrap,
                # Required by the client even without group membership; never committed.
                **{
                    "group.id": f"qm-{name}-{uuid.uuid4()}",
                    "enable.auto.commit": False,
                    # A topic missing (the broker lost it) stays missing: auto-created,
                    # it would get the broker's defaults (partitions, no compaction) and
                    # be read as an empty topic that holds everything.
                    "allow.auto.create.topics": False,
                    "enable.partition.eof": True,
                    "fetch.wait.max.ms": fetch_wait_ms,
                    "fetch.error.backoff.ms": 50,
                },
            )
        )
        self._pending: set[int] = set()
        self._partitions: list[int] = []
        # Per partition: the offset after the last record read, the end offset seen
        # when assigned, and the highest end offset seen since (see `recreated`).
        self._next: dict[int, int] = {}
        self._start: dict[int, tuple[int, int]] = {}
        self._ends: dict[int, int] = {}
        self.caught_up = threading.Event()

    def assign(self, timeout: float = 30.0) -> list[int]:
        """Assign every partition from its first offset; the partitions. Raises
        RuntimeError when the topic has none (KafkaException when the broker is away)."""
        # Every topic's metadata, not this one's: a request naming a missing topic lets
        # some brokers create it whatever the client asks.
        meta = self._consumer.list_topics(timeout=timeout)
        if self.topic not in meta.topics:
            raise RuntimeError(f"topic {self.topic} does not exist (create the topics)")
        partitions = sorted(meta.topics[self.topic].partitions)
        if not partitions:
            raise RuntimeError(f"topic {self.topic} has no partitions")
        for p in partitions:
            low, high = self._consumer.get_watermark_offsets(
                TopicPartition(self.topic, p), timeout=timeout, cached=False
            )
            self._start[p] = (low, high)
            self._ends[p] = high
        self._consumer.assign([TopicPartition(self.topic, p, OFFSET_BEGINNING) for p in partitions])
        self._pending = set(partitions)
        self._partitions = partitions
        return partitions

    def progress(self) -> tuple[int, int]:
        """(records read, records the partitions held when assigned by their end
        offsets). Only a guide: a compacted topic has gaps, and the local broker
        reports end offsets short (docs/development.md)."""
        read = sum(self._next.get(p, low) - low for p, (low, _) in self._start.items())
        return read, sum(high - low for low, high in self._start.values())

    def recreated(self, timeout: float = 5.0) -> str | None:
        """What shows that the topic is no longer the one read (deleted, recreated
        with another partition count, or an end offset gone back below one seen or
        below what was read), as a sentence; None when nothing does. Real Kafka never
        moves an end offset back. Raises KafkaException when the broker can't be
        asked now (nothing can be told then)."""
        # All topics' metadata (a few small ones): naming a missing topic could create it.
        topic = self._consumer.list_topics(timeout=timeout).topics.get(self.topic)
        if topic is None or (
            topic.error is not None and topic.error.code() == KafkaError.UNKNOWN_TOPIC_OR_PART
        ):
            return f"topic {self.topic} is gone from the broker"
        if topic.error is not None:
            raise KafkaException(topic.error)
        partitions = sorted(topic.partitions)
        if partitions != self._partitions:
            return (
                f"topic {self.topic} has {len(partitions)} partitions now, "
                f"{len(self._partitions)} when they were read: it was recreated"
            )
        for p in partitions:
            tp = TopicPartition(self.topic, p)
            _, high = self._consumer.get_watermark_offsets(tp, timeout=timeout, cached=False)
            # The end offset the last fetch reported (the true one even where the
            # broker's ListOffsets answer is short): -1001 before any fetch.
            _, fetched = self._consumer.get_watermark_offsets(tp, cached=True)
            read = self._next.get(p, 0)
            if high < self._ends[p] or 0 <= fetched < read:
                return (
                    f"{self.topic} partition {p} ends at offset {max(high, fetched)} now, "
                    f"below the {max(self._ends[p], read)} already seen: it was recreated "
                    "or lost records"
                )
            self._ends[p] = high
        return None

    def poll(self, timeout: float) -> Message | None:
        """The next data record, or None when there was none within `timeout` seconds."""
        msg = self._consumer.poll(timeout)
        if msg is None:
            return None
        err = msg.error()
        if err is None:
            self._next[msg.partition() or 0] = (msg.offset() or 0) + 1
            return msg
        if err.code() == KafkaError._PARTITION_EOF:
            self._pending.discard(msg.partition() or 0)
            if not self._pending and not self.caught_up.is_set():
                log.info("%s caught up on %s", self._name, self.topic)
                self.caught_up.set()
        else:
            log.warning("%s consumer: %s", self._name, err)
        return None

    def close(self) -> None:
        self._consumer.close()

    def run_thread(self, handle: Callable[[Message], None], stop: threading.Event) -> None:
        """Poll and hand every record to `handle` until `stop` is set; then close.
        Meant as a thread's target: an exception from `handle` or the broker ends the
        thread (logged) and the consumer is closed."""
        try:
            self.assign()
            while not stop.is_set():
                msg = self.poll(0.05)
                if msg is not None:
                    handle(msg)
        except Exception:
            log.exception("%s consumer stopped", self._name)
            raise
        finally:
            self.close()


# What a GroupConsumer does with a record whose handler raised: e.g. send it to a DLQ.
OnError = Callable[[Message, Exception], Awaitable[None]]


class GroupConsumer:
    """A consumer group member that commits each offset after its record's handler
    returned (see the module docstring). `config` adds to or overrides the client
    settings (e.g. a short `session.timeout.ms` in tests).

    Failure: when `on_error` itself raises, the offset is not committed and `run`
    ends with that exception; the record comes again to whoever gets the partition.
    """

    def __init__(
        self,
        bootstrap: str,
        topics: list[str],
        group_id: str,
        handle: Callable[[Message], Awaitable[None]],
        on_error: OnError,
        **config: Any,
    ) -> None:
        self._consumer = Consumer(
            kafka.client_config(
                bootstrap,
                **{
                    "group.id": group_id,
                    "enable.auto.commit": False,
                    "auto.offset.reset": "earliest",
                    "allow.auto.create.topics": False,  # see ReplayConsumer
                    **config,
                },
            )
        )
        self._consumer.subscribe(topics)
        self._handle = handle
        self._on_error = on_error
        self.stopping = False
        self.handled = 0
        self.failed = 0

    async def run(self, poll_seconds: float = 0.2) -> None:
        """Until `stopping` is set; then closes the consumer (never while a poll runs)."""
        try:
            while not self.stopping:
                msg: Message | None = await asyncio.to_thread(self._consumer.poll, poll_seconds)
                if msg is None:
                    continue
                err = msg.error()
                if err is not None:
                    if err.code() != KafkaError._PARTITION_EOF:
                        log.warning("group consumer: %s", err)
                    continue
                await self._one(msg)
        finally:
            self._consumer.close()

    async def _one(self, msg: Message) -> None:
        try:
            await self._handle(msg)
            self.handled += 1
        except Exception as exc:
            self.failed += 1
            await self._on_error(msg, exc)
        # Synchronous: once this returns the broker has the offset, so a crash from
        # here on does not hand the record to anyone again.
        await asyncio.to_thread(self._consumer.commit, message=msg, asynchronous=False)
