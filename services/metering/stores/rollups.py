"""metering's 15-minute rollups in Postgres (`metering.rollups_15m`).

Rollups are absolute: a write replaces a row's counters whole, so a batch replayed
after a crash writes the same values again. The counting store writes them inside its
fenced transaction (`write` takes that connection); `load` and `horizon` read what a
partition's state needs. Daily rollups are derived from these by `compaction`.

Money is exact: a Rollup's `picos` is stored as `micros` (rounded half up once) and
`picos_remainder` (exact minus micros x 10^6), both bigints (`split_picos`).
"""

from __future__ import annotations

import operator
from datetime import datetime

import asyncpg

from quartermaster.money import PICOS_PER_MICRO, micros_of_picos
from services.metering.state import GRAINS, PICOS, QUARTER, ROLLUP_COUNTERS, Rollup, RollupKey
from services.metering.stores.staging import SCHEMA, stage, staging_ddl

# The columns of metering.rollups_15m/_daily holding Rollup's counters: `picos` is two.
COLUMNS = (*ROLLUP_COUNTERS[:PICOS], "micros", "picos_remainder", *ROLLUP_COUNTERS[PICOS + 1 :])
# Rollups are absolute: a conflicting row takes the new values whole.
ROLLUP_UPSERT_SET = ", ".join(f"{c} = EXCLUDED.{c}" for c in (*COLUMNS, "updated_at"))
_COLUMN_LIST = ", ".join(COLUMNS)
# A batch's rollups as `write` stages them (`stores.staging`): grain, bucket start
# (epoch seconds), user, product, model, cost center, workspace, then COLUMNS (in the
# order of Rollup's fields, `picos` split in two).
_STAGED = "metering_rollups_batch"
_counters = operator.attrgetter(*ROLLUP_COUNTERS)  # a Rollup's counters, as a tuple
_STAGED_DDL = staging_ddl(
    _STAGED,
    [("g", "text"), ("h", "bigint"), ("u", "text"), ("p", "text"), ("m", "text"), ("c", "text"),
     ("w", "text"), *((c, "bigint") for c in COLUMNS)],
)  # fmt: skip


def exact_picos(table: str = "") -> str:
    """SQL for a row's exact cost in pico-credits (numeric: sums of it can pass
    bigint); `table`: the alias to qualify the columns with."""
    t = f"{table}." if table else ""
    return f"({t}micros::numeric * {PICOS_PER_MICRO} + {t}picos_remainder)"


# grain → (table, bucket column)
_TABLES = {
    QUARTER: ("metering.rollups_15m", "bucket"),
}


def split_picos(picos: int) -> tuple[int, int]:
    """(micros rounded half up, remainder): what PostgreSQL stores of an exact amount."""
    micros = micros_of_picos(picos)
    return micros, picos - micros * PICOS_PER_MICRO


def rollup_of(row: asyncpg.Record) -> Rollup:
    """A Rollup from a row of metering.rollups_15m or _daily (every COLUMNS column)."""
    picos = row["micros"] * PICOS_PER_MICRO + row["picos_remainder"]
    return Rollup(
        row["workspace_id"], row["input_tokens"], row["cached_input_tokens"],
        row["cache_write_tokens"], row["output_tokens"], row["reasoning_tokens"], picos,
        row["events"], row["fallback_events"], row["cache_write_1h_tokens"],
        row["audio_input_tokens"], row["audio_output_tokens"],
    )  # fmt: skip


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
                JOIN unnest($1::bigint[], $2::text[], $3::text[], $4::text[], $5::text[])
                    AS k(t, user_id, product, model, cost_center)
                  ON r.{column} = to_timestamp(k.t) AND r.user_id = k.user_id
                 AND r.product = k.product AND r.model = k.model
                 AND r.cost_center = k.cost_center
                """,
                starts, users, products, models, centers,
            )  # fmt: skip
            for r in rows:
                key = (grain, int(r[column].timestamp()), r["user_id"], r["product"],
                       r["model"], r["cost_center"])  # fmt: skip
                out[key] = rollup_of(r)
        return out

    @staticmethod
    async def write(
        conn: asyncpg.Connection,
        partition: int,
        rollups: dict[RollupKey, Rollup],
        now: datetime,
    ) -> None:
        """Upsert `rollups` (absolute values) on `conn`, inside the caller's transaction,
        through a staging table (`stores.staging`)."""
        if not rollups:
            return
        rows = []
        for k, v in rollups.items():
            counters = _counters(v)
            rows.append(
                (*k, v.workspace_id, *counters[:PICOS], *split_picos(v.picos),
                 *counters[PICOS + 1 :])
            )  # fmt: skip
        await stage(conn, _STAGED, _STAGED_DDL, rows)
        present = {k[0] for k in rollups}
        for grain in (g for g in GRAINS if g in present):
            table, column = _TABLES[grain]
            await conn.execute(
                f"""
                INSERT INTO {table} AS r ({column}, user_id, product, model,
                    cost_center, workspace_id, partition, updated_at, {_COLUMN_LIST})
                SELECT to_timestamp(x.h), x.u, x.p, x.m, x.c, x.w, $1, $2, {_COLUMN_LIST}
                FROM {SCHEMA}.{_STAGED} x WHERE x.g = $3
                ON CONFLICT ({column}, user_id, product, model, cost_center) DO UPDATE
                SET {ROLLUP_UPSERT_SET}
                """,
                partition, now, grain,
            )  # fmt: skip

    @staticmethod
    async def mark_days(conn: asyncpg.Connection, partition: int, days: set[datetime]) -> None:
        """Note, inside the counting transaction, that `partition` changed the rows of
        these workspace-zone days (their starts, UTC): the Cost API then reads them from
        the 15-minute rows until compaction has summed them again."""
        if not days:
            return
        await conn.execute(
            """
            INSERT INTO metering.rollup_days AS d (partition, day, version)
            SELECT $1, x, 1 FROM unnest($2::timestamptz[]) AS x
            ON CONFLICT (day, partition) DO UPDATE SET version = d.version + 1
            """,
            partition,
            sorted(days),
        )

    async def hourly_spend(
        self, users: list[str], since: datetime, until: datetime
    ) -> dict[str, list[tuple[datetime, int]]]:
        """Per user of `users`: (UTC hour start, micro-credits) for each hour in
        [since, until) with spend, oldest first; each hour's exact spend rounded once,
        half up. (For burn-rate baselines: read from the 15-minute rows.)"""
        rows = await self._pool.fetch(
            f"""
            SELECT user_id, date_trunc('hour', bucket, 'UTC') AS hour,
                   div(sum({exact_picos()}) + {PICOS_PER_MICRO // 2}, {PICOS_PER_MICRO})::bigint
                       AS micros
            FROM metering.rollups_15m
            WHERE user_id = ANY($1::text[]) AND bucket >= $2 AND bucket < $3
            GROUP BY 1, 2 ORDER BY 1, 2
            """,
            users, since, until,
        )  # fmt: skip
        out: dict[str, list[tuple[datetime, int]]] = {}
        for r in rows:
            out.setdefault(r["user_id"], []).append((r["hour"], r["micros"]))
        return out
