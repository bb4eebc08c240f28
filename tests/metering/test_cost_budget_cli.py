"""The metering CLI in a workspace in Kolkata agrees with GetBudget (issue 13, item 6):
bare dates, local times and words are read in the workspace's time zone (the Cost
API's), whatever the CLI's own QM_WORKSPACE_TIMEZONE, against a real PostgreSQL and
Cost API. The counting is test_cost_budget's (the real Meter and CountingStore)."""

from __future__ import annotations

import asyncio
import csv
import io
from datetime import UTC, datetime
from zoneinfo import ZoneInfo

import asyncpg
import pytest

from services.metering import api, cli
from services.metering.settings import MeteringSettings
from tests.helpers import TOKENS, usage
from tests.metering.test_cost_budget import USERS, Counted, fresh_db

pytestmark = pytest.mark.infra
__all__ = ["fresh_db"]  # the fixture, used here


async def test_the_cli_reads_dates_in_the_workspace_zone_and_agrees_with_get_budget(
    fresh_db: str, service_env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The newcomer's month (issue 13, item 6): in a Kolkata workspace, `usage --from
    <first of the month> --to <first of the next>` gave 20,000 of the 37,500 micros
    GetBudget shows, reading bare dates as UTC midnights. Events on each edge of
    Kolkata's Dec 1 (18:30Z) and of UTC's, to the nanosecond; every form of the same
    range (bare dates, a local time, offsets, words) and the CLI's own zone right or
    wrong (UTC: it asks again in the Cost API's) must give GetBudget's month and days."""
    tz = ZoneInfo("Asia/Kolkata")
    now = datetime(2026, 12, 1, 6, tzinfo=UTC)  # Dec 1, 11:30 in Kolkata
    user = USERS[0]
    instants = [(datetime(2026, 11, 30, 18, 29, 59, tzinfo=UTC), 999_999_999),
                (datetime(2026, 11, 30, 18, 30, tzinfo=UTC), 0),
                (datetime(2026, 11, 30, 18, 45, tzinfo=UTC), 0),
                (datetime(2026, 11, 30, 23, 59, 59, tzinfo=UTC), 999_999_999),
                (datetime(2026, 12, 1, 0, 0, tzinfo=UTC), 0)]  # fmt: skip
    events = []
    for at, nanos in instants:
        e = usage(user, occurred_at=at)
        e.occurred_at.nanos = nanos
        events.append(e.SerializeToString())
    pool = await asyncpg.create_pool(fresh_db)
    try:
        counted = Counted(pool, tz, now)
        await counted.count(events)
    finally:
        await pool.close()
    budgets = counted.budgets()
    month = budgets[(user, "month", "2026-12")].used_micros
    days = {k: budgets[(user, "day", k)].used_micros for k in ("2026-11-30", "2026-12-01")}
    assert (month, days["2026-12-01"]) == (4 * 6_250, 4 * 6_250)
    env = {**service_env, "QM_WORKSPACE_TIMEZONE": "Asia/Kolkata", "QM_DATABASE_URL": fresh_db}
    running = await api.start(MeteringSettings.from_env(env), addr="127.0.0.1:0")
    base = ["--addr", f"127.0.0.1:{running.served.port}", "--token", TOKENS["reader"]]

    async def cli_micros(*argv: str) -> dict[str, int]:
        out = io.StringIO()
        argv = (*base, *argv, "--format", "csv")
        assert await asyncio.to_thread(cli.main, argv, out, lambda: now) == 0
        rows = list(csv.DictReader(io.StringIO(out.getvalue())))
        return {r.get("bucket_start", "") or r.get("user", ""): int(r["micros"]) for r in rows}

    try:
        for local in ("Asia/Kolkata", "UTC"):
            monkeypatch.setenv("QM_WORKSPACE_TIMEZONE", local)
            for start, end in (("2026-12-01", "2027-01-01"), ("2026-12-01T00:00", "next-month"),
                               ("2026-11-30T18:30:00Z", "2027-01-01T00:00:00+05:30"),
                               ("this-month", "tomorrow")):  # fmt: skip
                total = await cli_micros("usage", "--from", start, "--to", end, "--group-by",
                                         "user,model", "--granularity", "total")  # fmt: skip
                assert sum(total.values()) == month, (local, start, end)
                assert await cli_micros("top", "--from", start, "--to", end) == {user: month}
            by_day = await cli_micros("usage", "--from", "2026-11-30", "--to", "today+1d",
                                      "--granularity", "day")  # fmt: skip
            assert by_day == {"2026-11-30T00:00:00+05:30": days["2026-11-30"],
                              "2026-12-01T00:00:00+05:30": days["2026-12-01"]}  # fmt: skip
            by_month = await cli_micros("usage", "--from", "last-month", "--to", "next-month",
                                        "--granularity", "month")  # fmt: skip
            assert by_month == {"2026-11-01T00:00:00+05:30": 6_250,
                                "2026-12-01T00:00:00+05:30": month}  # fmt: skip
    finally:
        await running.stop(1)
