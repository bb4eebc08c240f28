"""Cost API speed: a 30-day query over 10,000 users.

    make bench-costs      # or: .venv/bin/python scripts/bench_costs.py

Seeds metering.rollups_15m on its own PostgreSQL (free port) with --users people,
each active --hours-per-day hours a day on --models models for --days days, then
times QueryUsage (group by user, whole range; group by model per day) and TopSpenders
through the real gRPC server, --runs times each, in --rounds rounds on the same seed
(each printed with the load average at its end: the machine's cores are shared, and
seeding 10,000 users takes many minutes). The baseline, in the same run on the
same data: by model per day with the SQL before issue 13 item 4 (`baseline_source`:
the changed days as a CTE the planner guessed at one a day, so its range join at
millions of rows), alternating with the current SQL call by call. The last line is one JSON object.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import statistics
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import asyncpg

from devtools.localinfra.stack import open_infra
from quartermaster.grpcclient import open_channel
from quartermaster.v1 import cost_pb2, cost_pb2_grpc
from quartermaster.wire import timestamp
from services.metering import api
from services.metering.compaction import compact
from services.metering.cost_query import DEFAULT_LIMIT, Granularity, UsageFilter
from services.metering.settings import MeteringSettings
from services.metering.stores import usage

ROOT = Path(__file__).resolve().parent.parent
TOKEN = "bench-reader-token-0123456789"
AUTH = (("authorization", f"Bearer {TOKEN}"),)


def say(text: str) -> None:
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


async def seed(url: str, users: int, days: int, hours: int, models: int, end: datetime) -> int:
    conn = await asyncpg.connect(url)
    try:
        await conn.execute(
            """
            INSERT INTO metering.rollups_15m (bucket, user_id, product, model, cost_center,
                workspace_id, partition, input_tokens, cached_input_tokens, output_tokens,
                reasoning_tokens, micros, events, fallback_events, cache_write_tokens,
                cache_write_1h_tokens, audio_input_tokens, audio_output_tokens)
            SELECT $1::timestamptz - make_interval(days => d + 1)
                       + make_interval(hours => (h * 3 + u) % 24),
                   'user-' || u, 'chat', 'model-' || m, 'cc-' || (u % 50), 'bench', u % 3,
                   1000 + u, 100, 300, 0, 5000 + u * 3 + m, 2, 0, 50, 20, 10 * m, 5 * m
            FROM generate_series(0, $2 - 1) u, generate_series(0, $3 - 1) d,
                 generate_series(0, $4 - 1) h, generate_series(0, $5 - 1) m
            """,
            end, users, days, hours, models,
        )  # fmt: skip
        # the days metering would have marked as changed, for compaction to sum
        await conn.execute(
            """
            INSERT INTO metering.rollup_days (partition, day, version)
            SELECT DISTINCT partition, date_trunc('day', bucket, 'UTC'), 1
            FROM metering.rollups_15m
            """
        )
        await conn.execute("ANALYZE metering.rollups_15m")
        count: int = await conn.fetchval("SELECT count(*) FROM metering.rollups_15m")
    finally:
        await conn.close()
    # the daily rollups, as the Cost API's compaction builds them (UTC workspace)
    pool = await asyncpg.create_pool(url)
    try:
        t = time.perf_counter()
        daily = await compact(pool, ZoneInfo("UTC"))
        say(f"compacted into {daily:,} daily rows in {time.perf_counter() - t:.1f}s")
        await pool.execute("ANALYZE metering.rollups_daily")
    finally:
        await pool.close()
    return count


def baseline_source(resolved: dict[str, str], dirty: list[tuple[datetime, datetime]]) -> str:
    """The Cost API's rows as read before the changed days were read first (issue 13,
    item 4): a CTE of them, guessed at one per day of the range, joined by range."""
    columns, filters = usage._COLUMNS, usage._FILTERS
    return f"""
    WITH dirty AS (
        SELECT DISTINCT r.day,
               ((r.day AT TIME ZONE $7) + interval '1 day') AT TIME ZONE $7 AS next
        FROM metering.rollup_days r
        LEFT JOIN metering.compacted_days c ON c.day = r.day AND c.partition = r.partition
        WHERE r.day >= $9 AND r.day < $10 AND c.version IS DISTINCT FROM r.version
    ),
    ids AS (SELECT * FROM unnest($12::text[], $13::text[]) AS i(reported, resolved)),
    src AS (
        SELECT bucket AS t, {columns} FROM metering.rollups_15m
        WHERE ((bucket >= $1 AND bucket < $9) OR (bucket >= $10 AND bucket < $2)) AND {filters}
        UNION ALL
        SELECT q.bucket AS t, {columns} FROM metering.rollups_15m q
        JOIN dirty d ON q.bucket >= d.day AND q.bucket < d.next
        WHERE {filters}
        UNION ALL
        SELECT day AS t, {columns} FROM metering.rollups_daily
        WHERE day >= $9 AND day < $10 AND day NOT IN (SELECT day FROM dirty) AND {filters}
    )
"""


async def explain(url: str, start: datetime, end: datetime) -> None:
    """EXPLAIN ANALYZE of by model per day, current SQL and baseline (--explain)."""
    f = UsageFilter(start, end)
    args = usage._args(f, ZoneInfo("UTC"), DEFAULT_LIMIT + 1, True, None, {})
    conn = await asyncpg.connect(url)
    try:
        for name, source in (
            ("current", usage._source),
            ("baseline", baseline_source),
        ):
            sql = source({}, []) + usage._pooled(Granularity.DAY, ["model"])
            plan = await conn.fetch(f"EXPLAIN (ANALYZE, BUFFERS) {sql}", *args)
            say(f"-- {name}\n" + "\n".join(r[0] for r in plan))
    finally:
        await conn.close()


async def timed(call: object, runs: int) -> list[float]:
    out = []
    for _ in range(runs):
        t = time.perf_counter()
        await call()  # type: ignore[operator]
        out.append((time.perf_counter() - t) * 1000)
    return out


async def main_async(ns: argparse.Namespace) -> dict[str, object]:
    run_dir = ROOT / ".run" / f"bench-costs-{os.getpid()}"
    end = datetime.now(UTC).replace(minute=0, second=0, microsecond=0)
    try:
        with open_infra(run_dir, durable=False, partitions=3) as infra:
            t = time.perf_counter()
            rows = await seed(infra.database_url, ns.users, ns.days, ns.hours_per_day,
                              ns.models, end)  # fmt: skip
            say(f"seeded {rows:,} 15-minute rollup rows in {time.perf_counter() - t:.1f}s"
                f" (load average {os.getloadavg()[0]:.1f})")  # fmt: skip
            if ns.explain:
                await explain(infra.database_url, end - timedelta(days=ns.days), end)
            tokens = {"QM_TOKENS": f"bench:reader:{TOKEN}"}
            settings = MeteringSettings.from_env({**os.environ, **infra.env(), **tokens})
            running = await api.start(settings, addr="127.0.0.1:0")
            try:
                target = f"127.0.0.1:{running.served.port}"
                async with open_channel(target, settings.client_tls) as ch:
                    stub = cost_pb2_grpc.UsageServiceStub(ch)
                    window = cost_pb2.UsageFilter(
                        start=timestamp(end - timedelta(days=ns.days)), end=timestamp(end)
                    )
                    by_user = cost_pb2.QueryUsageRequest(
                        filter=window, group_by=[cost_pb2.DIMENSION_USER],
                        granularity=cost_pb2.GRANULARITY_TOTAL, limit=100_000,
                    )  # fmt: skip
                    by_model_day = cost_pb2.QueryUsageRequest(
                        filter=window, group_by=[cost_pb2.DIMENSION_MODEL],
                        granularity=cost_pb2.GRANULARITY_DAY,
                    )  # fmt: skip
                    first = await stub.QueryUsage(by_user, metadata=AUTH)
                    assert len(first.rows) == ns.users, len(first.rows)
                    assert first.rows[0].cache_write_1h_tokens > 0  # the newer columns, summed
                    top = cost_pb2.TopSpendersRequest(filter=window, limit=10)
                    rounds = []
                    for i in range(ns.rounds):
                        rounds.append(await one_round(stub, by_user, by_model_day, top, ns.runs))
                        say(f"-- round {i + 1} of {ns.rounds}, load average {rounds[-1]['load']}")
                        for name, q in rounds[-1]["ms"].items():
                            say(f"{name:>18}: median {statistics.median(q):7.1f} ms,"
                                f" min {min(q):7.1f} ms, max {max(q):7.1f} ms")  # fmt: skip
            finally:
                await running.stop(1)
    finally:
        shutil.rmtree(run_dir, ignore_errors=True)
    medians = [{k: round(statistics.median(q), 1) for k, q in r["ms"].items()} for r in rounds]
    out: dict[str, object] = {"rollup_rows": rows, "users": ns.users, "days": ns.days}
    for key, name in (("query_by_user", "by user, 30 days"),
                      ("query_by_model_day", "by model per day"),
                      ("query_by_model_day_baseline", "baseline by model"),
                      ("top_spenders", "top 10")):  # fmt: skip
        out[f"{key}_median_ms"] = [m[name] for m in medians]  # one per round
    out["by_model_day_vs_baseline"] = [
        round(m["by model per day"] / m["baseline by model"], 2) for m in medians
    ]
    out["load_average"] = [r["load"] for r in rounds]
    return out


async def one_round(
    stub: cost_pb2_grpc.UsageServiceStub, by_user: cost_pb2.QueryUsageRequest,
    by_model_day: cost_pb2.QueryUsageRequest, top: cost_pb2.TopSpendersRequest, runs: int,
) -> dict[str, Any]:  # fmt: skip
    """One round of every query, `runs` times each, with the 1-minute load average at
    its end (two shared cores: the load says how much of them the round had)."""
    query, ranking = stub.QueryUsage, stub.TopSpenders
    q1 = await timed(lambda: query(by_user, timeout=120, metadata=AUTH), runs)
    current = usage._source
    q2: list[float] = []
    q2_baseline: list[float] = []
    for _ in range(runs):  # alternating, so load drifts hit both alike
        q2 += await timed(lambda: query(by_model_day, timeout=120, metadata=AUTH), 1)
        usage._source = baseline_source
        try:
            q2_baseline += await timed(lambda: query(by_model_day, timeout=120, metadata=AUTH), 1)
        finally:
            usage._source = current
    q3 = await timed(lambda: ranking(top, timeout=120, metadata=AUTH), runs)
    ms = {"by user, 30 days": q1, "by model per day": q2, "baseline by model": q2_baseline,
          "top 10": q3}  # fmt: skip
    return {"ms": ms, "load": round(os.getloadavg()[0], 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--users", type=int, default=10_000)
    parser.add_argument("--days", type=int, default=30)
    parser.add_argument("--hours-per-day", type=int, default=8)
    parser.add_argument("--models", type=int, default=2)
    parser.add_argument("--runs", type=int, default=5, help="calls of each query per round")
    parser.add_argument("--rounds", type=int, default=3,
                        help="rounds on the same seed, each with its load average")  # fmt: skip
    parser.add_argument("--explain", action="store_true", help="print the query plans too")
    ns = parser.parse_args()
    sys.stdout.write(json.dumps(asyncio.run(main_async(ns))) + "\n")


if __name__ == "__main__":
    main()
