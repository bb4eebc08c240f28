"""The Cost API (`UsageService`), answered from the hourly rollups in Postgres.

An hour counts in a query when it starts inside [start, end). Day and month buckets
are calendar days and months in the workspace's time zone.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import asyncpg
import grpc

from quartermaster.grpcserver import abort
from quartermaster.periods import PeriodKind, period_of
from quartermaster.v1 import cost_pb2, cost_pb2_grpc, policy_pb2, policy_pb2_grpc
from quartermaster.wire import from_timestamp, timestamp
from services.metering.aggregate import ROLLUP_COUNTERS

Context = grpc.aio.ServicerContext[Any, Any]
MAX_RANGE = timedelta(days=400)
DEFAULT_LIMIT = 10_000
MAX_LIMIT = 100_000
_DIMENSIONS = {
    cost_pb2.DIMENSION_USER: "user_id",
    cost_pb2.DIMENSION_PRODUCT: "product",
    cost_pb2.DIMENSION_MODEL: "model",
    cost_pb2.DIMENSION_COST_CENTER: "cost_center",
    cost_pb2.DIMENSION_GROUP: "group_id",
}
_BUCKETS = {
    cost_pb2.GRANULARITY_HOUR: "t",
    cost_pb2.GRANULARITY_DAY: "date_trunc('day', t AT TIME ZONE $7) AT TIME ZONE $7",
    cost_pb2.GRANULARITY_MONTH: "date_trunc('month', t AT TIME ZONE $7) AT TIME ZONE $7",
    cost_pb2.GRANULARITY_TOTAL: "NULL::timestamptz",
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
# after them from the hourly ones: a 30-day range reads ~24x fewer rows.
_SOURCE = f"""
    WITH src AS (
        SELECT hour AS t, {_COLUMNS} FROM metering.rollups_hourly
        WHERE ((hour >= $1 AND hour < $9) OR (hour >= $10 AND hour < $2)) AND {_FILTERS}
        UNION ALL
        SELECT day AS t, {_COLUMNS} FROM metering.rollups_daily
        WHERE day >= $9 AND day < $10 AND {_FILTERS}
    )
"""


def filter_problems(f: cost_pb2.UsageFilter, name: str = "filter") -> list[str]:
    out = []
    if not f.HasField("start"):
        out.append(f"{name}.start: must be set")
    if not f.HasField("end"):
        out.append(f"{name}.end: must be set")
    if not out:
        start, end = from_timestamp(f.start), from_timestamp(f.end)
        if end <= start:
            out.append(f"{name}.end: must be after {name}.start")
        elif end - start > MAX_RANGE:
            out.append(f"{name}.end: at most {MAX_RANGE.days} days after {name}.start")
    for field in ("user_ids", "products", "models", "group_ids"):
        if any(not v.strip() for v in getattr(f, field)):
            out.append(f"{name}.{field}: empty values are not allowed")
    return out


def query_problems(req: cost_pb2.QueryUsageRequest) -> list[str]:
    out = filter_problems(req.filter)
    seen: set[int] = set()
    for i, d in enumerate(req.group_by):
        if d not in _DIMENSIONS:
            out.append(f"group_by[{i}]: unknown dimension {d}")
        elif d in seen:
            out.append(f"group_by[{i}]: {cost_pb2.Dimension.Name(d)} twice")
        seen.add(d)
    if req.granularity not in _BUCKETS:
        out.append("granularity: must be HOUR, DAY, MONTH or TOTAL")
    if not 0 <= req.limit <= MAX_LIMIT:
        out.append(f"limit: must be between 0 and {MAX_LIMIT}")
    return out


def whole_days(start: datetime, end: datetime, tz: ZoneInfo) -> tuple[datetime, datetime]:
    """[a, b): the whole local days inside [start, end), empty (a == b) if none."""
    first = period_of(PeriodKind.DAY, start, tz)
    a = start if first.start == start else first.end
    b = period_of(PeriodKind.DAY, end, tz).start
    return (a, b) if a < b else (end, end)


def _args(
    f: cost_pb2.UsageFilter, tz: ZoneInfo, limit: int, days: bool, members: list[str] | None
) -> list[object]:
    """Query parameters $1..$11 (see _SOURCE); `days`: read whole days from daily rollups;
    `members`: the users of the filter's groups (None: no group filter)."""

    def arr(values: object) -> list[str] | None:
        items = list(values)  # type: ignore[call-overload]
        return items or None

    start, end = from_timestamp(f.start), from_timestamp(f.end)
    a, b = whole_days(start, end, tz) if days else (end, end)
    return [
        start, end, arr(f.user_ids), arr(f.products), arr(f.models), arr(f.cost_centers),
        tz.key, limit, a, b, members,
    ]  # fmt: skip


class Directory:
    """Group members from policy's DirectoryService (asked per query: membership is
    now, and the answer is small next to the rows it selects)."""

    def __init__(self, addr: str) -> None:
        self.addr = addr
        self._channel: grpc.aio.Channel | None = None

    async def members(self, group_ids: list[str]) -> dict[str, tuple[str, ...]]:
        """group → its members now ({} of every group when none are named); raises
        LookupError naming unknown groups, ConnectionError when policy can't answer."""
        if self._channel is None:
            self._channel = grpc.aio.insecure_channel(self.addr)
        stub = policy_pb2_grpc.DirectoryServiceStub(self._channel)
        try:
            resp = await stub.GroupMembers(
                policy_pb2.GroupMembersRequest(group_ids=group_ids), timeout=10
            )
        except grpc.aio.AioRpcError as exc:
            if exc.code() in (grpc.StatusCode.NOT_FOUND, grpc.StatusCode.INVALID_ARGUMENT):
                raise LookupError(exc.details()) from None
            raise ConnectionError(
                f"groups need policy's DirectoryService at {self.addr}"
                f" (QM_DIRECTORY_ADDR): {exc.code().name}: {exc.details()}"
            ) from None
        return {g.group_id: tuple(g.user_ids) for g in resp.groups}

    async def close(self) -> None:
        if self._channel is not None:
            await self._channel.close(None)


class UsageServicer(cost_pb2_grpc.UsageServiceServicer):
    def __init__(self, pool: asyncpg.Pool, tz: ZoneInfo, directory: Directory) -> None:
        self._pool = pool
        self._tz = tz
        self._directory = directory

    async def _groups(
        self, f: cost_pb2.UsageFilter, by_group: bool, context: Context
    ) -> tuple[list[str] | None, dict[str, tuple[str, ...]]]:
        """(the users of the filter's groups or None, group → members to group by)."""
        if not f.group_ids and not by_group:
            return None, {}
        try:
            members = await self._directory.members(list(f.group_ids))
        except LookupError as exc:
            await abort(context, grpc.StatusCode.INVALID_ARGUMENT, f"filter.{exc}")
        except ConnectionError as exc:
            await abort(context, grpc.StatusCode.UNAVAILABLE, str(exc))
        users = sorted({u for m in members.values() for u in m}) if f.group_ids else None
        return users, members

    async def QueryUsage(
        self,
        request: cost_pb2.QueryUsageRequest,
        context: grpc.aio.ServicerContext[cost_pb2.QueryUsageRequest, cost_pb2.QueryUsageResponse],
    ) -> cost_pb2.QueryUsageResponse:
        problems = query_problems(request)
        if problems:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "; ".join(problems))
        dims = [_DIMENSIONS[d] for d in request.group_by]
        bucket = _BUCKETS[request.granularity]
        limit = request.limit or DEFAULT_LIMIT
        select_dims = "".join(f", {d}" for d in dims)
        group = ", ".join(["bucket", *dims])
        by_group = "group_id" in dims
        users, members = await self._groups(request.filter, by_group, context)
        days = request.granularity != cost_pb2.GRANULARITY_HOUR
        args = _args(request.filter, self._tz, limit + 1, days, users)
        if by_group:
            pairs = [(g, u) for g, us in members.items() for u in us]
            args += [[g for g, _ in pairs], [u for _, u in pairs]]
        sql = f"""{_SOURCE}{_BY_GROUP if by_group else ""}
            SELECT {bucket} AS bucket{select_dims}, {_SUMS}
            FROM {"grouped" if by_group else "src"}
            GROUP BY {group}
            ORDER BY bucket NULLS FIRST, micros DESC{select_dims}
            LIMIT $8
        """
        rows = await self._pool.fetch(sql, *args)
        out = cost_pb2.QueryUsageResponse(truncated=len(rows) > limit)
        for r in rows[:limit]:
            row = cost_pb2.UsageRow(**{c: r[c] for c in ROLLUP_COUNTERS}, **{d: r[d] for d in dims})
            if r["bucket"] is not None:
                row.bucket_start.CopyFrom(timestamp(r["bucket"]))
            out.rows.append(row)
        return out

    async def TopSpenders(
        self,
        request: cost_pb2.TopSpendersRequest,
        context: grpc.aio.ServicerContext[
            cost_pb2.TopSpendersRequest, cost_pb2.TopSpendersResponse
        ],
    ) -> cost_pb2.TopSpendersResponse:
        problems = filter_problems(request.filter)
        if not 0 <= request.limit <= 1000:
            problems.append("limit: must be between 0 and 1000")
        if problems:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "; ".join(problems))
        users, _ = await self._groups(request.filter, False, context)
        rows = await self._pool.fetch(
            f"""{_SOURCE}
            SELECT user_id, sum(micros)::bigint AS micros, sum(events)::bigint AS events
            FROM src GROUP BY user_id ORDER BY micros DESC, user_id LIMIT $8
            """,
            *_args(request.filter, self._tz, request.limit or 10, True, users),
        )
        return cost_pb2.TopSpendersResponse(
            spenders=[
                cost_pb2.Spender(user_id=r["user_id"], micros=r["micros"], events=r["events"])
                for r in rows
            ]
        )
