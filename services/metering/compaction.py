"""Daily rollups, recomputed from the hourly ones off the counting path.

metering writes only hourly rollups (one row per user, product, model, cost center
and hour) in its counting transaction. This job recomputes, as absolute sums, every
(day, user, product, model, cost center) whose hourly rows changed since the last run
(minus a margin, so a row committed late with an earlier `updated_at` is not missed),
for the Cost API's day, month and whole-range queries. Recomputing is idempotent, so
overlap and repeats are harmless; one replica at a time runs it (advisory lock).
"""

from __future__ import annotations

import logging
from datetime import timedelta
from zoneinfo import ZoneInfo

import asyncpg

from services.metering.state import ROLLUP_COUNTERS
from services.metering.stores.rollups import ROLLUP_UPSERT_SET

log = logging.getLogger("qm.metering.compaction")
_LOCK = 0x716D_636F_6D70  # "qmcomp"
_NAME = "rollups_daily"


async def compact(pool: asyncpg.Pool, tz: ZoneInfo, margin: timedelta) -> int | None:
    """Recompute touched daily rollups; the number of rows written, or None when
    another replica is compacting right now."""
    async with pool.acquire() as conn, conn.transaction():
        if not await conn.fetchval("SELECT pg_try_advisory_xact_lock($1)", _LOCK):
            return None
        since = await conn.fetchval(
            "SELECT through FROM metering.compactions WHERE name = $1", _NAME
        )
        started = await conn.fetchval("SELECT now()")
        status = await conn.execute(
            f"""
            WITH touched AS (
                SELECT DISTINCT date_trunc('day', hour AT TIME ZONE $1) AT TIME ZONE $1 AS day,
                       user_id, product, model, cost_center
                FROM metering.rollups_hourly
                WHERE $2::timestamptz IS NULL OR updated_at >= $2::timestamptz - $3::interval
            )
            INSERT INTO metering.rollups_daily AS d (day, user_id, product, model,
                cost_center, workspace_id, partition, updated_at, {", ".join(ROLLUP_COUNTERS)})
            SELECT t.day, t.user_id, t.product, t.model, t.cost_center,
                   min(h.workspace_id), min(h.partition), now(),
                   {", ".join(f"sum(h.{c})" for c in ROLLUP_COUNTERS)}
            FROM touched t
            JOIN metering.rollups_hourly h
              ON h.user_id = t.user_id AND h.product = t.product AND h.model = t.model
             AND h.cost_center = t.cost_center
             AND h.hour >= t.day
             AND h.hour < (((t.day AT TIME ZONE $1) + interval '1 day') AT TIME ZONE $1)
            GROUP BY t.day, t.user_id, t.product, t.model, t.cost_center
            ON CONFLICT (day, user_id, product, model, cost_center) DO UPDATE
            SET {ROLLUP_UPSERT_SET}
            """,
            tz.key,
            since,
            margin,
        )
        await conn.execute(
            "INSERT INTO metering.compactions (name, through) VALUES ($1, $2)"
            " ON CONFLICT (name) DO UPDATE SET through = EXCLUDED.through",
            _NAME,
            started,
        )
    written = int(status.split()[-1])
    log.info("compacted %d daily rollup rows", written)
    return written
