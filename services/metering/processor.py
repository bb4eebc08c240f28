"""Counting one partition's records exactly once: the I/O around the pure `Meter`.

For each partition of a batch (the partitions concurrently: each has its own state
and its own fenced commit):

1. plan: decode, validate, skip records below the stored offset (counted before)
   and event_ids counted in the last 24 h, price the rest and sum them;
2. fold: new absolute totals per user and day/week/month, from state loaded from
   Postgres;
3. publish rejects to the DLQ and the new totals to `qm.usage.totals.v1`, and wait
   until the broker has them. A crash after this repeats them on replay: the DLQ may
   hold a record twice; totals are absolute, so a repeat is harmless;
4. commit totals, seen ids and the next offset in one Postgres transaction, fenced
   on the offset it started from. A crash before this loses nothing (Kafka still
   has the records; nothing was acked); after it, replayed records are skipped;
5. the caller (`worker`) only then acks the records, so faust's own offset commits
   never run ahead of Postgres.

Any I/O failure is retried until it succeeds; the batch is never acked half-done.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Protocol

import asyncpg

from quartermaster.kafka import OutRecord
from quartermaster.topics import (
    CONTENT_TYPE,
    ERROR_HEADER,
    ORIGIN_OFFSET_HEADER,
    ORIGIN_PARTITION_HEADER,
    ORIGIN_TOPIC_HEADER,
    PROTOBUF,
    Topic,
)
from quartermaster.wire import timestamp
from services.metering.aggregate import Meter, Plan, Record
from services.metering.burn_watch import BurnWatch
from services.metering.dlq_limit import DlqLimit
from services.metering.mapping import total_message
from services.metering.metrics import MeteringMetrics
from services.metering.state import PartitionState, Total, TotalKey
from services.metering.stores.counting import CountingStore
from services.metering.stores.rollups import RollupStore

log = logging.getLogger("qm.metering")
_PROTOBUF_HEADERS: list[tuple[str, str | bytes | None]] = [(CONTENT_TYPE, PROTOBUF.encode())]


class RecordSink(Protocol):
    """Where DLQ records and totals go (`quartermaster.kafka.Publisher`): `send` returns
    once the broker has every record and raises OSError otherwise."""

    async def send(self, records: list[OutRecord]) -> None: ...


@dataclass
class Processor:
    """Owns the per-partition state and runs steps 1-4 for one partition's records."""

    meter: Meter
    counting: CountingStore
    rollups: RollupStore
    sink: RecordSink
    dlq_limit: DlqLimit
    retry_seconds: float
    burn: BurnWatch | None = None
    metrics: MeteringMetrics = field(default_factory=MeteringMetrics)
    states: dict[int, PartitionState] = field(default_factory=dict, init=False)
    paused: bool = field(default=False, init=False)

    def forget(self, partitions: set[int]) -> None:
        """Drop state of partitions this worker no longer owns."""
        for p in partitions:
            self.states.pop(p, None)

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
            self.states[partition] = state
            log.info(
                "partition %d: counting from offset %d (%d recent event ids)",
                partition, state.next_offset, len(state.seen),
            )  # fmt: skip
        return state

    async def count(self, partition: int, records: list[Record], pause_seconds: float) -> None:
        """process(), and while the DLQ limit holds the worker paused (most recent
        records invalid), again every `pause_seconds`, until an operator steps in."""
        await self.process(partition, records)
        while self.paused:
            await asyncio.sleep(pause_seconds)
            await self.process(partition, records)

    async def process(self, partition: int, records: list[Record]) -> None:
        """Count `records` of `partition` exactly once; retries I/O until it succeeds."""
        while True:
            try:
                if await self._attempt(partition, records):
                    return
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
                log.warning(
                    "partition %d: %s; retrying in %.1fs", partition, exc, self.retry_seconds
                )
                self.states.pop(partition, None)  # reload: we don't know what was written
            await asyncio.sleep(self.retry_seconds)

    def _pause_for(self, plan: Plan) -> bool:
        """True (and paused) when this batch would trip the DLQ limit."""
        if not plan.invalid_records or not self.dlq_limit.tripped(
            plan.valid_records, plan.invalid_records
        ):
            self.paused = self.metrics.paused = False
            return False
        if not self.paused:
            log.critical(
                "PAUSED: most recent usage records are invalid (%d of %d in this batch); "
                "not routing them to the DLQ. Fix the producer, then restart metering. "
                "First reason: %s",
                plan.invalid_records,
                plan.valid_records + plan.invalid_records,
                plan.rejects[0].reason if plan.rejects else "?",
            )
        self.paused = self.metrics.paused = True
        return True

    async def _attempt(self, partition: int, records: list[Record]) -> bool:
        state = await self._state(partition)
        plan = self.meter.plan(state, records)
        if self._pause_for(plan):
            return False
        missing = plan.keys() - state.totals.keys()
        state.totals.update(await self.counting.load_totals(missing))
        missing_rollups = state.rollups_to_load(plan.rollup_keys())
        state.rollups.update(await self.rollups.load(missing_rollups))
        changed = self.meter.fold(state, plan)
        rollups = self.meter.fold_rollups(state, plan)
        await self._publish(partition, plan, changed)
        committed = await self.counting.commit(
            partition, state.next_offset, plan.next_offset, changed, plan.new_seen, rollups
        )
        if not committed:
            log.warning("partition %d was advanced by another worker; replanning", partition)
            self.states.pop(partition, None)
            return False
        self.meter.apply(state, plan, changed, rollups)
        self.metrics.counted(plan)
        if self.burn is not None:
            await self.burn.watch(plan)
        self.dlq_limit.record(plan.valid_records, plan.invalid_records)
        if plan.duplicates:
            log.info("partition %d: %d duplicate event(s) not counted", partition, plan.duplicates)
        return True

    async def _publish(self, partition: int, plan: Plan, changed: dict[TotalKey, Total]) -> None:
        out: list[OutRecord] = []
        for r in plan.rejects:
            log.warning(
                "usage record %s[%d]@%d to DLQ: %s", Topic.USAGE, partition, r.offset, r.reason
            )
            headers: list[tuple[str, str | bytes | None]] = [
                (ERROR_HEADER, r.reason.encode()[:4000]),
                (ORIGIN_TOPIC_HEADER, Topic.USAGE.value.encode()),
                (ORIGIN_PARTITION_HEADER, str(partition).encode()),
                (ORIGIN_OFFSET_HEADER, str(r.offset).encode()),
            ]
            out.append((Topic.USAGE_DLQ.value, r.key, r.value, headers))
        now = timestamp(datetime.now(UTC))
        # Every record of a user's totals in this batch names the requests it now
        # includes, so policy settles their reservations whichever period it reads.
        settled = plan.settled
        for key, total in changed.items():
            value = total_message(key, total, now, settled.get(key[0])).SerializeToString()
            topic_key = f"user:{key[0]}:{key[2]}".encode()
            out.append((Topic.USAGE_TOTALS.value, topic_key, value, _PROTOBUF_HEADERS))
        if out:
            await self.sink.send(out)
