"""Counting one partition's records exactly once: the I/O around the pure `Meter`.

For each partition of a batch (the partitions concurrently: each has its own state
and its own fenced commit):

1. plan: decode, validate, skip records below the stored offset (counted before)
   and event_ids counted in the last 24 h, price the rest and sum them;
2. fold: new absolute totals per user and day/week/month, from state loaded from
   Postgres;
3. write totals, rollups, seen ids and the next offset in one Postgres transaction,
   fenced on the offset it started from; inside it, once every write succeeded,
   publish rejects to the DLQ, events of other partitions' users to their home
   partitions of `qm.usage.v1` (see `aggregate`) and the new totals to
   `qm.usage.totals.v1`, and wait until the broker has them; then COMMIT. A crash
   before the COMMIT loses nothing (Kafka still has the records; the stored offset
   did not move) and repeats the publishing on replay: the DLQ may hold a record
   twice; a forwarded event arrives home twice and is counted once (its event_id);
   totals are absolute, so a repeat is harmless. After it, replayed records are
   skipped;
4. the caller (`worker`) only then commits the offsets to the consumer group, which
   only says where a partition's new owner starts reading (Postgres's offset decides
   what is counted).

What fails is told apart (`RECORD_ERRORS`, `OUTAGE`):
- an outage (no connection, Postgres shutting down or out of resources, a broker
  that does not answer) is retried until it ends; the batch is never committed
  half-done;
- a row PostgreSQL refuses (a value it cannot store, a constraint, an index row too
  big) is the fault of a record that validation let through: the batch is counted
  again one record at a time and the record refused goes to the DLQ with
  PostgreSQL's reason, so it never stops the partition;
- anything else is a bug or a broken installation (a missing table): it propagates,
  and the worker ends the process for its supervisor to restart (`worker`).
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Protocol

import asyncpg
from asyncpg.exceptions import _base as asyncpg_base

from quartermaster.db import OUTAGES, outage_text
from quartermaster.kafka import OutRecord
from quartermaster.topics import CONTENT_TYPE, PROTOBUF, SOURCE_HEADER, USAGE_BATCH_TYPE, Topic
from quartermaster.v1.usage_pb2 import UsageBatch
from quartermaster.wire import timestamp
from services.metering.aggregate import Meter, Plan, Record
from services.metering.bounds import overflowing
from services.metering.burn_watch import BurnWatch
from services.metering.dead_letter import dead_letter, short_reason
from services.metering.mapping import total_value, updated_at_part
from services.metering.metrics import MeteringMetrics
from services.metering.source_watch import SourceWatch
from services.metering.state import PartitionState, Rollup, RollupKey, Total, TotalKey
from services.metering.stores.counting import CountingStore
from services.metering.stores.rollups import RollupStore

log = logging.getLogger("qm.metering")
_PROTOBUF_HEADERS: list[tuple[str, str | bytes | None]] = [(CONTENT_TYPE, PROTOBUF.encode())]
# Settled request ids carried by one UsageTotal record (each id at most 256 characters
# of ASCII or 512 bytes): a user with more in one batch gets the same total several
# times, each with a share, so no record nears the broker's size limit.
SETTLED_PER_RECORD = 256
# Events per forwarded UsageBatch record: at most ~5 KB each after validation (ids and
# attributes are bounded), so a record stays well under the broker's 1 MB default.
FORWARD_PER_RECORD = 100
_BATCH_CONTENT_TYPE = f"{PROTOBUF}; type={USAGE_BATCH_TYPE}".encode()

# PostgreSQL refused a value of this batch (SQLSTATE classes 22 data exception, 23
# integrity constraint, 54 program limit: "index row size exceeds btree maximum"), or
# asyncpg could not encode an argument (its client-side DataError, an InterfaceError
# that is also a ValueError: an int past int64). A record caused it, not an outage.
RECORD_ERRORS: tuple[type[Exception], ...] = (
    asyncpg.exceptions.DataError,
    asyncpg.exceptions.IntegrityConstraintViolationError,
    asyncpg.exceptions.ProgramLimitExceededError,
    asyncpg_base.DataError,  # not exported under its own name (asyncpg 0.32, pinned)
)
# What is retried until it ends: PostgreSQL out of reach (quartermaster.db.OUTAGES),
# Publisher.send's undelivered records (an OSError), and two the worker can retry
# where a gRPC call could not: any InterfaceError (a connection a cancelled batch left
# mid-operation is released, and the batch runs again on a fresh one) and a
# serialization failure or deadlock of the fenced write.
OUTAGE: tuple[type[Exception], ...] = (
    *OUTAGES,
    asyncpg.InterfaceError,
    asyncpg.exceptions.TransactionRollbackError,
)


class TopicVerifier(Protocol):
    """Whether the broker's topics are still the ones the stored offsets count
    (`topic_guard.TopicGuard`): `verify` returns, or raises TopicRefused (counting must
    stop: it propagates and ends the worker) or OSError (an outage: retried)."""

    async def verify(self) -> None: ...


class RecordSink(Protocol):
    """Where DLQ records and totals go (`quartermaster.publisher.Publisher`): `send` returns
    once the broker has every record and raises OSError otherwise."""

    async def send(self, records: list[OutRecord]) -> None: ...


@dataclass
class Processor:
    """Owns the per-partition state and runs steps 1-4 for one partition's records."""

    meter: Meter
    counting: CountingStore
    rollups: RollupStore
    sink: RecordSink
    retry_seconds: float
    burn: BurnWatch | None = None
    metrics: MeteringMetrics = field(default_factory=MeteringMetrics)
    guard: TopicVerifier | None = None
    sources: SourceWatch | None = None
    states: dict[int, PartitionState] = field(default_factory=dict, init=False)
    # partition → totals published inside a transaction whose COMMIT then failed: the
    # topic may hold values Postgres never took (see `_attempt`). The next commit of
    # the partition publishes their committed values again.
    unsure: dict[int, set[TotalKey]] = field(default_factory=dict, init=False)

    def forget(self, partitions: set[int]) -> None:
        """Drop state of partitions this worker no longer owns (and the burn-rate state
        of their users: another worker counts them meanwhile)."""
        for p in partitions:
            self.states.pop(p, None)
        if self.burn is not None:
            self.burn.forget(partitions)

    async def prune(self, dedupe_window: timedelta) -> int:
        """Drop expired ids and totals from memory and expired ids from Postgres; how
        many ids Postgres forgot."""
        for state in self.states.values():
            self.meter.forget_expired(state)
        return await self.counting.prune_seen(datetime.now(UTC) - dedupe_window)

    async def _state(self, partition: int) -> PartitionState:
        state = self.states.get(partition)
        if state is None:
            since = self.meter.clock() - self.meter.dedupe_window
            state = await self.counting.load_partition(partition, since)
            if self.guard is not None:
                # Before any record is counted or skipped on the strength of the
                # stored offset: is it still this topic's offset?
                await self.guard.verify()
            self.states[partition] = state
            log.info(
                "partition %d: counting from offset %d (%d recent event ids)",
                partition, state.next_offset, len(state.seen),
            )  # fmt: skip
        return state

    async def process(self, partition: int, records: list[Record]) -> None:
        """Count `records` of `partition` exactly once: outages are retried until they
        end; a record PostgreSQL refuses goes to the DLQ (see the module docstring)."""
        await self._split(partition, sorted(records, key=lambda r: r.offset), {})

    async def _split(self, partition: int, records: list[Record], refused: dict[int, str]) -> None:
        """Count `records` (in offset order); when PostgreSQL refuses a row, count each
        half alone, down to the one record it refuses, which becomes a reject with
        PostgreSQL's reason (a few attempts per refused record, not one per record)."""
        try:
            await self._until_done(partition, records, refused)
            return
        except RECORD_ERRORS as exc:
            if len(records) > 1:
                log.warning(
                    "partition %d: PostgreSQL refused a row of offsets %d-%d (%s); "
                    "counting each half alone to find the record",
                    partition, records[0].offset, records[-1].offset, short_reason(str(exc)),
                )  # fmt: skip
                half = len(records) // 2
                await self._split(partition, records[:half], refused)
                await self._split(partition, records[half:], refused)
                return
            if records[0].offset in refused:  # refused as a reject too: not the record
                raise
            reason = f"PostgreSQL refused to store it: {type(exc).__name__}: {exc}"
        refused[records[0].offset] = reason
        await self._until_done(partition, records, refused)

    async def _until_done(
        self, partition: int, records: list[Record], refused: dict[int, str]
    ) -> None:
        while True:
            try:
                if await self._attempt(partition, records, refused):
                    return
            except RECORD_ERRORS:
                self.states.pop(partition, None)  # reload: we don't know what was written
                raise
            except OUTAGE as exc:
                log.warning(
                    "partition %d: %s; retrying in %.1fs",
                    partition, outage_text(exc), self.retry_seconds,
                )  # fmt: skip
                self.states.pop(partition, None)  # reload: we don't know what was written
            await asyncio.sleep(self.retry_seconds)

    async def _attempt(
        self, partition: int, records: list[Record], refused: dict[int, str]
    ) -> bool:
        fresh = partition not in self.states
        state = await self._state(partition)
        plan = self.meter.plan(state, records, refused)
        if plan.replayed and not fresh and self.guard is not None:
            # Records below the stored offset: a redelivery after a crash, or a topic
            # recreated under this worker (a broker that lost its data) whose new
            # records would be skipped as counted. Tell them apart before skipping.
            await self.guard.verify()
        await self._load(state, plan)
        changed, rollups = self.meter.fold(state, plan), self.meter.fold_rollups(state, plan)
        users = overflowing(changed, rollups)
        if users:
            # Rare: their sums would pass MAX_SUM. Plan again admitting their events one
            # by one, so the events that would overflow are rejects and the rest count.
            plan = self.meter.plan(state, records, refused, users)
            changed, rollups = self.meter.fold(state, plan), self.meter.fold_rollups(state, plan)
            if overflowing(changed, rollups):
                raise AssertionError(f"sums past the bound after a guarded plan: {users}")

        committed = await self._commit(partition, state, plan, changed, rollups)
        if not committed:
            log.warning("partition %d was advanced by another worker; replanning", partition)
            self.states.pop(partition, None)
            return False
        self._committed(state, plan, changed, rollups)
        if self.burn is not None:
            await self.burn.watch(plan)
        if self.sources is not None:
            await self.sources.watch(plan)
        if plan.duplicates:
            log.info("partition %d: %d duplicate event(s) not counted", partition, plan.duplicates)
        return True

    async def _commit(
        self,
        partition: int,
        state: PartitionState,
        plan: Plan,
        changed: dict[TotalKey, Total],
        rollups: dict[RollupKey, Rollup],
    ) -> bool:
        """The fenced commit, publishing inside it once the writes succeeded (the
        offset row locked: no other worker commits or publishes this partition
        meanwhile, and a worker whose fence failed publishes nothing).

        Should the transaction fail after the publishing began (the COMMIT refused, the
        connection lost, Postgres ending the session of a worker frozen mid-publish
        while another took the partition over), the topic may hold totals Postgres
        never took, possibly below what the other worker committed: they are marked
        unsure, and the next commit of the partition (the retry that follows, however
        it is planned) publishes their committed values again under the lock, so the
        newest record of each key is a committed value. A process that dies in between
        leaves them until that user's next event."""
        again = self.unsure.get(partition, set()) - changed.keys()
        if again:
            state.totals.update(await self.counting.load_totals(again - state.totals.keys()))
        republish = {k: state.totals[k] for k in again if k in state.totals}
        began = False

        async def publish() -> None:
            nonlocal began
            began = True
            await self._publish(partition, plan, {**republish, **changed})

        try:
            committed = await self.counting.commit(
                partition, state.next_offset, plan.next_offset, changed, plan.new_seen,
                rollups, publish,
            )  # fmt: skip
        except BaseException:
            if began:
                self.unsure.setdefault(partition, set()).update(changed.keys() | again)
            raise
        if committed:
            self.unsure.pop(partition, None)
        return committed

    async def _load(self, state: PartitionState, plan: Plan) -> None:
        """Load into `state` the stored totals and rollups `plan` touches."""
        missing = plan.keys() - state.totals.keys()
        state.totals.update(await self.counting.load_totals(missing))
        missing_rollups = state.rollups_to_load(plan.rollup_keys())
        state.rollups.update(await self.rollups.load(missing_rollups))

    def _committed(
        self,
        state: PartitionState,
        plan: Plan,
        changed: dict[TotalKey, Total],
        rollups: dict[RollupKey, Rollup],
    ) -> None:
        self.meter.apply(state, plan, changed, rollups)
        self.metrics.counted(plan)

    async def _publish(self, partition: int, plan: Plan, changed: dict[TotalKey, Total]) -> None:
        out: list[OutRecord] = [dead_letter(r, partition) for r in plan.rejects]
        _log_rejects(partition, plan)
        out.extend(forward_records(plan))
        now = updated_at_part(timestamp(datetime.now(UTC)))
        # Every record of a user's totals in this batch names the requests it now
        # includes, so policy settles their reservations whichever period it reads.
        settled = plan.settled
        for key, total in changed.items():
            topic_key = f"user:{key[0]}:{key[2]}".encode()
            ids = settled.get(key[0]) or []
            for i in range(0, max(len(ids), 1), SETTLED_PER_RECORD):
                chunk = ids[i : i + SETTLED_PER_RECORD]
                value = total_value(key, total, now, chunk)
                out.append((Topic.USAGE_TOTALS.value, topic_key, value, _PROTOBUF_HEADERS))
        if out:
            await self.sink.send(out)


# DLQ records of a batch logged one by one; the rest in one line with their count. A
# flood of bad records (20,000 empty ones from one source) logged a WARNING each, in
# the worker's only thread, while everyone's good events waited behind them; the DLQ
# holds every record with its reason, the log needs only a sample.
REJECTS_LOGGED = 5


def _log_rejects(partition: int, plan: Plan) -> None:
    for r in plan.rejects[:REJECTS_LOGGED]:
        log.warning(
            "usage record %s[%d]@%d to DLQ: %s",
            Topic.USAGE, partition, r.offset, short_reason(r.reason),
        )  # fmt: skip
    more = plan.rejects[REJECTS_LOGGED:]
    if more:
        sources = sorted({r.source for r in more})
        log.warning(
            "%d more usage record(s) of %s[%d] (offsets %d-%d, sources %s) to DLQ; "
            "their reasons are in its qm-error headers",
            len(more), Topic.USAGE, partition, more[0].offset, more[-1].offset,
            ", ".join(repr(s) for s in sources[:5]) + (" ..." if len(sources) > 5 else ""),
        )  # fmt: skip


def forward_records(plan: Plan) -> list[OutRecord]:
    """The plan's forwarded events as UsageBatch records, each sent to its home
    partition of `qm.usage.v1` (explicitly: the partition metering counts the user
    on, whatever the producer's partitioner), keyed by the first event's user and
    carrying the source it came from."""
    out: list[OutRecord] = []
    for (home, source), events in plan.forwards.items():
        headers: list[tuple[str, str | bytes | None]] = [
            (CONTENT_TYPE, _BATCH_CONTENT_TYPE), (SOURCE_HEADER, source.encode())
        ]  # fmt: skip
        for i in range(0, len(events), FORWARD_PER_RECORD):
            chunk = events[i : i + FORWARD_PER_RECORD]
            value = UsageBatch(events=chunk).SerializeToString()
            out.append((Topic.USAGE.value, chunk[0].user_id.encode(), value, headers, home))
    return out
