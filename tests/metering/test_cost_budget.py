"""The Cost API agrees with the budget in every time zone, at every moment (issue 13,
item 6), against a real PostgreSQL.

Each zone counts random events with the real `Meter` and `CountingStore` (what the
worker does), compacts daily rollups at one moment and counts more after it (as when
compaction lags), then asks the real `UsageStore` (what the Cost API answers from) for
every budget period the events touched: every grouping and granularity, per user and
over all users, must sum to the totals metering publishes (UsageTotal.used_micros,
which GetBudget shows unchanged), and each token class to what the events reported.
A fresh database per test: compaction reads every day changed in the database, in the
zone it is given, so it must not meet the session's rows (counted in UTC).
"""

from __future__ import annotations

import random
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from urllib.parse import urlsplit, urlunsplit
from zoneinfo import ZoneInfo, available_timezones

import asyncpg
import pytest

from devtools.discovery import migration_dirs
from devtools.localinfra.stack import Infra
from quartermaster.db import migrate
from quartermaster.partitioning import partition_of
from quartermaster.periods import PeriodKind, period_of
from quartermaster.v1 import cost_pb2, cost_pb2_grpc, policy_pb2, policy_pb2_grpc
from quartermaster.v1.usage_pb2 import ServiceTier, UsageEvent
from quartermaster.wire import from_timestamp, timestamp
from services.metering import api
from services.metering.aggregate import Meter, Record
from services.metering.compaction import compact
from services.metering.cost_query import (
    Dimension,
    Granularity,
    TopSpendersQuery,
    UsageFilter,
    UsageQuery,
)
from services.metering.pricing import PriceCatalog
from services.metering.settings import DEFAULT_PRICES, MeteringSettings
from services.metering.state import PartitionState, Total, TotalKey
from services.metering.stores.counting import CountingStore
from services.metering.stores.rollups import RollupStore
from services.metering.stores.usage import UsageStore
from tests.conftest import MeteringWorker
from tests.helpers import channel as credentialed_channel
from tests.helpers import eventually, new_user, produce_usage, usage
from tests.metering.test_aggregate import HDR, PARTITIONS

pytestmark = pytest.mark.infra
NOW = datetime(2026, 11, 30, 12, tzinfo=UTC)
FIXED = [
    "UTC", "Asia/Kolkata", "Asia/Kathmandu", "Australia/Adelaide", "Australia/Darwin",
    "Australia/Lord_Howe", "Pacific/Chatham", "America/St_Johns", "America/New_York",
    "Europe/London",
]  # fmt: skip
USERS = [u for u in (f"user-{i}" for i in range(40)) if partition_of(u, PARTITIONS) == 0][:4]
# catalog models, dated and routed forms of them, and one no catalog model names
MODELS = ["gpt-5", "gpt-5-2025-08-07", "gpt-5-mini", "o3", "claude-sonnet-4-5",
          "anthropic/claude-sonnet-4-5-20250929", "gpt-audio", "unknown-model"]  # fmt: skip


@pytest.fixture
async def fresh_db(infra: Infra) -> AsyncIterator[str]:
    """The URL of a new, migrated database in the session's cluster, dropped after."""
    name = f"qm_test_{uuid.uuid4().hex[:10]}"
    admin = await asyncpg.connect(infra.database_url)
    try:
        await admin.execute(f"CREATE DATABASE {name}")
        url = urlunsplit(urlsplit(infra.database_url)._replace(path=f"/{name}"))
        migrate(url, {"metering": migration_dirs()["metering"]})
        yield url
    finally:
        await admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        await admin.close()


class Counted:
    """Events counted into PostgreSQL the way the worker counts them, one partition."""

    def __init__(self, pool: asyncpg.Pool, tz: ZoneInfo, now: datetime = NOW) -> None:
        self.meter = Meter(
            PriceCatalog.from_file(DEFAULT_PRICES), tz, PARTITIONS, "ws",
            max_age=timedelta(days=120), dedupe_window=timedelta(hours=1), clock=lambda: now,
        )  # fmt: skip
        self.rollups = RollupStore(pool)
        self.store = CountingStore(pool, "prop", "usage", self.rollups)
        self.state = PartitionState(0, 0)

    async def count(self, events: list[bytes]) -> None:
        recs = [Record(0, self.state.next_offset + i, b"k", v, HDR) for i, v in enumerate(events)]
        plan = self.meter.plan(self.state, recs)
        assert not plan.rejects, plan.rejects
        self.state.totals.update(await self.store.load_totals(plan.keys() - set(self.state.totals)))
        self.state.rollups.update(
            await self.rollups.load(self.state.rollups_to_load(plan.rollup_keys()))
        )
        changed = self.meter.fold(self.state, plan)
        rollups = self.meter.fold_rollups(self.state, plan)
        ok = await self.store.commit(
            0, self.state.next_offset, plan.next_offset, changed, plan.new_seen, rollups
        )
        assert ok
        self.meter.apply(self.state, plan, changed, rollups)

    def budgets(self) -> dict[TotalKey, Total]:
        """What metering published: GetBudget's used_micros per (user, kind, period)."""
        return dict(self.state.totals)


# UsageEvent's token fields → the Cost API's token columns
TOKEN_COLUMNS = {
    "input_tokens": "input_tokens", "cached_input_tokens": "cached_input_tokens",
    "cache_write_input_tokens": "cache_write_tokens",
    "cache_write_1h_input_tokens": "cache_write_1h_tokens", "output_tokens": "output_tokens",
    "reasoning_tokens": "reasoning_tokens", "audio_input_tokens": "audio_input_tokens",
    "audio_output_tokens": "audio_output_tokens",
}  # fmt: skip


def token_sums(events: list[bytes], tz: ZoneInfo) -> dict[TotalKey, dict[str, int]]:
    """What the events reported, per (user, kind, period) and token column."""
    out: dict[TotalKey, dict[str, int]] = {}
    for value in events:
        e = UsageEvent.FromString(value)
        at = datetime.fromtimestamp(e.occurred_at.seconds, UTC)
        for kind in (PeriodKind.DAY, PeriodKind.MONTH):
            sums = out.setdefault((e.user_id, kind.value, period_of(kind, at, tz).key), {})
            for field, column in TOKEN_COLUMNS.items():
                sums[column] = sums.get(column, 0) + getattr(e, field)
    return out


def random_events(rnd: random.Random, users: list[str], tz: ZoneInfo) -> list[bytes]:
    out = []
    for _ in range(rnd.randint(20, 60)):
        # within 70 days before NOW, to the nanosecond; a third on a local midnight's edge
        at = NOW - timedelta(seconds=rnd.randint(0, 70 * 86_400))
        if rnd.random() < 0.33:
            at = period_of(PeriodKind.DAY, at, tz).start
        ns = int(at.timestamp()) * 1_000_000_000 + rnd.choice([0, 1, 999_999_999])
        ns -= rnd.choice([0, 1])  # the last nanosecond before the edge, or the edge
        e = usage(rnd.choice(users), model=rnd.choice(MODELS), product=rnd.choice(["chat", "ide"]),
                  input_tokens=rnd.randint(1, 3_000),
                  output_tokens=rnd.randint(0, 900))  # fmt: skip
        e.occurred_at.seconds, e.occurred_at.nanos = divmod(ns, 1_000_000_000)
        # every token class and service tier (issue 13, item 2), each a valid subset
        e.cache_write_input_tokens = rnd.randint(0, e.input_tokens // 2)
        e.cache_write_1h_input_tokens = rnd.randint(0, e.cache_write_input_tokens)
        e.audio_input_tokens = rnd.randint(0, e.input_tokens - e.cache_write_input_tokens)
        e.audio_output_tokens = rnd.randint(0, e.output_tokens)
        e.service_tier = rnd.choice(list(ServiceTier.values()))
        if rnd.random() < 0.5:
            e.attributes["cost_center"] = rnd.choice(["R&D", "Sales"])
        out.append(e.SerializeToString())
    return out


async def agree(
    store: UsageStore, rnd: random.Random, budgets: dict[TotalKey, Total],
    tokens: dict[TotalKey, dict[str, int]],
) -> int:  # fmt: skip
    """Check every touched day and month against the Cost API (money against the
    budget, tokens of every class against what the events reported); how many answers."""
    asked = 0
    by_period: dict[tuple[str, str], list[Total]] = {}
    for (user, kind, key), total in budgets.items():
        if kind == "week":
            continue
        by_period.setdefault((kind, key), []).append(total)
        f = UsageFilter(total.period_start, total.period_end, user_ids=(user,))
        [top] = await store.top_spenders(TopSpendersQuery(f), None)
        assert (top.user_id, top.micros) == (user, total.used_micros), (kind, key)
        assert top.tokens == tokens[(user, kind, key)], (kind, key)
        dims = [d for d in (Dimension.USER, Dimension.PRODUCT, Dimension.MODEL,
                            Dimension.COST_CENTER) if rnd.random() < 0.5]  # fmt: skip
        for granularity in Granularity:
            rows, _ = await store.usage(UsageQuery(f, tuple(dims), granularity), None, {})
            assert sum(r.counters["micros"] for r in rows) == total.used_micros, (
                kind, key, granularity, dims,
            )  # fmt: skip
            asked += 1
    # over all users: each user's rows add up to the user's budget, all to their sum
    for (kind, key), totals in by_period.items():
        f = UsageFilter(totals[0].period_start, totals[0].period_end)
        granularity = rnd.choice(list(Granularity))
        rows, _ = await store.usage(UsageQuery(f, (Dimension.USER, Dimension.MODEL), granularity),
                                    None, {})  # fmt: skip
        per_user: dict[str, int] = {}
        user_tokens: dict[str, dict[str, int]] = {}
        for r in rows:
            u = r.dimensions["user_id"]
            per_user[u] = per_user.get(u, 0) + r.counters["micros"]
            sums = user_tokens.setdefault(u, dict.fromkeys(TOKEN_COLUMNS.values(), 0))
            for column in sums:
                sums[column] += r.counters[column]
        want = {u: t.used_micros for (u, k, p), t in budgets.items() if (k, p) == (kind, key)}
        assert per_user == want, (kind, key, granularity)
        assert user_tokens == {u: tokens[(u, kind, key)] for u in want}, (kind, key)
        rows, _ = await store.usage(UsageQuery(f, (Dimension.PRODUCT,), granularity), None, {})
        assert sum(r.counters["micros"] for r in rows) == sum(want.values())
        asked += 2
    return asked


async def test_every_cost_api_grouping_sums_to_the_budget_in_every_zone(fresh_db: str) -> None:
    rnd = random.Random(6)
    zones = FIXED + rnd.sample(sorted(available_timezones() - set(FIXED)), 6)
    pool = await asyncpg.create_pool(fresh_db)
    asked = 0
    try:
        for zone in zones:
            tz = ZoneInfo(zone)
            await pool.execute(
                "TRUNCATE metering.rollups_15m, metering.rollups_daily, metering.totals,"
                " metering.rollup_days, metering.compacted_days, metering.offsets,"
                " metering.seen_ids"
            )
            counted = Counted(pool, tz)
            events = random_events(rnd, USERS, tz)
            await counted.count(events[: len(events) // 2])
            assert await compact(pool, tz) is not None
            # counted after compaction: those days are read from the 15-minute rows
            await counted.count(events[len(events) // 2 :])
            reported = token_sums(events, tz)
            asked += await agree(UsageStore(pool, tz), rnd, counted.budgets(), reported)
            await compact(pool, tz)  # and once compacted, from the daily rows
            asked += await agree(UsageStore(pool, tz), rnd, counted.budgets(), reported)
    finally:
        await pool.close()
    assert asked > 500


@pytest.fixture
async def kolkata(
    fresh_db: str, service_env: dict[str, str]
) -> AsyncIterator[cost_pb2_grpc.UsageServiceAsyncStub]:
    """The Cost API of a workspace in Asia/Kolkata, on the fresh database."""
    env = {**service_env, "QM_WORKSPACE_TIMEZONE": "Asia/Kolkata", "QM_DATABASE_URL": fresh_db}
    running = await api.start(MeteringSettings.from_env(env), addr="127.0.0.1:0")
    try:
        async with credentialed_channel(f"127.0.0.1:{running.served.port}") as ch:
            yield cost_pb2_grpc.UsageServiceStub(ch)
    finally:
        await running.stop(1)


async def test_an_event_at_a_quarter_past_midnight_in_kolkata_is_in_november_everywhere(
    fresh_db: str, kolkata: cost_pb2_grpc.UsageServiceAsyncStub
) -> None:
    """2026-10-31T18:45Z is Nov 1, 00:15 IST: GetBudget counts it in November, and so
    must QueryUsage by month and by day, and TopSpenders (UTC hours split it before)."""
    tz = ZoneInfo("Asia/Kolkata")
    pool = await asyncpg.create_pool(fresh_db)
    try:
        counted = Counted(pool, tz)
        user = USERS[0]
        await counted.count(
            [
                usage(
                    user, occurred_at=datetime(2026, 10, 31, 18, 45, tzinfo=UTC)
                ).SerializeToString()
            ]
        )
        budget = counted.budgets()[(user, "month", "2026-11")]
        # burn-rate baselines' read: UTC hours, whatever the zone
        hours = await counted.rollups.hourly_spend([user], NOW - timedelta(days=60), NOW)
        assert hours == {user: [(datetime(2026, 10, 31, 18, tzinfo=UTC), 6_250)]}
    finally:
        await pool.close()
    assert budget.used_micros == 6_250
    november = UsageFilter(budget.period_start, budget.period_end)
    window = cost_pb2.UsageFilter(start=timestamp(november.window()[0]),
                                  end=timestamp(november.window()[1]))  # fmt: skip
    by_month = await kolkata.QueryUsage(
        cost_pb2.QueryUsageRequest(filter=window, granularity=cost_pb2.GRANULARITY_MONTH)
    )
    assert [(from_timestamp(r.bucket_start), r.micros) for r in by_month.rows] == [
        (datetime(2026, 10, 31, 18, 30, tzinfo=UTC), 6_250)  # Nov 1, 00:00 IST
    ]
    by_day = await kolkata.QueryUsage(
        cost_pb2.QueryUsageRequest(filter=window, granularity=cost_pb2.GRANULARITY_DAY)
    )
    assert [from_timestamp(r.bucket_start) for r in by_day.rows] == [
        datetime(2026, 10, 31, 18, 30, tzinfo=UTC)
    ]
    top = await kolkata.TopSpenders(cost_pb2.TopSpendersRequest(filter=window))
    assert [(s.user_id, s.micros) for s in top.spenders] == [(user, 6_250)]


async def test_right_after_counting_the_cost_api_agrees_with_get_budget(
    infra: Infra,
    service_env: dict[str, str],
    metering: MeteringWorker,
    policy: policy_pb2_grpc.PolicyServiceAsyncStub,
) -> None:
    """The real worker and policy (UTC): usage counted after the last compaction shows
    in the Cost API as soon as in GetBudget (it showed the month at half, until daily
    rows were recompacted a minute later). Compaction here runs only when the test
    says, so nothing but the 15-minute rows can make the answers agree."""
    env = {**service_env, "QM_USAGE_COMPACT_SECONDS": "86400"}
    running = await api.start(MeteringSettings.from_env(env), addr="127.0.0.1:0")
    user = new_user()
    month = period_of(PeriodKind.MONTH, datetime.now(UTC), ZoneInfo("UTC"))
    window = cost_pb2.UsageFilter(
        start=timestamp(month.start), end=timestamp(month.end), user_ids=[user]
    )

    async def budget() -> int:
        return int((await policy.GetBudget(policy_pb2.GetBudgetRequest(user_id=user))).used_micros)

    try:
        async with credentialed_channel(f"127.0.0.1:{running.served.port}") as ch:
            stub = cost_pb2_grpc.UsageServiceStub(ch)

            async def answers() -> tuple[int, int, int]:
                top = await stub.TopSpenders(cost_pb2.TopSpendersRequest(filter=window))
                by_day = await stub.QueryUsage(cost_pb2.QueryUsageRequest(
                    filter=window, granularity=cost_pb2.GRANULARITY_DAY))  # fmt: skip
                by_month = await stub.QueryUsage(cost_pb2.QueryUsageRequest(
                    filter=window, granularity=cost_pb2.GRANULARITY_MONTH))  # fmt: skip
                return (sum(s.micros for s in top.spenders), sum(r.micros for r in by_day.rows),
                        sum(r.micros for r in by_month.rows))  # fmt: skip

            small = [usage(user, model="gpt-5-mini", input_tokens=7, output_tokens=3)
                     for _ in range(9)]  # fmt: skip
            produce_usage(infra.kafka_bootstrap, small)
            # 9 x (7 x 0.25 + 3 x 2) = 69.75 micros, rounded once: 70
            await eventually(budget, 70)
            await eventually(answers, (70, 70, 70), within=10)
            pool = await asyncpg.create_pool(infra.database_url)
            try:
                assert await compact(pool, ZoneInfo("UTC")) is not None
            finally:
                await pool.close()
            assert await answers() == (70, 70, 70)  # from the daily rows now
            produce_usage(infra.kafka_bootstrap, [usage(user) for _ in range(2)])
            await eventually(budget, 70 + 2 * 6_250)
            await eventually(answers, (12_570, 12_570, 12_570), within=10)
    finally:
        await running.stop(1)
