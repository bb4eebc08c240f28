"""The Cost API's reads: usage rows and top spenders from the 15-minute and daily rollups.

Whole local days of a range come from the daily rollups (`compaction`) when they are
compacted through every partition's latest change of the day, and from the 15-minute
rows otherwise; the minutes before and after whole days always from the 15-minute
rows. One statement, so one snapshot: a day is read from one kind of row or the other,
never both, never a daily row older than its 15-minute rows. A 30-day range reads ~96x
fewer rows than from 15-minute rows alone.

Money is summed exact (pico-credits) and rounded once per user: each user's micros in
an answer are that user's exact spend under the query rounded half up, exactly what
GetBudget shows for a budget period. Rows split by user share each user's amount by
the largest-remainder method (`quartermaster.money.apportion`): they add up to it
exactly, each within one micro of its exact value. Rows not split by user share the
sum of the users' amounts the same way (in proportion, in the rare answer where that
sum is more than a micro per row from the exact one). So for any grouping and
granularity over a budget period, a user's rows sum to the user's GetBudget, and all
rows to the sum of the users' GetBudget (as a group's budget pool sums its members').
(Doing the per-user split for rows without a user too cost 5x on a 30-day query.)
Models: `model` is the catalog model each reported id names (quartermaster.model_ids,
under the catalog in force), `model_id` the id as reported. The few distinct ids
(metering.model_ids, written by the counting store) are resolved in Python and the
mapping joined in SQL, so a grouping by model sums `gpt-5-2025-08-07` and `gpt-5`
before money is rounded, as one row. Read-only; queries take validated `cost_query`
inputs.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from zoneinfo import ZoneInfo

import asyncpg

from quartermaster.money import PICOS_PER_MICRO, apportion, micros_of_picos
from services.metering.cost_query import (
    DEFAULT_LIMIT,
    DEFAULT_TOP_SPENDERS,
    Granularity,
    Members,
    Spender,
    TopSpendersQuery,
    UsageFilter,
    UsageQuery,
    UsageRow,
    whole_days,
)
from services.metering.pricing import PriceCatalog
from services.metering.state import PICOS, ROLLUP_COUNTERS, TOKEN_COUNTERS
from services.metering.stores.catalog import CatalogStore
from services.metering.stores.rollups import COLUMNS

_LOCAL = "t AT TIME ZONE $7"
_BUCKETS = {
    Granularity.HOUR: f"date_trunc('hour', {_LOCAL}) AT TIME ZONE $7",
    Granularity.DAY: f"date_trunc('day', {_LOCAL}) AT TIME ZONE $7",
    Granularity.MONTH: f"date_trunc('month', {_LOCAL}) AT TIME ZONE $7",
    Granularity.TOTAL: "NULL::timestamptz",
}
_FILTERS = """
    ($3::text[] IS NULL OR user_id = ANY($3))
    AND ($4::text[] IS NULL OR product = ANY($4))
    AND ($5::text[] IS NULL OR model = ANY($5))
    AND ($6::text[] IS NULL OR cost_center = ANY($6))
    AND ($11::text[] IS NULL OR user_id = ANY($11))
    AND $7::text IS NOT NULL
"""
# Grouping by directory group: each row once per group its user is in ($14, $15).
_BY_GROUP = """
    , grouped AS (
        SELECT m.group_id, src.* FROM src
        JOIN unnest($14::text[], $15::text[]) AS m(group_id, member) ON m.member = src.user_id
    )
"""
_COLUMNS = ", ".join(("user_id", "product", "model", "model AS model_id", "cost_center",
                      *COLUMNS))  # fmt: skip
# With ids to resolve ($12 reported -> $13 catalog model): joined to each branch's rows.
_RESOLVED = _COLUMNS.replace("model, model AS", "coalesce(i.resolved, model) AS model, model AS")
_JOIN_IDS = "LEFT JOIN ids i ON i.reported = model"
# The counters summed as they are (money is summed exact apart)
_PLAIN = [c for i, c in enumerate(ROLLUP_COUNTERS) if i != PICOS]
_HALF = PICOS_PER_MICRO // 2
# Whole local days in [$9, $10) come from the daily rollups unless a partition changed
# them since they were compacted (dirty: read first, in the same snapshot), the rest
# from the 15-minute ones.
_DIRTY = """
    SELECT DISTINCT r.day, ((r.day AT TIME ZONE $3) + interval '1 day') AT TIME ZONE $3 AS next
    FROM metering.rollup_days r
    LEFT JOIN metering.compacted_days c ON c.day = r.day AND c.partition = r.partition
    WHERE r.day >= $1 AND r.day < $2 AND c.version IS DISTINCT FROM r.version
    ORDER BY r.day
"""
_SOURCE = f"""
    WITH ids AS (SELECT * FROM unnest($12::text[], $13::text[]) AS i(reported, resolved)),
    src AS (
        SELECT bucket AS t, {{columns}} FROM metering.rollups_15m {{join}}
        WHERE ((bucket >= $1 AND bucket < $9) OR (bucket >= $10 AND bucket < $2)) AND {_FILTERS}
        {{dirty}}
        UNION ALL
        SELECT day AS t, {{columns}} FROM metering.rollups_daily {{join}}
        WHERE day >= $9 AND day < $10 {{clean}} AND {_FILTERS}
    )
"""
_DIRTY_ROWS = f"""
        UNION ALL
        SELECT q.bucket AS t, {{columns}} FROM metering.rollups_15m q {{join}}
        JOIN (VALUES {{days}}) AS d(day, next) ON q.bucket >= d.day AND q.bucket < d.next
        WHERE {_FILTERS}
"""


def _stamp(t: datetime) -> str:
    """A timestamptz literal (from PostgreSQL's own rows: no text of a caller's)."""
    return f"'{t.isoformat()}'::timestamptz"


def _source(resolved: dict[str, str], dirty: list[tuple[datetime, datetime]]) -> str:
    """_SOURCE with the changed (`dirty`) days written in as values, so the planner
    knows there are none (nearly always) or a few: a CTE of them was guessed at one
    per day of the range, and its range join at ~17 million rows for 30 days of 10,000
    people, which sent the sums to a sort on disk and JIT compiling for seconds. The
    id → model mapping is joined only when some id needs it."""
    columns, join = (_RESOLVED, _JOIN_IDS) if resolved else (_COLUMNS, "")
    if dirty:
        days = ", ".join(f"({_stamp(a)}, {_stamp(b)})" for a, b in dirty)
        rows = _DIRTY_ROWS.format(columns=columns, join=join, days=days)
        clean = f"AND day NOT IN ({', '.join(_stamp(a) for a, _ in dirty)})"
    else:
        rows = clean = ""
    return _SOURCE.format(columns=columns, join=join, dirty=rows, clean=clean)


def _args(
    f: UsageFilter, tz: ZoneInfo, limit: int, days: bool, users: list[str] | None,
    resolved: dict[str, str],
) -> list[object]:  # fmt: skip
    """Query parameters $1..$13 (see _SOURCE); `days`: read whole days from daily rollups;
    `users`: the users of the filter's groups (None: no group filter); `resolved`:
    reported id → catalog model, for the ids that name another. A model in the filter
    matches itself and every id naming it."""
    start, end = f.window()
    a, b = whole_days(start, end, tz) if days else (end, end)
    models = None
    if f.models:
        asked = set(f.models)
        models = sorted(asked | {i for i, m in resolved.items() if m in asked})
    return [
        start, end, list(f.user_ids) or None, list(f.products) or None,
        models, list(f.cost_centers) or None, tz.key, limit, a, b, users,
        list(resolved), list(resolved.values()),
    ]  # fmt: skip


class UsageStore:
    """Answers Cost API queries in the workspace's time zone `tz`."""

    def __init__(self, pool: asyncpg.Pool, tz: ZoneInfo) -> None:
        self._pool = pool
        self._tz = tz
        self._catalogs = CatalogStore(pool)
        # (catalog revision, reported ids) → {id: catalog model} for ids naming another
        self._ids: tuple[int, list[str]] = (-1, [])
        self._resolved: dict[str, str] = {}

    async def resolved(self) -> dict[str, str]:
        """Reported model id → the catalog model it names, for the ids counted so far
        that name a model other than themselves; read again when the catalog or the ids
        changed (one small query per call: both are small tables)."""
        row = await self._pool.fetchrow(
            "SELECT (SELECT max(revision) FROM metering.price_catalogs) AS revision,"
            " (SELECT array_agg(model ORDER BY model) FROM metering.model_ids) AS ids"
        )
        key = (int(row["revision"] or 0), list(row["ids"] or []))
        if key != self._ids:
            revision = await self._catalogs.current()
            catalog: PriceCatalog | None = revision.catalog if revision else None
            out = {}
            for model in key[1] if catalog else ():
                named = catalog.resolve(model) if catalog else None
                if named is not None and named != model:
                    out[model] = named
            self._ids, self._resolved = key, out
        return self._resolved

    async def _fetch(
        self, build: Callable[[list[tuple[datetime, datetime]]], str], args: list[object],
        jit: bool,
    ) -> list[asyncpg.Record]:  # fmt: skip
        """Run one read: the days changed since compaction (`_DIRTY`), then the SQL
        `build` makes with them, in one REPEATABLE READ snapshot, so a day is read from
        one kind of rollup or the other, never both. JIT is off unless `jit`: compiling
        took ~100 ms of a 350 ms query that aggregates per user. (Grouped without users,
        the ~150,000 rows' sums gain more from JIT than it costs: measured with
        bench_costs.) asyncpg errors propagate."""
        async with (
            self._pool.acquire() as conn,
            conn.transaction(isolation="repeatable_read", readonly=True),
        ):
            if not jit:
                await conn.execute("SET LOCAL jit = off")
            # $9, $10: the whole days read from daily rollups; $7: the zone
            dirty = await conn.fetch(_DIRTY, args[8], args[9], args[6])
            sql = build([(r["day"], r["next"]) for r in dirty])
            return list(await conn.fetch(sql, *args))

    async def usage(
        self, query: UsageQuery, users: list[str] | None, members: Members
    ) -> tuple[list[UsageRow], bool]:
        """(rows, truncated: more rows than the limit matched). `users`: only these (the
        filter's groups' members); `members`: group → members, to group by group."""
        dims = [d.value for d in query.dimensions()]
        assert query.granularity is not None
        limit = query.limit or DEFAULT_LIMIT
        by_group = "group_id" in dims
        days = query.granularity != Granularity.HOUR
        resolved = await self.resolved()
        args = _args(query.filter, self._tz, limit + 1, days, users, resolved)
        if by_group:
            pairs = [(g, u) for g, us in members.items() for u in us]
            args += [[g for g, _ in pairs], [u for _, u in pairs]]
        per_user = "user_id" in dims
        select = _apportioned if per_user else _pooled
        grouped = _BY_GROUP if by_group else ""
        tail = f"{grouped}{select(query.granularity, dims)}"
        rows = await self._fetch(lambda dirty: _source(resolved, dirty) + tail, args,
                                 jit=not per_user)  # fmt: skip
        truncated = len(rows) > limit
        if per_user:
            micros = [r["micros"] for r in rows]
        else:
            exact = [r["m"] * PICOS_PER_MICRO + r["r"] for r in rows]
            # Rows without a user hold many: they share the sum of the users' amounts.
            # Cut short, no sum is shown whole: each row is its own amount rounded once.
            micros = (
                [micros_of_picos(x) for x in exact]
                if truncated
                else apportion(exact, rows[0]["budget"] if rows else 0)
            )
        out = [
            UsageRow(
                r["bucket"], {d: r[d] for d in dims}, {**{c: r[c] for c in _PLAIN}, "micros": m}
            )
            for r, m in zip(rows[:limit], micros, strict=False)
        ]
        return out, truncated

    async def top_spenders(self, query: TopSpendersQuery, users: list[str] | None) -> list[Spender]:
        """The users who spent most, most first (ties by user id)."""
        limit = query.limit or DEFAULT_TOP_SPENDERS
        resolved = await self.resolved()
        rows = await self._fetch(
            lambda dirty: (
                _source(resolved, dirty)
                + f"""
            SELECT user_id, sum(events)::bigint AS events,
                   sum(micros)::bigint + {_floor(f"sum(picos_remainder)::bigint + {_HALF}")}
                       AS micros,
                   {", ".join(f"sum({c})::bigint AS {c}" for c in TOKEN_COUNTERS)}
            FROM src GROUP BY user_id ORDER BY micros DESC, user_id LIMIT $8
            """
            ),
            _args(query.filter, self._tz, limit, True, users, resolved),
            jit=False,
        )
        return [
            Spender(r["user_id"], r["micros"], r["events"], {c: r[c] for c in TOKEN_COUNTERS})
            for r in rows
        ]


_P = PICOS_PER_MICRO


def _mod(x: str) -> str:
    """SQL: bigint `x` modulo 10^6, in [0, 10^6) also for a negative `x`."""
    return f"((({x}) % {_P} + {_P}) % {_P})"


def _floor(x: str) -> str:
    """SQL: bigint `x` / 10^6 rounded down (exact integer arithmetic)."""
    return f"((({x}) - {_mod(x)}) / {_P})"


def _pooled(granularity: Granularity, dims: list[str]) -> str:
    """The answer's SELECT over `src` (or `grouped`) when rows are not split by user:
    rows per bucket and `dims` with their exact cost (m micros + r picos), and `budget`,
    the sum of each user's exact spend under the query rounded once (per group, when
    grouped by group), which the rows' micros are apportioned to (`money.apportion`).

    `src` is read twice (so materialized): with the changed days known, both reads
    are hash aggregates. GROUPING SETS over one read measured slower (issue 13, item
    4): PostgreSQL grouped its sets by sorting the rows, on disk for 30 days."""
    by_group = "group_id" in dims
    d = "".join(f", {x}" for x in dims)
    src = "grouped" if by_group else "src"
    return f"""
    , owners AS (
        SELECT sum(micros)::bigint AS m, sum(picos_remainder)::bigint AS r
        FROM {src} GROUP BY user_id{", group_id" if by_group else ""}
    )
    SELECT {_BUCKETS[granularity]} AS bucket{d},
           {", ".join(f"sum({c})::bigint AS {c}" for c in _PLAIN)},
           sum(micros)::bigint AS m, sum(picos_remainder)::bigint AS r,
           (SELECT sum(m + {_floor(f"r + {_HALF}")})::bigint FROM owners) AS budget
    FROM {src}
    GROUP BY bucket{d}
    ORDER BY bucket NULLS FIRST, m DESC{d}
    LIMIT $8
    """


def _apportioned(granularity: Granularity, dims: list[str]) -> str:
    """The answer's SELECT over `src` (or `grouped`) when rows are split by user (in
    `dims`): rows per bucket and `dims`, each user's exact spend rounded once and
    apportioned over the user's rows (within a group, when grouped by group: a user in
    two groups counts in both) by largest remainder, ties to the earlier row in
    answer order.

    Exact amounts stay two bigints, summed apart (Σ micros, Σ picos_remainder: their
    sums fit, and bigint arithmetic is several times cheaper than numeric here)."""
    by_group = "group_id" in dims
    d = "".join(f", {x}" for x in dims)
    owner = "cell_user, group_id" if by_group else "cell_user"
    return f"""
    , cells AS (
        SELECT {_BUCKETS[granularity]} AS bucket{d}, user_id AS cell_user,
               {", ".join(f"sum({c}) AS {c}" for c in _PLAIN)},
               sum(micros)::bigint AS m, sum(picos_remainder)::bigint AS r
        FROM {"grouped" if by_group else "src"}
        GROUP BY bucket{d}, user_id
    ),
    shares AS (
        SELECT *, m + {_floor("r")} AS floor_micros,
               (sum(m) OVER owner)::bigint + {_floor(f"(sum(r) OVER owner)::bigint + {_HALF}")}
                   - (sum(m + {_floor("r")}) OVER owner)::bigint AS extra,
               row_number() OVER (owner ORDER BY {_mod("r")} DESC, bucket NULLS FIRST{d})
                   AS place
        FROM cells
        WINDOW owner AS (PARTITION BY {owner})
    )
    SELECT bucket{d}, {", ".join(f"sum({c})::bigint AS {c}" for c in _PLAIN)},
           sum(floor_micros + CASE WHEN place <= extra THEN 1 ELSE 0 END)::bigint AS micros
    FROM shares
    GROUP BY bucket{d}
    ORDER BY bucket NULLS FIRST, micros DESC{d}
    LIMIT $8
    """
