"""metering's Postgres adapter: offsets, totals and seen event ids.

`commit()` writes one partition's batch in one transaction, guarded by the offset
it started from (a fence): if another worker advanced the partition meanwhile, it
writes nothing and returns False, and the caller reloads and tries again.
"""

from __future__ import annotations

from datetime import UTC, datetime

import asyncpg

from services.metering.aggregate import PartitionState, Total, TotalKey


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
        return PartitionState(
            partition=partition,
            next_offset=offset or 0,
            seen={r["id_hash"]: r["seen_at"].timestamp() for r in rows},
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

    async def commit(
        self,
        partition: int,
        expected_offset: int,
        next_offset: int,
        totals: dict[TotalKey, Total],
        seen: dict[int, float],
    ) -> bool:
        try:
            await self._commit(partition, expected_offset, next_offset, totals, seen)
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
