"""metering's hourly rollups in Postgres (`metering.rollups_hourly`).

Rollups are absolute: a write replaces a row's counters whole, so a batch replayed
after a crash writes the same values again. The counting store writes them inside its
fenced transaction (`write` takes that connection); `load` and `horizon` read what a
partition's state needs. Daily rollups are derived from these by `compaction`.
"""

from __future__ import annotations

from datetime import datetime

import asyncpg

from services.metering.state import GRAINS, ROLLUP_COUNTERS, Rollup, RollupKey

# Rollups are absolute: a conflicting row takes the new values whole.
ROLLUP_UPSERT_SET = ", ".join(f"{c} = EXCLUDED.{c}" for c in (*ROLLUP_COUNTERS, "updated_at"))
_COUNTER_LIST = ", ".join(ROLLUP_COUNTERS)

# grain → (table, bucket column)
_TABLES = {
    "hour": ("metering.rollups_hourly", "hour"),
}


class RollupStore:
    """Reads and writes one worker's partitions' rollups (keys: `state.RollupKey`)."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool

    @staticmethod
    async def horizon(conn: asyncpg.Connection, partition: int) -> dict[str, int]:
        """grain → the newest bucket start (epoch seconds) Postgres holds a row for in
        `partition` (grains without rows are left out)."""
        out = {}
        for grain, (table, column) in _TABLES.items():
            newest = await conn.fetchval(
                f"SELECT max({column}) FROM {table} WHERE partition = $1", partition
            )
            if newest is not None:
                out[grain] = int(newest.timestamp())
        return out

    async def spend_by_hour(
        self, users: list[str], since: datetime
    ) -> dict[str, list[tuple[float, int]]]:
        """user → [(hour start in epoch seconds, micros spent in it)] for the hours from
        `since` on (what burn-rate baselines are rebuilt from; users without rows are
        left out). Uses the (user_id, hour) index: rows read are the users' own."""
        rows = await self._pool.fetch(
            """
            SELECT user_id, extract(epoch FROM hour)::float8 AS at, sum(micros)::bigint AS m
            FROM metering.rollups_hourly
            WHERE user_id = ANY($1::text[]) AND hour >= $2
            GROUP BY user_id, hour
            """,
            users, since,
        )  # fmt: skip
        out: dict[str, list[tuple[float, int]]] = {}
        for r in rows:
            out.setdefault(r["user_id"], []).append((r["at"], r["m"]))
        return out

    async def load(self, keys: set[RollupKey]) -> dict[RollupKey, Rollup]:
        """The rows of `keys` that exist (absent keys are new)."""
        out: dict[RollupKey, Rollup] = {}
        for grain in GRAINS:
            some = [k for k in keys if k[0] == grain]
            if not some:
                continue
            _, starts, users, products, models, centers = (list(x) for x in zip(*some, strict=True))
            table, column = _TABLES[grain]
            rows = await self._pool.fetch(
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

    @staticmethod
    async def write(
        conn: asyncpg.Connection,
        partition: int,
        rollups: dict[RollupKey, Rollup],
        now: datetime,
    ) -> None:
        """Upsert `rollups` (absolute values) on `conn`, inside the caller's transaction."""
        for grain in GRAINS:
            rk = [k for k in rollups if k[0] == grain]
            if not rk:
                continue
            rv = [rollups[k] for k in rk]
            table, column = _TABLES[grain]
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
