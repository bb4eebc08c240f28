"""Daily rollups, recomputed from the 15-minute ones off the counting path.

metering writes only 15-minute rollups in its counting transaction, and in the same
transaction bumps the version of each workspace-zone day it changed, per partition
(`metering.rollup_days`). This job recomputes, as absolute sums, the daily rows
(day, user, product, model, cost center) of every day whose version moved since it
last ran, for the keys the changed partitions hold, and records the versions it
summed (`metering.compacted_days`), all in one statement, so in one snapshot: a
daily row is exactly the sum of the 15-minute rows of the versions recorded beside
it. The Cost API reads a day from the daily rows only while every partition's
version of it is still the compacted one (`stores.usage`), so it never shows a daily
row older than what was counted, however late this job runs.

Recomputing is idempotent, so overlap and repeats are harmless; one replica at a time
runs it (advisory lock). The zone `tz` must be the one metering counts days in
(both read QM_WORKSPACE_TIMEZONE).
"""

from __future__ import annotations

import logging
from zoneinfo import ZoneInfo

import asyncpg

from quartermaster.money import PICOS_PER_MICRO
from services.metering.state import PICOS, ROLLUP_COUNTERS
from services.metering.stores.rollups import COLUMNS, ROLLUP_UPSERT_SET, exact_picos

log = logging.getLogger("qm.metering.compaction")
_LOCK = 0x716D_636F_6D70  # "qmcomp"
_PLAIN = [c for i, c in enumerate(ROLLUP_COUNTERS) if i != PICOS]  # summed as they are
_HALF = PICOS_PER_MICRO // 2
# The one statement recomputes every changed day of a workspace: on a big one it may
# outlast the pool's command timeout (QM_DATABASE_TIMEOUT, made for the counting path's
# statements), where a statement that always takes longer would fail every round. Off
# the counting path, a longer wait on a PostgreSQL that stopped answering costs only
# this job's connection.
COMPACT_TIMEOUT_SECONDS = 1800.0

_SQL = f"""
WITH dirty AS (
    SELECT r.partition, r.day, r.version
    FROM metering.rollup_days r
    LEFT JOIN metering.compacted_days c ON c.day = r.day AND c.partition = r.partition
    WHERE c.version IS DISTINCT FROM r.version
),
touched AS (
    SELECT DISTINCT d.day, q.user_id, q.product, q.model, q.cost_center
    FROM dirty d
    JOIN metering.rollups_15m q
      ON q.partition = d.partition AND q.bucket >= d.day
     AND q.bucket < ((d.day AT TIME ZONE $1) + interval '1 day') AT TIME ZONE $1
),
sums AS (
    SELECT t.day, t.user_id, t.product, t.model, t.cost_center,
           min(q.workspace_id) AS workspace_id, min(q.partition) AS partition,
           {", ".join(f"sum(q.{c}) AS {c}" for c in _PLAIN)},
           sum({exact_picos("q")}) AS picos
    FROM touched t
    JOIN metering.rollups_15m q
      ON q.user_id = t.user_id AND q.product = t.product AND q.model = t.model
     AND q.cost_center = t.cost_center
     AND q.bucket >= t.day
     AND q.bucket < ((t.day AT TIME ZONE $1) + interval '1 day') AT TIME ZONE $1
    GROUP BY t.day, t.user_id, t.product, t.model, t.cost_center
),
written AS (
    INSERT INTO metering.rollups_daily AS x (day, user_id, product, model,
        cost_center, workspace_id, partition, updated_at, {", ".join(COLUMNS)})
    SELECT day, user_id, product, model, cost_center, workspace_id, partition, now(),
           {
    ", ".join(
        f"div(picos + {_HALF}, {PICOS_PER_MICRO})"
        if c == "micros"
        else f"picos - div(picos + {_HALF}, {PICOS_PER_MICRO}) * {PICOS_PER_MICRO}"
        if c == "picos_remainder"
        else c
        for c in COLUMNS
    )
}
    FROM sums
    ON CONFLICT (day, user_id, product, model, cost_center) DO UPDATE
    SET {ROLLUP_UPSERT_SET}
    RETURNING 1
),
marked AS (
    INSERT INTO metering.compacted_days (partition, day, version)
    SELECT partition, day, version FROM dirty
    ON CONFLICT (day, partition) DO UPDATE SET version = EXCLUDED.version
    RETURNING 1
)
SELECT (SELECT count(*) FROM written) AS rows, (SELECT count(*) FROM marked) AS days
"""


async def compact(pool: asyncpg.Pool, tz: ZoneInfo) -> int | None:
    """Recompute the daily rollups of changed days; the number of rows written, or
    None when another replica is compacting right now. asyncpg errors propagate
    (nothing is written then: the next run does the same days), TimeoutError among
    them after COMPACT_TIMEOUT_SECONDS."""
    async with pool.acquire() as conn, conn.transaction():
        if not await conn.fetchval("SELECT pg_try_advisory_xact_lock($1)", _LOCK):
            return None
        row = await conn.fetchrow(_SQL, tz.key, timeout=COMPACT_TIMEOUT_SECONDS)
    written = int(row["rows"])
    log.info("compacted %d daily rollup rows of %d changed partition-days", written, row["days"])
    return written
