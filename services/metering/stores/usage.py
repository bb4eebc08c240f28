"""The Cost API's reads: usage rows and top spenders from the hourly and daily rollups.

Whole local days of a range come from the daily rollups (`compaction`), the hours
before and after them from the hourly ones: a 30-day range reads ~24x fewer rows.
Read-only; queries take validated `cost_query` inputs.
"""

from __future__ import annotations

from zoneinfo import ZoneInfo

import asyncpg

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
from services.metering.state import ROLLUP_COUNTERS

_BUCKETS = {
    Granularity.HOUR: "t",
    Granularity.DAY: "date_trunc('day', t AT TIME ZONE $7) AT TIME ZONE $7",
    Granularity.MONTH: "date_trunc('month', t AT TIME ZONE $7) AT TIME ZONE $7",
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
# Grouping by directory group: each row once per group its user is in ($12, $13).
_BY_GROUP = """
    , grouped AS (
        SELECT m.group_id, src.* FROM src
        JOIN unnest($12::text[], $13::text[]) AS m(group_id, member) ON m.member = src.user_id
    )
"""
_COLUMNS = ", ".join(("user_id", "product", "model", "cost_center", *ROLLUP_COUNTERS))
_SUMS = ", ".join(f"sum({c})::bigint AS {c}" for c in ROLLUP_COUNTERS)
# Whole local days in [$9, $10) come from the daily rollups, the hours before and
# after them from the hourly ones.
_SOURCE = f"""
    WITH src AS (
        SELECT hour AS t, {_COLUMNS} FROM metering.rollups_hourly
        WHERE ((hour >= $1 AND hour < $9) OR (hour >= $10 AND hour < $2)) AND {_FILTERS}
        UNION ALL
        SELECT day AS t, {_COLUMNS} FROM metering.rollups_daily
        WHERE day >= $9 AND day < $10 AND {_FILTERS}
    )
"""


def _args(
    f: UsageFilter, tz: ZoneInfo, limit: int, days: bool, users: list[str] | None
) -> list[object]:
    """Query parameters $1..$11 (see _SOURCE); `days`: read whole days from daily rollups;
    `users`: the users of the filter's groups (None: no group filter)."""
    start, end = f.window()
    a, b = whole_days(start, end, tz) if days else (end, end)
    return [
        start, end, list(f.user_ids) or None, list(f.products) or None,
        list(f.models) or None, list(f.cost_centers) or None,
        tz.key, limit, a, b, users,
    ]  # fmt: skip


class UsageStore:
    """Answers Cost API queries in the workspace's time zone `tz`."""

    def __init__(self, pool: asyncpg.Pool, tz: ZoneInfo) -> None:
        self._pool = pool
        self._tz = tz

    async def usage(
        self, query: UsageQuery, users: list[str] | None, members: Members
    ) -> tuple[list[UsageRow], bool]:
        """(rows, truncated: more rows than the limit matched). `users`: only these (the
        filter's groups' members); `members`: group → members, to group by group."""
        dims = [d.value for d in query.dimensions()]
        assert query.granularity is not None
        limit = query.limit or DEFAULT_LIMIT
        select_dims = "".join(f", {d}" for d in dims)
        by_group = "group_id" in dims
        days = query.granularity != Granularity.HOUR
        args = _args(query.filter, self._tz, limit + 1, days, users)
        if by_group:
            pairs = [(g, u) for g, us in members.items() for u in us]
            args += [[g for g, _ in pairs], [u for _, u in pairs]]
        sql = f"""{_SOURCE}{_BY_GROUP if by_group else ""}
            SELECT {_BUCKETS[query.granularity]} AS bucket{select_dims}, {_SUMS}
            FROM {"grouped" if by_group else "src"}
            GROUP BY {", ".join(["bucket", *dims])}
            ORDER BY bucket NULLS FIRST, micros DESC{select_dims}
            LIMIT $8
        """
        rows = await self._pool.fetch(sql, *args)
        out = [
            UsageRow(r["bucket"], {d: r[d] for d in dims}, {c: r[c] for c in ROLLUP_COUNTERS})
            for r in rows[:limit]
        ]
        return out, len(rows) > limit

    async def top_spenders(self, query: TopSpendersQuery, users: list[str] | None) -> list[Spender]:
        """The users who spent most, most first (ties by user id)."""
        limit = query.limit or DEFAULT_TOP_SPENDERS
        rows = await self._pool.fetch(
            f"""{_SOURCE}
            SELECT user_id, sum(micros)::bigint AS micros, sum(events)::bigint AS events
            FROM src GROUP BY user_id ORDER BY micros DESC, user_id LIMIT $8
            """,
            *_args(query.filter, self._tz, limit, True, users),
        )
        return [Spender(r["user_id"], r["micros"], r["events"]) for r in rows]
