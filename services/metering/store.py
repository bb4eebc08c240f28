"""metering's Postgres adapter: offsets, totals and seen event ids.

`commit()` writes one partition's batch in one transaction, guarded by the offset
it started from (a fence): if another worker advanced the partition meanwhile, it
writes nothing and returns False, and the caller reloads and tries again.
"""

from __future__ import annotations

from datetime import UTC, datetime

import asyncpg

from services.metering.aggregate import (
    GRAINS,
    ROLLUP_COUNTERS,
    PartitionState,
    Rollup,
    RollupKey,
    Total,
    TotalKey,
)

# Rollups are absolute: a conflicting row takes the new values whole.
ROLLUP_UPSERT_SET = ", ".join(f"{c} = EXCLUDED.{c}" for c in (*ROLLUP_COUNTERS, "updated_at"))
_COUNTER_LIST = ", ".join(ROLLUP_COUNTERS)

# grain → (table, bucket column)
_ROLLUP_TABLES = {
    "hour": ("metering.rollups_hourly", "hour"),
}


class Store:
    def __init__(self, pool: asyncpg.Pool, consumer: str, topic: str) -> None:
        self.pool = pool
        self.consumer = consumer
        self.topic = topic

    async def load_partition(self, partition: int, seen_since: datetime) -> PartitionState:
        async with self.pool.acquire() as conn:
            offset = await conn.fetchval(
                "SELECT next_offset FROM metering.offsets"
                " WHERE consumer = $1 AND topic = $2 AND partition = $3",
                self.consumer,
                self.topic,
                partition,
            )
            rows = await conn.fetch(
                "SELECT id_hash, seen_at FROM metering.seen_events"
                " WHERE partition = $1 AND seen_at >= $2",
                partition,
                seen_since,
            )
            horizon = {}
            for grain, (table, column) in _ROLLUP_TABLES.items():
                newest = await conn.fetchval(
                    f"SELECT max({column}) FROM {table} WHERE partition = $1", partition
                )
                if newest is not None:
                    horizon[grain] = int(newest.timestamp())
        return PartitionState(
            partition=partition,
            next_offset=offset or 0,
            seen={r["id_hash"]: r["seen_at"].timestamp() for r in rows},
            rollup_horizon=horizon,
        )

    async def load_totals(self, keys: set[TotalKey]) -> dict[TotalKey, Total]:
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
        return {
            (r["subject_id"], r["period_kind"], r["period_key"]): Total(
                r["workspace_id"], r["period_start"], r["period_end"],
                r["used_micros"], r["event_count"], r["fallback_count"],
            )
            for r in rows
        }  # fmt: skip

    async def load_rollups(self, keys: set[RollupKey]) -> dict[RollupKey, Rollup]:
        out: dict[RollupKey, Rollup] = {}
        for grain in GRAINS:
            some = [k for k in keys if k[0] == grain]
            if not some:
                continue
            _, starts, users, products, models, centers = (list(x) for x in zip(*some, strict=True))
            table, column = _ROLLUP_TABLES[grain]
            rows = await self.pool.fetch(
                f"""
                SELECT r.* FROM {table} r
                JOIN unnest($1::float8[], $2::text[], $3::text[], $4::text[], $5::text[])
                    AS k(t, user_id, product, model, cost_center)
                  ON r.{column} = to_timestamp(k.t) AND r.user_id = k.user_id
                 AND r.product = k.product AND r.model = k.model
                 AND r.cost_center = k.cost_center
                """,
                [float(t) for t in starts], users, products, models, centers,
            )  # fmt: skip
            for r in rows:
                key = (grain, int(r[column].timestamp()), r["user_id"], r["product"],
                       r["model"], r["cost_center"])  # fmt: skip
                out[key] = Rollup(r["workspace_id"], *(r[c] for c in ROLLUP_COUNTERS))
        return out

    async def commit(
        self,
        partition: int,
        expected_offset: int,
        next_offset: int,
        totals: dict[TotalKey, Total],
        seen: dict[int, float],
        rollups: dict[RollupKey, Rollup],
    ) -> bool:
        try:
            await self._commit(partition, expected_offset, next_offset, totals, seen, rollups)
        except _Fenced:
            return False
        return True

    async def _commit(
        self,
        partition: int,
        expected_offset: int,
        next_offset: int,
        totals: dict[TotalKey, Total],
        seen: dict[int, float],
        rollups: dict[RollupKey, Rollup],
    ) -> None:
        now = datetime.now(UTC)
        async with self.pool.acquire() as conn, conn.transaction():
            if expected_offset == 0:
                fenced = await conn.fetchval(
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
                fenced = await conn.fetchval(
                    """
                    UPDATE metering.offsets SET next_offset = $5, updated_at = now()
                    WHERE consumer = $1 AND topic = $2 AND partition = $3 AND next_offset = $4
                    RETURNING 1
                    """,
                    self.consumer, self.topic, partition, expected_offset, next_offset,
                )  # fmt: skip
            if fenced is None:
                # Raising rolls the transaction back; nothing of this batch is written.
                raise _Fenced
            if totals:
                keys = list(totals)
                vals = [totals[k] for k in keys]
                await conn.execute(
                    """
                    INSERT INTO metering.totals AS t (subject_kind, subject_id, period_kind,
                        period_key, workspace_id, partition, period_start, period_end,
                        used_micros, event_count, fallback_count, updated_at)
                    SELECT 'user', u, k, p, w, $11, s, e, m, c, f, $10
                    FROM unnest($1::text[], $2::text[], $3::text[], $4::text[],
                                $5::timestamptz[], $6::timestamptz[], $7::bigint[],
                                $8::bigint[], $9::bigint[]) AS x(u, k, p, w, s, e, m, c, f)
                    ON CONFLICT (subject_kind, subject_id, period_kind, period_key) DO UPDATE
                        SET used_micros = EXCLUDED.used_micros,
                            event_count = EXCLUDED.event_count,
                            fallback_count = EXCLUDED.fallback_count,
                            updated_at = EXCLUDED.updated_at
                    """,
                    [k[0] for k in keys], [k[1] for k in keys], [k[2] for k in keys],
                    [v.workspace_id for v in vals], [v.period_start for v in vals],
                    [v.period_end for v in vals], [v.used_micros for v in vals],
                    [v.event_count for v in vals], [v.fallback_count for v in vals],
                    now, partition,
                )  # fmt: skip
            for grain in GRAINS:
                rk = [k for k in rollups if k[0] == grain]
                if not rk:
                    continue
                rv = [rollups[k] for k in rk]
                table, column = _ROLLUP_TABLES[grain]
                n = len(ROLLUP_COUNTERS)
                await conn.execute(
                    f"""
                    INSERT INTO {table} AS r ({column}, user_id, product, model,
                        cost_center, workspace_id, partition, updated_at, {_COUNTER_LIST})
                    SELECT to_timestamp(x.h), x.u, x.p, x.m, x.c, x.w, $1, $2, {_COUNTER_LIST}
                    FROM unnest($3::float8[], $4::text[], $5::text[], $6::text[], $7::text[],
                                $8::text[], {", ".join(f"${9 + i}::bigint[]" for i in range(n))})
                         AS x(h, u, p, m, c, w, {_COUNTER_LIST})
                    ON CONFLICT ({column}, user_id, product, model, cost_center) DO UPDATE
                    SET {ROLLUP_UPSERT_SET}
                    """,
                    partition, now,
                    [float(k[1]) for k in rk], [k[2] for k in rk], [k[3] for k in rk],
                    [k[4] for k in rk], [k[5] for k in rk], [v.workspace_id for v in rv],
                    *([getattr(v, c) for v in rv] for c in ROLLUP_COUNTERS),
                )  # fmt: skip
            if seen:
                await conn.execute(
                    """
                    INSERT INTO metering.seen_events (partition, id_hash, seen_at)
                    SELECT $1, h, to_timestamp(t) FROM unnest($2::bigint[], $3::float8[]) AS x(h, t)
                    ON CONFLICT (partition, id_hash) DO UPDATE SET seen_at = EXCLUDED.seen_at
                    """,
                    partition,
                    list(seen),
                    list(seen.values()),
                )

    async def prune_seen(self, before: datetime) -> int:
        status = await self.pool.execute(
            "DELETE FROM metering.seen_events WHERE seen_at < $1", before
        )
        return int(status.split()[-1])


class _Fenced(Exception):
    """Another worker advanced this partition: this batch must be planned again."""
