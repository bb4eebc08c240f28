"""The Cost API (`UsageService`): requests mapped to `cost_query` inputs, validated,
answered by the `UsageStore`.

Filtering or grouping by directory group asks policy's DirectoryService for the
groups' members per query (membership is now, and the answer is small next to the rows
it selects): an unknown group is INVALID_ARGUMENT, a directory that can't answer is
UNAVAILABLE naming its address.
"""

from __future__ import annotations

from typing import Any, Protocol
from zoneinfo import ZoneInfo

import grpc

from quartermaster.directory_client import DirectoryRequestError, DirectoryUnavailable
from quartermaster.grpcserver import abort
from quartermaster.v1 import cost_pb2, cost_pb2_grpc
from services.metering import cost_query, mapping

Context = grpc.aio.ServicerContext[Any, Any]


class _Input(Protocol):
    def problems(self) -> list[str]: ...


async def _valid(query: _Input, context: Context) -> None:
    """Abort with INVALID_ARGUMENT naming every bad field, if any."""
    problems = query.problems()
    if problems:
        await abort(context, grpc.StatusCode.INVALID_ARGUMENT, "; ".join(problems))


class UsageReads(Protocol):
    """The reads the Cost API answers from (`stores.usage.UsageStore`)."""

    async def usage(
        self, query: cost_query.UsageQuery, users: list[str] | None, members: cost_query.Members
    ) -> tuple[list[cost_query.UsageRow], bool]: ...

    async def top_spenders(
        self, query: cost_query.TopSpendersQuery, users: list[str] | None
    ) -> list[cost_query.Spender]: ...


class GroupDirectory(Protocol):
    """Who is in which group now (`quartermaster.directory_client.DirectoryClient`)."""

    async def group_members(self, group_ids: list[str]) -> cost_query.Members: ...


class UsageServicer(cost_pb2_grpc.UsageServiceServicer):
    """QueryUsage and TopSpenders: map, validate (INVALID_ARGUMENT names every bad
    field), resolve groups, read, map back; each answer names the workspace's time
    zone `tz` (the store's), so a client reads dates and shows buckets in it."""

    def __init__(self, store: UsageReads, directory: GroupDirectory, tz: ZoneInfo) -> None:
        self._store = store
        self._directory = directory
        self._zone = tz.key

    async def _groups(
        self, f: cost_query.UsageFilter, by_group: bool, context: Context
    ) -> tuple[list[str] | None, cost_query.Members]:
        """(the users of the filter's groups or None, group → members to group by)."""
        if not f.group_ids and not by_group:
            return None, {}
        try:
            members = await self._directory.group_members(list(f.group_ids))
        except DirectoryRequestError as exc:
            await abort(context, grpc.StatusCode.INVALID_ARGUMENT, f"filter.{exc}")
        except DirectoryUnavailable as exc:
            await abort(context, grpc.StatusCode.UNAVAILABLE, f"groups need {exc}")
        users = sorted({u for m in members.values() for u in m}) if f.group_ids else None
        return users, members

    async def QueryUsage(
        self, request: cost_pb2.QueryUsageRequest, context: Context
    ) -> cost_pb2.QueryUsageResponse:
        query = mapping.usage_query(request)
        await _valid(query, context)
        by_group = cost_query.Dimension.GROUP in query.group_by
        users, members = await self._groups(query.filter, by_group, context)
        rows, truncated = await self._store.usage(query, users, members)
        answer = mapping.usage_response(rows, truncated)
        answer.time_zone = self._zone
        return answer

    async def TopSpenders(
        self, request: cost_pb2.TopSpendersRequest, context: Context
    ) -> cost_pb2.TopSpendersResponse:
        query = mapping.top_spenders_query(request)
        await _valid(query, context)
        users, _ = await self._groups(query.filter, False, context)
        answer = mapping.top_spenders_response(await self._store.top_spenders(query, users))
        answer.time_zone = self._zone
        return answer
