"""The usage topic's consumer: a member of metering's consumer group through librdkafka
(confluent-kafka), rebalancing cooperatively (`cooperative-sticky`).

Why not faust's consumer (aiokafka), which metering had (issue 12 items 2 and 7;
figures in docs/benchmarks.md):
- it has only Kafka's eager protocol: each join or leave revoked every partition of
  every worker until the group had rejoined, so every worker stopped counting. With
  the cooperative protocol a rebalance revokes only the partitions that move; the
  others are counted on throughout;
- its per-record path is Python (aiokafka's fetcher building each record, faust's
  message, tracking and ack), a share of the worker's CPU comparable to counting
  one-event records; librdkafka fetches and parses in C.

Fetching overlaps counting with no thread of ours doing it: librdkafka fetches in its
own threads into a bounded local queue (`QUEUE_BYTES`), and `take` drains it between
batches. Every call into the consumer runs on one thread of this class's, so the
rebalance callbacks (which librdkafka runs inside `consume`) run there too, while the
counting loop waits for `take`: a partition is never revoked with a batch of it in
hand, and nothing the callbacks change is touched by two threads at once.

Offsets: PostgreSQL holds each partition's next offset, committed with its totals and
fenced (`processor`): that is what makes counting exactly once. The group's committed
offsets only say where a new owner starts reading: `commit` sends what a batch
counted once it is in PostgreSQL, and a revoked partition's is sent as it moves, both
without waiting. A commit lost (a crash, a broker away) costs only re-reading: records
below the stored offset are skipped as counted.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from confluent_kafka import Consumer, KafkaError, KafkaException, TopicPartition

from quartermaster import kafka
from quartermaster.telemetry import shared_headers
from quartermaster.topics import Topic
from services.metering.aggregate import Record
from services.metering.pacing import batch_prefix
from services.metering.settings import MeteringSettings

log = logging.getLogger("qm.metering")
# Most bytes of fetched records librdkafka keeps queued for the worker (its
# `queued.max.messages.kbytes`, one queue for all partitions of a group member): a
# batch's worth at the default QM_METERING_BATCH_MAX_BYTES, in C, while a batch is
# counted. Its default (64 MiB) would hold ~900,000 one-event records.
QUEUE_BYTES = 16 * 1024 * 1024
# Longest one wait for records lasts before the consumer thread looks at whether the
# worker is stopping (and returns what a rebalance changed).
WAIT_SECONDS = 0.5
# How often a consumer error of one kind (a broker away, a topic missing) is logged.
ERROR_LOG_SECONDS = 60.0
# Longest `close` waits for the consumer to leave the group. librdkafka's close waits
# for the revoked partitions' offset commit and any commit in flight, with no bound of
# its own: a broker that holds its connections but does not answer (paused, a frozen
# VM) held a stopping worker for good.
CLOSE_SECONDS = 10.0


@dataclass
class Taken:
    """What one `take` returns: `records` (in offset order per partition), their
    values' bytes, whether a bound cut the batch (records were left waiting), and the
    partitions revoked (or lost) and assigned since the last take."""

    records: list[Record] = field(default_factory=list)
    size: int = 0
    cut: bool = False
    revoked: set[int] = field(default_factory=set)
    assigned: set[int] = field(default_factory=set)


def config(settings: MeteringSettings) -> dict[str, Any]:
    """The librdkafka configuration of the worker's consumer, with the process's
    security (`kafka.client_config`)."""
    return kafka.client_config(settings.kafka_bootstrap, **options(settings))


def options(settings: MeteringSettings) -> dict[str, Any]:
    """The worker's consumer's own librdkafka options (times in milliseconds, as
    librdkafka takes them)."""
    session_ms = int(settings.session_timeout * 1000)
    return {
        "group.id": settings.app_id,
        "client.id": settings.app_id,
        "partition.assignment.strategy": "cooperative-sticky",
        "session.timeout.ms": session_ms,
        # A worker learns of a rebalance at its next heartbeat: at most a second.
        "heartbeat.interval.ms": min(1000, session_ms // 3),
        # Also the rebalance timeout: how long the group waits for a member to
        # rejoin. One counting its batch (a worker that is behind: up to
        # QM_METERING_BATCH_SECONDS, the first batch after a start as long as
        # 16 MiB takes) is waited for, not evicted to rejoin and rebalance again.
        "max.poll.interval.ms": max(300_000, 2 * session_ms),
        # Offsets are PostgreSQL's; the group's only say where to start reading.
        "enable.auto.commit": False,
        "enable.auto.offset.store": False,
        "auto.offset.reset": "earliest",
        # tansu holds each fetch this long (QM_METERING_FETCH_MAX_WAIT_MS).
        "fetch.wait.max.ms": settings.fetch_max_wait_ms,
        # A missing topic stays missing: metering's topic check names it.
        "allow.auto.create.topics": False,
        "queued.max.messages.kbytes": QUEUE_BYTES // 1024,
        # Records librdkafka tries to keep queued per partition: a whole batch's
        # worth, so a worker of few partitions fills a batch from them (QUEUE_BYTES
        # bounds the total). At 20,000 a partition, a worker of 3 took one-event
        # records in batches of ~55,000 whatever QM_METERING_BATCH_MAX said, each
        # writing its users' totals again (docs/benchmarks.md).
        "queued.min.messages": settings.batch_max,
        # librdkafka's own log: critical lines only. What goes wrong otherwise (a
        # broker away, a topic missing) reaches `error_cb` or comes as an error
        # record, and is logged once a minute per kind, not each retry.
        "logger": logging.getLogger("qm.metering.kafka"),
        "log_level": 2,
    }


class UsageConsumer:
    """The worker's member of the consumer group `settings.app_id` on `qm.usage.v1`.
    `take` returns batches; `commit` records what a batch counted; `close` leaves the
    group. Methods are called from the worker's event loop; the consumer itself is
    only touched on this object's thread (see the module docstring)."""

    def __init__(self, settings: MeteringSettings) -> None:
        self._thread = ThreadPoolExecutor(1, thread_name_prefix="usage-consumer")
        # kafka.client_config in the call itself: tests/platform/test_kafka_security.py
        # checks every client is made so.
        self._consumer = Consumer(
            kafka.client_config(settings.kafka_bootstrap, **options(settings),
                                error_cb=self._log_error, on_commit=self._committed)
        )  # fmt: skip
        self._topic = Topic.USAGE.value
        self._group = settings.app_id
        self._held: list[Record] = []  # consumed, not yet taken (beyond a batch's bounds)
        self._held_bytes = 0
        self._revoked: set[int] = set()
        self._assigned: set[int] = set()
        self._counted: dict[int, int] = {}  # partition → next offset counted
        self._moves = 0  # revocations so far; partition → the count at its last
        self._revoked_at: dict[int, int] = {}
        self._owned: set[int] = set()  # the partitions assigned to this member now
        self._ends: dict[int, int] = {}  # partition → high watermark at the last take
        self._logged: dict[str, float] = {}  # error kind → when last logged
        self._closing = False
        self._subscribed = False

    def end_offset(self, partition: int) -> int | None:
        """`partition`'s end offset as last fetched, or None (not assigned here)."""
        return self._ends.get(partition)

    async def take(self, most: int, within: float, most_bytes: int) -> Taken:
        """The next batch: at most `most` records and `most_bytes` of values (the first
        whatever its size), at once when that much is fetched, else once `within`
        seconds passed since the first arrived; waits for the first. Returns early,
        with no records, when partitions were revoked or assigned meanwhile or the
        worker is stopping (`stop_taking`)."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._thread, self._take, most, within, most_bytes)

    async def commit(self, positions: Mapping[int, int]) -> None:
        """Record that the records below `positions` (partition → next offset) are
        counted (in PostgreSQL): sent to the group asynchronously (see the module
        docstring for what a lost one costs)."""
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(self._thread, self._commit, dict(positions))

    def stop_taking(self) -> None:
        """Make a `take` waiting for records return (with what it holds) within
        WAIT_SECONDS, and every later one at once: the worker is stopping."""
        self._closing = True

    async def close(self, within: float = CLOSE_SECONDS) -> bool:
        """Leave the group (its partitions move to the other workers at once rather
        than after the session timeout) and release the consumer; True once done. False
        when it took longer than `within` seconds (the broker does not answer): the
        consumer's thread is then still inside librdkafka, and the process can only
        end hard (`os._exit`: Python's exit would wait on that thread for good, and
        releasing the consumer under it is not safe); the partitions move after the
        session timeout, and what was counted is in PostgreSQL."""
        self._closing = True
        loop = asyncio.get_running_loop()
        closing = loop.run_in_executor(self._thread, self._close)
        try:
            await asyncio.wait_for(asyncio.shield(closing), within)
        except TimeoutError:
            log.warning(
                "the usage consumer did not leave its group within %.0f s (the broker does "
                "not answer); its partitions move to other workers after the session timeout",
                within,
            )
            return False
        finally:
            self._thread.shutdown(wait=False)
        return True

    # -- on the consumer's thread --

    def _take(self, most: int, within: float, most_bytes: int) -> Taken:
        if not self._subscribed:
            self._consumer.subscribe(
                [self._topic], on_assign=self._on_assign, on_revoke=self._on_revoke,
                on_lost=self._on_lost,
            )  # fmt: skip
            self._subscribed = True
        deadline: float | None = None
        while not self._closing:
            if len(self._held) >= most or self._held_bytes >= most_bytes:
                break
            if self._held:
                deadline = deadline or time.monotonic() + within
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                # librdkafka's batch call returns once that many or the time is up:
                # company for the records held, for at most `within`.
                self._consume(most - len(self._held), left)
            else:
                if self._revoked or self._assigned:
                    break  # tell the counting loop before waiting on
                self._consume(1, WAIT_SECONDS)  # as soon as one arrives
        return self._cut(most, most_bytes)

    def _consume(self, n: int, timeout: float) -> None:
        before = self._moves
        got = self._consumer.consume(max(1, min(n, 100_000)), timeout)
        if not got:
            return
        # A rebalance callback may run inside this very call, after records of the
        # partitions it revoked were fetched into the result: those are not ours to
        # count any more (the next owner reads them from the committed offset). One
        # assigned back within the call keeps them: its records from the committed
        # offset may repeat them, which counting skips (offsets, event ids).
        gone = {p for p, at in self._revoked_at.items() if at > before} - self._owned
        held, size = self._held, 0
        for m in got:
            err = m.error()
            if err is not None:
                self._log_error(err)
                continue
            if gone and m.partition() in gone:
                continue
            value = m.value()
            size += len(value) if value else 0
            held.append(Record(m.partition() or 0, m.offset() or 0, m.key(), value,
                               shared_headers(m.headers())))  # fmt: skip
        self._held_bytes += size
        self._note_ends()

    def _note_ends(self) -> None:
        """The high watermarks of the assigned partitions, as last fetched (cached by
        librdkafka: no request), for the lag metric."""
        for tp in self._consumer.assignment():
            try:
                _low, high = self._consumer.get_watermark_offsets(tp, cached=True)
            except KafkaException:
                continue
            if high >= 0:
                self._ends[tp.partition] = high

    def _cut(self, most: int, most_bytes: int) -> Taken:
        out = Taken(revoked=self._revoked, assigned=self._assigned)
        self._revoked, self._assigned = set(), set()
        held = self._held
        if not held:
            return out
        n, size = batch_prefix(held, most, most_bytes)
        out.records, self._held = held[:n], held[n:]
        out.size, out.cut = size, bool(self._held)
        self._held_bytes -= size
        return out

    def _commit(self, positions: dict[int, int]) -> None:
        self._counted.update(positions)
        offsets = [TopicPartition(self._topic, p, o) for p, o in positions.items()]
        if not offsets:
            return
        try:
            self._consumer.commit(offsets=offsets, asynchronous=True)
        except KafkaException as exc:  # no coordinator now: the next batch's commit
            self._log_error(exc.args[0])

    def _gone(self, partitions: list[TopicPartition]) -> dict[int, int | None]:
        """Forget `partitions` (revoked or lost): their held records, their lag, what
        was counted of them. Returns partition → the next offset counted (None: none
        counted by this member)."""
        gone = {tp.partition for tp in partitions if tp.topic == self._topic}
        if gone:
            self._moves += 1
            self._owned -= gone
            for p in gone:
                self._revoked_at[p] = self._moves
                self._ends.pop(p, None)
            kept = [r for r in self._held if r.partition not in gone]
            self._held = kept
            self._held_bytes = sum(len(r.value) if r.value else 0 for r in kept)
            self._revoked |= gone
            self._assigned -= gone
        return {p: self._counted.pop(p, None) for p in gone}

    def _on_assign(self, _consumer: Consumer, partitions: list[TopicPartition]) -> None:
        new = {tp.partition for tp in partitions if tp.topic == self._topic}
        if new:
            log.info("partitions assigned: %s", sorted(new))
        self._assigned |= new
        self._owned |= new

    def _on_revoke(self, _consumer: Consumer, partitions: list[TopicPartition]) -> None:
        counted = self._gone(partitions)
        if not counted:
            return
        log.info("partitions revoked: %s", sorted(counted))
        # Where the next owner starts reading: what this worker counted. Sent without
        # waiting: a broker that does not answer must not hold the rebalance (or a
        # stop) up, and a commit lost only makes the next owner re-read and skip.
        offsets = [TopicPartition(self._topic, p, o)
                   for p, o in counted.items() if o is not None]  # fmt: skip
        if offsets:
            try:
                self._consumer.commit(offsets=offsets, asynchronous=True)
            except KafkaException as exc:
                log.info("offsets of revoked partitions not committed: %s", exc.args[0])

    def _on_lost(self, _consumer: Consumer, partitions: list[TopicPartition]) -> None:
        # Another member owns them already (this one missed the session timeout):
        # nothing to commit; PostgreSQL's fence refuses any late commit of ours.
        gone = self._gone(partitions)
        if gone:
            log.warning("partitions lost (the session timed out): %s", sorted(gone))

    def _close(self) -> None:
        try:
            self._consumer.close()
        except (KafkaException, RuntimeError) as exc:  # already closed, or no broker
            log.info("consumer closed with: %s", exc)

    def _committed(self, err: KafkaError | None, _partitions: list[TopicPartition]) -> None:
        if err is not None:
            self._log_error(err)

    def _log_error(self, err: KafkaError) -> None:
        """A consumer error, logged once per kind per ERROR_LOG_SECONDS (a broker away
        reports the same every few seconds for as long as it is away)."""
        kind = err.name() if isinstance(err, KafkaError) else str(err)
        now = time.monotonic()
        if now - self._logged.get(kind, -ERROR_LOG_SECONDS) < ERROR_LOG_SECONDS:
            return
        self._logged[kind] = now
        if isinstance(err, KafkaError) and err.code() == KafkaError.INCONSISTENT_GROUP_PROTOCOL:
            # Not an outage to wait out: nothing is counted until an operator acts.
            log.error(
                "usage consumer cannot join group %r: a member of it rebalances with another "
                "protocol than cooperative-sticky (a worker of an older release, or another "
                "client with this group id); nothing is counted here until it leaves: stop "
                "it (%s)",
                self._group, err,
            )  # fmt: skip
            return
        log.warning("usage consumer: %s", err)
