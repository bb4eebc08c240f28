"""metering's counting state in Postgres: offsets (the fence), totals and seen event ids.

`commit()` writes one partition's batch in one transaction, guarded by the offset
it started from (a fence): if another worker advanced the partition meanwhile, it
writes nothing and returns False, and the caller reloads and tries again. The batch's
15-minute rollups, and the days they changed (`RollupStore.mark_days`), are written in
the same transaction, so totals, rollups, seen ids and the offset are all of one batch
or none of it. A total's money is stored exact: `used_micros` (rounded half up once,
what a reader of it alone sees) and `picos_remainder` (`stores.rollups.split_picos`). The caller's
`publish` runs inside it, after every write succeeded and before COMMIT: a row
PostgreSQL refuses, or a fence lost, is known before anything is published.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import UTC, datetime

import asyncpg
import numpy as np

from quartermaster.money import PICOS_PER_MICRO
from services.metering.dedupe import HOUR, SeenIds
from services.metering.state import PartitionState, Rollup, RollupKey, Total, TotalKey
from services.metering.stores.rollups import RollupStore, split_picos
from services.metering.stores.staging import SCHEMA, stage, staging_ddl


def total_of(row: asyncpg.Record) -> Total:
    """A `metering.totals` row as a Total: its exact picos are the rounded-down micros
    column and the remainder column together."""
    return Total(
        row["workspace_id"], row["period_start"], row["period_end"],
        row["used_micros"] * PICOS_PER_MICRO + row["picos_remainder"],
        row["event_count"], row["fallback_count"],
    )  # fmt: skip


MAX_MODELS_REMEMBERED = 10_000


class CountingStore:
    """One consumer's (`consumer`, `topic`) offsets, totals and seen ids."""

    def __init__(self, pool: asyncpg.Pool, consumer: str, topic: str, rollups: RollupStore) -> None:
        self.pool = pool
        self.consumer = consumer
        self.topic = topic
        self._rollups = rollups
        # Model ids already in metering.model_ids (bounded: random ids must not grow it;
        # past the bound a batch writes its ids again, a no-op upsert).
        self._models_written: set[str] = set()

    async def load_partition(self, partition: int, seen_since: datetime) -> PartitionState:
        """A partition's state to count from: its next offset (0 when new), the event ids
        seen since `seen_since`, and its rollup horizon. Totals load on demand."""
        async with self.pool.acquire() as conn:
            offset = await conn.fetchval(
                "SELECT next_offset FROM metering.offsets"
                " WHERE consumer = $1 AND topic = $2 AND partition = $3",
                self.consumer,
                self.topic,
                partition,
            )
            # From the start of the hour holding `seen_since`, as SeenIds keeps them:
            # whole hours, one array each.
            since_hour = int(seen_since.timestamp()) // HOUR
            rows = await conn.fetch(
                "SELECT floor(extract(epoch FROM seen_at) / 3600)::bigint AS hour,"
                " string_agg(hashes, ''::bytea) AS hashes FROM metering.seen_ids"
                " WHERE partition = $1 AND seen_at >= to_timestamp($2) GROUP BY 1",
                partition,
                since_hour * HOUR,
            )
            horizon = await self._rollups.horizon(conn, partition)
        seen = SeenIds()
        for r in rows:
            seen.add_array(
                np.frombuffer(r["hashes"], dtype=">i8").astype(np.int64), r["hour"] * HOUR
            )
        return PartitionState(
            partition=partition, next_offset=offset or 0, seen=seen, rollup_horizon=horizon
        )

    async def load_totals(self, keys: set[TotalKey]) -> dict[TotalKey, Total]:
        """The stored totals of `keys` (absent keys have none yet)."""
        if not keys:
            return {}
        users, kinds, periods = (list(x) for x in zip(*keys, strict=True))
        rows = await self.pool.fetch(
            """
            SELECT t.* FROM metering.totals t
            JOIN unnest($1::text[], $2::text[], $3::text[]) AS k(subject_id, kind, key)
              ON t.subject_kind = 'user' AND t.subject_id = k.subject_id
             AND t.period_kind = k.kind AND t.period_key = k.key
            """,
            users,
            kinds,
            periods,
        )
        return {(r["subject_id"], r["period_kind"], r["period_key"]): total_of(r) for r in rows}

    async def commit(
        self,
        partition: int,
        expected_offset: int,
        next_offset: int,
        totals: dict[TotalKey, Total],
        seen: dict[int, float],
        rollups: dict[RollupKey, Rollup],
        publish: Callable[[], Awaitable[None]] | None = None,
    ) -> bool:
        """Write a batch's absolute totals, rollups and seen ids and move the offset from
        `expected_offset` to `next_offset`, in one transaction; False (nothing written,
        nothing published) when the stored offset is not `expected_offset` (another
        worker moved it). `publish` is awaited after the writes, before COMMIT: the
        fenced offset row stays locked meanwhile, so no other worker can count the
        partition while this one publishes. asyncpg errors and `publish`'s propagate;
        the transaction is then rolled back (a publish that went out before a failed
        COMMIT is repeated on replay: totals are absolute, so that is harmless)."""
        now = datetime.now(UTC)
        try:
            async with self.pool.acquire() as conn, conn.transaction():
                if not await self._advance(conn, partition, expected_offset, next_offset):
                    # Raising rolls the transaction back; nothing of this batch is written.
                    raise _Fenced
                await _write_totals(conn, partition, totals, now)
                await self._rollups.write(conn, partition, rollups, now)
                models = {k[4] for k in rollups} - self._models_written
                if models:  # sorted: concurrent workers lock new ids in one order
                    await conn.execute(
                        "INSERT INTO metering.model_ids (model) SELECT unnest($1::text[])"
                        " ON CONFLICT DO NOTHING",
                        sorted(models),
                    )
                days = {t.period_start for k, t in totals.items() if k[1] == "day"}
                await self._rollups.mark_days(conn, partition, days)
                await _write_seen(conn, partition, seen)
                if publish is not None:
                    await publish()
        except _Fenced:
            return False
        if len(self._models_written) < MAX_MODELS_REMEMBERED:  # only once committed
            self._models_written |= models
        return True

    async def _advance(
        self, conn: asyncpg.Connection, partition: int, expected: int, next_offset: int
    ) -> bool:
        """Move the partition's offset if it still is `expected` (the fence)."""
        if expected == 0:
            moved = await conn.fetchval(
                """
                INSERT INTO metering.offsets (consumer, topic, partition, next_offset)
                VALUES ($1, $2, $3, $4)
                ON CONFLICT (consumer, topic, partition) DO UPDATE
                    SET next_offset = EXCLUDED.next_offset, updated_at = now()
                    WHERE metering.offsets.next_offset = 0
                RETURNING 1
                """,
                self.consumer, self.topic, partition, next_offset,
            )  # fmt: skip
        else:
            moved = await conn.fetchval(
                """
                UPDATE metering.offsets SET next_offset = $5, updated_at = now()
                WHERE consumer = $1 AND topic = $2 AND partition = $3 AND next_offset = $4
                RETURNING 1
                """,
                self.consumer, self.topic, partition, expected, next_offset,
            )  # fmt: skip
        return moved is not None

    async def prune_seen(self, before: datetime) -> int:
        """Forget event ids seen before `before`; how many were forgotten."""
        forgotten = await self.pool.fetchval(
            "WITH gone AS (DELETE FROM metering.seen_ids WHERE seen_at < $1"
            " RETURNING length(hashes) / 8 AS n) SELECT coalesce(sum(n), 0)::bigint FROM gone",
            before,
        )
        return int(forgotten)


# The columns of a batch's totals as `_write_totals` stages them (`stores.staging`).
_TOTALS_STAGED = "metering_totals_batch"
_TOTALS_DDL = staging_ddl(
    _TOTALS_STAGED,
    [("u", "text"), ("k", "text"), ("p", "text"), ("w", "text"), ("s", "bigint"),
     ("e", "bigint"), ("m", "bigint"), ("c", "bigint"), ("f", "bigint"), ("r", "bigint")],
)  # fmt: skip


async def _write_totals(
    conn: asyncpg.Connection, partition: int, totals: dict[TotalKey, Total], now: datetime
) -> None:
    if not totals:
        return
    # Period bounds go as epoch seconds (periods begin at midnight in a zone: whole
    # seconds), as the rollups' buckets do. Few distinct bounds: each converted once.
    seconds: dict[datetime, int] = {}
    rows = []
    for (user, kind, period_key), v in totals.items():
        start, end = v.period_start, v.period_end
        s = seconds.get(start)
        if s is None:
            s = seconds[start] = int(start.timestamp())
        e = seconds.get(end)
        if e is None:
            e = seconds[end] = int(end.timestamp())
        micros, remainder = split_picos(v.used_picos)
        rows.append((user, kind, period_key, v.workspace_id, s, e, micros,
                     v.event_count, v.fallback_count, remainder))  # fmt: skip
    await stage(conn, _TOTALS_STAGED, _TOTALS_DDL, rows)
    await conn.execute(
        f"""
        INSERT INTO metering.totals AS t (subject_kind, subject_id, period_kind,
            period_key, workspace_id, partition, period_start, period_end,
            used_micros, picos_remainder, event_count, fallback_count, updated_at)
        SELECT 'user', u, k, p, w, $2, to_timestamp(s), to_timestamp(e), m, r, c, f, $1
        FROM {SCHEMA}.{_TOTALS_STAGED}
        ON CONFLICT (subject_kind, subject_id, period_kind, period_key) DO UPDATE
            SET used_micros = EXCLUDED.used_micros,
                picos_remainder = EXCLUDED.picos_remainder,
                event_count = EXCLUDED.event_count,
                fallback_count = EXCLUDED.fallback_count,
                updated_at = EXCLUDED.updated_at
        """,
        now, partition,
    )  # fmt: skip


async def _write_seen(conn: asyncpg.Connection, partition: int, seen: dict[int, float]) -> None:
    """One row for the batch: its ids' hashes packed, 8 big-endian bytes each, at the
    batch's time (every id of a plan is first counted at the same instant)."""
    if not seen:
        return
    packed = np.fromiter(seen, dtype=np.int64, count=len(seen)).astype(">i8").tobytes()
    await conn.execute(
        "INSERT INTO metering.seen_ids (partition, seen_at, hashes)"
        " VALUES ($1, to_timestamp($2), $3)",
        partition,
        max(seen.values()),
        packed,
    )


class _Fenced(Exception):
    """Another worker advanced this partition: this batch must be planned again."""
