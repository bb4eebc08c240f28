"""The Cost API servicer in process: the real UsageServicer behind a real grpc.aio
server, with small fakes of its store and directory (validation, mapping and error
mapping need no Postgres; tests/metering/test_costs.py runs the SQL against the real one)."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import grpc
import pytest

from quartermaster.directory_client import DirectoryRequestError, DirectoryUnavailable
from quartermaster.grpcguard import add_guarded
from quartermaster.v1 import cost_pb2, cost_pb2_grpc
from quartermaster.wire import from_timestamp, timestamp
from services.metering.cost_query import (
    Dimension,
    Granularity,
    Members,
    Spender,
    TopSpendersQuery,
    UsageQuery,
    UsageRow,
)
from services.metering.cost_servicer import UsageServicer
from tests.helpers import in_process_server, refusal

T0 = datetime(2026, 11, 2, tzinfo=UTC)


@dataclass
class FakeStore:
    rows: list[UsageRow] = field(default_factory=list)
    asked: list[tuple[object, list[str] | None, Members]] = field(default_factory=list)
    truncated: bool = True

    async def usage(
        self, query: UsageQuery, users: list[str] | None, members: Members
    ) -> tuple[list[UsageRow], bool]:
        self.asked.append((query, users, members))
        return self.rows, self.truncated

    async def top_spenders(self, query: TopSpendersQuery, users: list[str] | None) -> list[Spender]:
        self.asked.append((query, users, {}))
        return [Spender("ann", 16_000, 5)]


@dataclass
class FakeDirectory:
    members: Members = field(default_factory=dict)
    error: Exception | None = None

    async def group_members(self, group_ids: list[str]) -> Members:
        if self.error is not None:
            raise self.error
        return {g: m for g, m in self.members.items() if not group_ids or g in group_ids}


async def call(store: FakeStore, directory: FakeDirectory, request: object) -> object:
    servicer = UsageServicer(store, directory, ZoneInfo("Asia/Kolkata"))
    async with in_process_server(
        lambda s: add_guarded(s, cost_pb2_grpc.add_UsageServiceServicer_to_server, servicer)
    ) as channel:
        stub = cost_pb2_grpc.UsageServiceStub(channel)
        if isinstance(request, cost_pb2.QueryUsageRequest):
            return await stub.QueryUsage(request)
        assert isinstance(request, cost_pb2.TopSpendersRequest)
        return await stub.TopSpenders(request)


def window(**fields: list[str]) -> cost_pb2.UsageFilter:
    return cost_pb2.UsageFilter(
        start=timestamp(T0), end=timestamp(T0 + timedelta(days=1)), **fields
    )


async def test_a_time_no_datetime_can_hold_is_refused_naming_the_field() -> None:
    bad = cost_pb2.UsageFilter(start=timestamp(T0), end=timestamp(T0))
    bad.start.nanos = -1
    bad.end.seconds = 10**12
    store = FakeStore()
    code, said = await refusal(call(store, FakeDirectory(), cost_pb2.QueryUsageRequest(filter=bad)))
    assert (code, said) == (
        grpc.StatusCode.INVALID_ARGUMENT,
        "filter.start: not a time (years 1 to 9999, nanos below a second)",
    )
    assert store.asked == []


async def test_a_query_is_mapped_to_the_domain_and_its_rows_back() -> None:
    store = FakeStore(
        rows=[
            UsageRow(T0, {"user_id": "ann", "model": "gpt-5"}, {"micros": 7, "events": 2}),
            UsageRow(None, {"user_id": "ben", "model": "o3"}, {"micros": 1, "events": 1}),
        ]
    )
    request = cost_pb2.QueryUsageRequest(
        filter=window(models=["gpt-5", "o3"]),
        group_by=[cost_pb2.DIMENSION_USER, cost_pb2.DIMENSION_MODEL],
        granularity=cost_pb2.GRANULARITY_DAY,
        limit=2,
    )
    resp = await call(store, FakeDirectory(), request)
    assert isinstance(resp, cost_pb2.QueryUsageResponse)
    [(query, users, members)] = store.asked
    assert isinstance(query, UsageQuery)
    assert query.group_by == (Dimension.USER, Dimension.MODEL)
    assert query.granularity is Granularity.DAY
    assert query.filter.models == ("gpt-5", "o3")
    assert (query.filter.start, query.limit, users, members) == (T0, 2, None, {})
    assert resp.truncated
    assert resp.time_zone == "Asia/Kolkata"  # the zone day buckets are in
    assert [(r.user_id, r.model, r.micros, r.events) for r in resp.rows] == [
        ("ann", "gpt-5", 7, 2),
        ("ben", "o3", 1, 1),
    ]
    assert from_timestamp(resp.rows[0].bucket_start) == T0
    assert not resp.rows[1].HasField("bucket_start")


async def test_every_bad_field_is_named_at_once() -> None:
    request = cost_pb2.QueryUsageRequest(
        filter=cost_pb2.UsageFilter(
            start=timestamp(T0), end=timestamp(T0 - timedelta(hours=1)), models=[" "]
        ),
        group_by=[cost_pb2.DIMENSION_USER, cost_pb2.DIMENSION_USER, 42],  # type: ignore[list-item]
        limit=-1,
    )
    store = FakeStore()
    assert await refusal(call(store, FakeDirectory(), request)) == (
        grpc.StatusCode.INVALID_ARGUMENT,
        "filter.end: must be after filter.start; filter.models: empty values are not allowed; "
        "group_by[1]: DIMENSION_USER twice; group_by[2]: unknown dimension 42; "
        "granularity: must be HOUR, DAY, MONTH or TOTAL; limit: must be between 0 and 100000",
    )
    assert store.asked == []


async def test_group_filters_and_grouping_ask_the_directory() -> None:
    store = FakeStore()
    directory = FakeDirectory({"ml": ("ann", "bob"), "ops": ("bob", "cat")})
    request = cost_pb2.QueryUsageRequest(
        filter=window(group_ids=["ml", "ops"]),
        group_by=[cost_pb2.DIMENSION_GROUP],
        granularity=cost_pb2.GRANULARITY_TOTAL,
    )
    await call(store, directory, request)
    [(_, users, members)] = store.asked
    assert users == ["ann", "bob", "cat"]
    assert members == directory.members


@pytest.mark.parametrize(
    ("error", "code", "details"),
    [
        (
            DirectoryRequestError("group_ids: no group(s) ['nope']"),
            grpc.StatusCode.INVALID_ARGUMENT,
            "filter.group_ids: no group(s) ['nope']",
        ),
        (
            DirectoryUnavailable("policy's DirectoryService at h:1 (QM_DIRECTORY_ADDR): X"),
            grpc.StatusCode.UNAVAILABLE,
            "groups need policy's DirectoryService at h:1 (QM_DIRECTORY_ADDR): X",
        ),
    ],
)
async def test_directory_errors_are_mapped(
    error: Exception, code: grpc.StatusCode, details: str
) -> None:
    request = cost_pb2.TopSpendersRequest(filter=window(group_ids=["nope"]))
    assert await refusal(call(FakeStore(), FakeDirectory(error=error), request)) == (code, details)


async def test_top_spenders_limit_and_answer() -> None:
    request = cost_pb2.TopSpendersRequest(limit=1001)
    assert await refusal(call(FakeStore(), FakeDirectory(), request)) == (
        grpc.StatusCode.INVALID_ARGUMENT,
        "filter.start: must be set; filter.end: must be set; limit: must be between 0 and 1000",
    )
    resp = await call(FakeStore(), FakeDirectory(), cost_pb2.TopSpendersRequest(filter=window()))
    assert isinstance(resp, cost_pb2.TopSpendersResponse)
    assert [(s.user_id, s.micros, s.events) for s in resp.spenders] == [("ann", 16_000, 5)]
    assert resp.time_zone == "Asia/Kolkata"


@pytest.mark.parametrize(("start", "end", "said"), [
    # INTERNAL before: the day after 9999-12-31 is no date (period_of overflowed)
    (datetime(9999, 12, 1, tzinfo=UTC), datetime(9999, 12, 31, tzinfo=UTC),
     "filter.start: 9999-12-01T00:00:00+00:00 is outside years 2000 to 2200 (UTC); "
     "filter.end: 9999-12-31T00:00:00+00:00 is outside years 2000 to 2200 (UTC)"),
    (datetime(1, 1, 1, tzinfo=UTC), datetime(1, 1, 2, tzinfo=UTC),
     "filter.start: 0001-01-01T00:00:00+00:00 is outside years 2000 to 2200 (UTC); "
     "filter.end: 0001-01-02T00:00:00+00:00 is outside years 2000 to 2200 (UTC)"),
])  # fmt: skip
async def test_a_range_near_the_ends_of_time_is_refused_naming_it(
    start: datetime, end: datetime, said: str
) -> None:
    for request in (
        cost_pb2.QueryUsageRequest(
            filter=cost_pb2.UsageFilter(start=timestamp(start), end=timestamp(end)),
            granularity=cost_pb2.GRANULARITY_DAY,
        ),
        cost_pb2.TopSpendersRequest(
            filter=cost_pb2.UsageFilter(start=timestamp(start), end=timestamp(end))
        ),
    ):
        assert await refusal(call(FakeStore(), FakeDirectory(), request)) == (
            grpc.StatusCode.INVALID_ARGUMENT,
            said,
        )


@pytest.mark.parametrize(("start", "end", "nanos", "said"), [
    # was read as 08:45: an event at 08:37 fell out of [08:35, 09:00) and into [08:30, 08:35)
    (datetime(2026, 12, 1, 8, 35, tzinfo=UTC), datetime(2026, 12, 1, 9, tzinfo=UTC), (0, 0),
     "filter.start: 2026-12-01T08:35:00+00:00 is not on a quarter hour (the rollups are "
     "15-minute buckets: a range starts and ends on one); the nearest are "
     "2026-12-01T08:30:00+00:00 and 2026-12-01T08:45:00+00:00"),
    (datetime(2026, 12, 1, 8, 30, tzinfo=UTC), datetime(2026, 12, 1, 8, 35, tzinfo=UTC), (0, 0),
     "filter.end: 2026-12-01T08:35:00+00:00 is not on a quarter hour (the rollups are "
     "15-minute buckets: a range starts and ends on one); the nearest are "
     "2026-12-01T08:30:00+00:00 and 2026-12-01T08:45:00+00:00"),
    # a nanosecond off is off, and shown to the nanosecond; so is the last one before
    (datetime(2026, 12, 1, tzinfo=UTC), datetime(2026, 12, 1, 23, 59, 59, 999999, tzinfo=UTC),
     (1, 999),
     "filter.start: 2026-12-01T00:00:00.000000001+00:00 is not on a quarter hour (the "
     "rollups are 15-minute buckets: a range starts and ends on one); the nearest are "
     "2026-12-01T00:00:00+00:00 and 2026-12-01T00:15:00+00:00; "
     "filter.end: 2026-12-01T23:59:59.999999999+00:00 is not on a quarter hour (the "
     "rollups are 15-minute buckets: a range starts and ends on one); the nearest are "
     "2026-12-01T23:45:00+00:00 and 2026-12-02T00:00:00+00:00"),
])  # fmt: skip
async def test_a_range_off_the_quarter_hours_is_refused_naming_the_nearest(
    start: datetime, end: datetime, nanos: tuple[int, int], said: str
) -> None:
    f = cost_pb2.UsageFilter(start=timestamp(start), end=timestamp(end))
    f.start.nanos += nanos[0]
    f.end.nanos += nanos[1]
    store = FakeStore()
    for request in (
        cost_pb2.QueryUsageRequest(filter=f, granularity=cost_pb2.GRANULARITY_TOTAL),
        cost_pb2.TopSpendersRequest(filter=f),
    ):
        assert await refusal(call(store, FakeDirectory(), request)) == (
            grpc.StatusCode.INVALID_ARGUMENT,
            said,
        )
    assert store.asked == []


async def test_quarter_hours_of_every_zone_are_taken() -> None:
    """Kathmandu's midnight (+05:45) and Adelaide's (+10:30) are quarter hours."""
    store = FakeStore()
    for start, end in (
        (datetime(2026, 11, 30, 18, 15, tzinfo=UTC), datetime(2026, 12, 1, 18, 15, tzinfo=UTC)),
        (datetime(2026, 11, 30, 13, 30, tzinfo=UTC), datetime(2026, 12, 1, 13, 30, tzinfo=UTC)),
    ):
        f = cost_pb2.UsageFilter(start=timestamp(start), end=timestamp(end))
        await call(store, FakeDirectory(), cost_pb2.TopSpendersRequest(filter=f))
    assert len(store.asked) == 2


@pytest.mark.parametrize("name", ["user_ids", "products", "models", "cost_centers", "group_ids"])
async def test_every_filter_list_is_bounded_alike_naming_it(name: str) -> None:
    """Breaker (issue 14): 5,000 user_ids of 300 characters were answered (400k took
    2.2 s), while group_ids was capped by policy at 1,000 of 256. Each list is bounded
    here, the same way, before anything is read."""
    store = FakeStore()
    for values, said in (
        (["x" * 300] * 5000, f"filter.{name}: at most 1000 values, got 5000"),
        (["ok", "x" * 257], f"filter.{name}[1]: longer than 256 characters"),
        (["ok", "a\x00b"], f"filter.{name}[1]: must not contain NUL"),
    ):
        request = cost_pb2.QueryUsageRequest(filter=window(**{name: values}))
        code, details = await refusal(call(store, FakeDirectory(), request))
        assert code == grpc.StatusCode.INVALID_ARGUMENT
        assert details.startswith(said), details
        top = cost_pb2.TopSpendersRequest(filter=window(**{name: values}))
        assert (await refusal(call(store, FakeDirectory(), top)))[1].startswith(said)
    assert store.asked == []
    # a thousand values of 256 characters are taken (as policy takes group_ids)
    await call(store, FakeDirectory(), cost_pb2.QueryUsageRequest(
        filter=window(**{name: [f"{i:03}" + "x" * 253 for i in range(1000)]}),
        granularity=cost_pb2.GRANULARITY_TOTAL))  # fmt: skip
    assert len(store.asked) == 1
