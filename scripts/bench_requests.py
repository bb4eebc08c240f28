"""The requests service's speed with 100,000 past requests in its table.

    make bench-requests      # or: .venv/bin/python scripts/bench_requests.py [--past N ...]

On its own PostgreSQL and broker (free ports) it seeds --past decided requests (spread
over 10,000 requesters), --awaiting pending ones waiting on one approver ("lead") and
--others pending ones waiting on 20 other managers, and a directory of --users people
with 20 managers. Then it starts, each as its own process like a deployment, the real
policy server, the Cost API and the requests service, and drives RequestService over
gRPC from this process with --concurrency calls in flight: Create (a console acting for
a person, as a delegate; routing asks policy's directory, the standing asks GetBudget
and the Cost API) followed by Decide (their manager approves), for --seconds. Then
ListAwaitingMe for the approver with the pending requests, one call at a time (its
latency alone), --lists times, each after a `Get` of one of them (the same path's
cheapest call, one at a time under the same load: what the list adds shows beside it).

**Baseline**: `Get` of one request by id through the same server, credential and
mapping, at the same concurrency: what any call costs before the work of a create or
decide. The last line is one JSON object.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import shutil
import statistics
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import asyncpg

from devtools.localinfra import free_port
from devtools.localinfra.health import wait_serving
from devtools.localinfra.process import ChildProcess
from devtools.localinfra.stack import open_infra
from quartermaster.grpcclient import bearer, open_channel
from quartermaster.money import MICROS_PER_CREDIT as C
from quartermaster.v1 import policy_pb2, policy_pb2_grpc, requests_pb2, requests_pb2_grpc
from services.policy.decide import Enforcement
from services.policy.stores.limits import LimitStore
from services.requests.mapping import listed_pb, page_pb
from services.requests.standing import PastRequest, Standing
from services.requests.stores.codec import request_of, standing_json
from services.requests.stores.requests import LISTED, listed_of_row

ROOT = Path(__file__).resolve().parent.parent
WORKSPACE = "bench"
CONSOLE = "bench-console-token-0123456789"
READER = "bench-reader-token-0123456789"
ADMIN = "bench-admin-token-0123456789"
TOKENS = f"console:delegate:{CONSOLE},reader:reader:{READER},ops:admin:{ADMIN}"
MANAGERS = 20


def say(text: str) -> None:
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


def acting(user: str) -> tuple[tuple[str, str], ...]:
    return (*bearer(CONSOLE), ("qm-on-behalf-of", user))


def standing() -> str:
    """A standing as the service keeps one: spend by product and model, and 20 past
    requests (what the approver sees in Get; lists leave the history out)."""
    at = datetime.now(UTC)
    past = tuple(PastRequest(f"past-{i}", 5 * C, "approved", at, 4 * C) for i in range(20))
    return standing_json(Standing(90 * C, 100 * C, "month", (("chat", 60 * C), ("codex", 30 * C)),
                                  (("gpt-5", 60 * C), ("claude-sonnet-4-5", 30 * C)), 70 * C, at,
                                  past))  # fmt: skip


def steps(approver: str) -> str:
    return json.dumps([{"name": "manager", "approvers": [approver], "required": 1,
                        "started_at": datetime.now(UTC).isoformat(), "approved_by": [],
                        "reminded": False, "escalations": 0, "chain": []}])  # fmt: skip


async def seed(url: str, past: int, awaiting: int, others: int) -> None:
    """Past requests in final states, and pending ones awaiting `lead` and others."""
    conn = await asyncpg.connect(url)
    try:
        await conn.execute(
            """
            INSERT INTO requests.requests (workspace_id, request_id, requester, amount_micros,
                duration_seconds, justification, state, version, steps, granted_micros,
                granted_seconds, created_at, expires_at, decided_by, decided_at)
            SELECT $1, 'past-' || i, 'user-' || (i % 10000), 1000000 * (1 + i % 90), 86400,
                   'past work', (ARRAY['approved', 'denied', 'ended', 'cancelled', 'expired',
                   'revoked'])[1 + i % 6], 2, $3::jsonb, 1000000, 3600,
                   now() - make_interval(mins => i), now() - make_interval(mins => i - 600),
                   'mgr-' || (i % 20), now() - make_interval(mins => i - 5)
            FROM generate_series(1, $2) i
            """,
            WORKSPACE, past, steps("mgr-0"),
        )  # fmt: skip
        for prefix, count, approver in (("wait", awaiting, "lead"), ("other", others, "")):
            await conn.execute(
                """
                INSERT INTO requests.requests (workspace_id, request_id, requester,
                    amount_micros, duration_seconds, justification, state, version, steps,
                    granted_micros, granted_seconds, created_at, expires_at, next_due_at,
                    standing)
                SELECT $1, $2 || '-' || i, 'user-' || (i % 10000), 5000000, 86400, 'eval',
                       'pending', 1,
                       jsonb_set($4::jsonb, '{0,approvers}',
                                 to_jsonb(ARRAY[coalesce(nullif($5, ''), 'mgr-' || (i % 20))])),
                       5000000, 86400, now() - make_interval(secs => i), now() + interval '7 days',
                       now() + interval '1 day', $6::jsonb
                FROM generate_series(1, $3) i
                """,
                WORKSPACE, prefix, count, steps("x"), approver, standing(),
            )  # fmt: skip
        # each pending request's wire form, as the store writes it with every change
        pending = f"SELECT {LISTED} FROM requests.requests r WHERE r.state = 'pending'"
        rows = await conn.fetch(pending)
        await conn.executemany(
            "UPDATE requests.requests SET listed = $3 WHERE workspace_id = $1 AND request_id = $2",
            [(WORKSPACE, r["request_id"], listed_pb(request_of(r)).SerializeToString())
             for r in rows],
        )  # fmt: skip
        # who each pending request waits on, as the store writes it with every change
        await conn.execute(
            """
            INSERT INTO requests.awaiting (workspace_id, user_id, request_id, created_at)
            SELECT r.workspace_id, a.user_id, r.request_id, r.created_at
            FROM requests.requests r,
                 jsonb_array_elements_text(r.steps -> r.current_step -> 'approvers') a(user_id)
            WHERE r.state = 'pending'
            """
        )
        await conn.execute("ANALYZE requests.requests")
        await conn.execute("ANALYZE requests.awaiting")
    finally:
        await conn.close()


AWAITING_SQL = f"""
SELECT {LISTED} FROM requests.awaiting a JOIN requests.requests r USING (workspace_id, request_id)
WHERE a.workspace_id = $1 AND a.user_id = $2 ORDER BY a.created_at, a.request_id LIMIT 50
"""


async def plan(url: str) -> tuple[float, bool, float]:
    """The awaiting query's execution time in PostgreSQL alone (ms; the store's query,
    page 1), whether it used the awaiting_by_user index, and the Python work of
    answering its rows (ms: rows to requests to a serialized page, as the servicer)."""
    conn = await asyncpg.connect(url)
    try:
        for _ in range(3):  # warm
            rows = await conn.fetch(AWAITING_SQL, WORKSPACE, "lead")
        explain = "EXPLAIN (ANALYZE, FORMAT JSON) " + AWAITING_SQL
        raw = await conn.fetchval(explain, WORKSPACE, "lead")
        found = json.loads(raw)[0]
        maps = []
        for _ in range(200):
            t = time.perf_counter()
            page_pb([listed_of_row(r) for r in rows], "").SerializeToString()
            maps.append((time.perf_counter() - t) * 1000)
        return float(found["Execution Time"]), "awaiting_by_user" in raw, statistics.median(maps)
    finally:
        await conn.close()


def p(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else 0.0


async def drive(stub: requests_pb2_grpc.RequestServiceAsyncStub, ns: argparse.Namespace,
                users: int) -> tuple[list[float], list[float], float]:  # fmt: skip
    """Create + Decide pairs at --concurrency for --seconds: (create ms, decide ms, s)."""
    creates: list[float] = []
    decides: list[float] = []
    stop = time.monotonic() + ns.seconds
    counter = iter(range(10**9))

    async def worker() -> None:
        while time.monotonic() < stop:
            i = next(counter)
            user, manager = f"bench-{i % users}", f"mgr-{i % users % MANAGERS}"
            t = time.perf_counter()
            made = await stub.Create(requests_pb2.CreateCreditRequest(
                amount_micros=5 * C, duration_seconds=3600, justification="bench run"),
                metadata=acting(user), timeout=30)  # fmt: skip
            creates.append((time.perf_counter() - t) * 1000)
            t = time.perf_counter()
            await stub.Decide(requests_pb2.DecideCreditRequest(
                request_id=made.request_id, version=made.version, vote=requests_pb2.VOTE_APPROVE),
                metadata=acting(manager), timeout=30)  # fmt: skip
            decides.append((time.perf_counter() - t) * 1000)

    began = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(ns.concurrency)))
    return creates, decides, time.perf_counter() - began


async def baseline(stub: requests_pb2_grpc.RequestServiceAsyncStub, ns: argparse.Namespace,
                   ids: list[str]) -> tuple[list[float], float]:  # fmt: skip
    gets: list[float] = []
    stop = time.monotonic() + ns.seconds

    async def worker() -> None:
        while time.monotonic() < stop:
            t = time.perf_counter()
            await stub.Get(requests_pb2.GetCreditRequest(request_id=random.choice(ids)),
                           metadata=bearer(ADMIN), timeout=30)  # fmt: skip
            gets.append((time.perf_counter() - t) * 1000)

    began = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(ns.concurrency)))
    return gets, time.perf_counter() - began


def spawn(name: str, module: str, env: dict[str, str], run_dir: Path) -> ChildProcess:
    proc = ChildProcess(name, [sys.executable, "-m", module], run_dir / f"{name}.log",
                        env=env, cwd=ROOT)  # fmt: skip
    proc.start()
    return proc


async def main_async(ns: argparse.Namespace) -> dict[str, object]:
    run_dir = ROOT / ".run" / f"bench-requests-{os.getpid()}"
    say("load average (1, 5, 15 min) at the start: "
        + ", ".join(f"{x:.1f}" for x in os.getloadavg()))  # fmt: skip
    procs: list[ChildProcess] = []
    try:
        with open_infra(run_dir, durable=False,
                        partitions=3) as infra:  # fmt: skip
            t = time.perf_counter()
            await seed(infra.database_url, ns.past, ns.awaiting, ns.others)
            say(f"seeded {ns.past:,} past and {ns.awaiting + ns.others:,} pending requests "
                f"in {time.perf_counter() - t:.1f}s")  # fmt: skip
            sql_ms, indexed, map_ms = await plan(infra.database_url)
            say(f"awaiting query in PostgreSQL alone: {sql_ms:.2f} ms, index used: {indexed}; "
                f"mapping its page of 50 in Python: {map_ms:.2f} ms (median)")  # fmt: skip
            pool = await asyncpg.create_pool(infra.database_url, min_size=1, max_size=2)
            await LimitStore(pool, WORKSPACE).set_workspace_default(100 * C, Enforcement.HARD,
                                                                    "bench")  # fmt: skip
            await pool.close()
            ports = {k: free_port() for k in ("policy", "usage", "requests")}
            addr = {k: f"127.0.0.1:{v}" for k, v in ports.items()}
            env = {**os.environ, **infra.env(), "QM_WORKSPACE_ID": WORKSPACE, "QM_TOKENS": TOKENS,
                   "QM_LOG_LEVEL": "WARNING", "QM_POLICY_ADDR": addr["policy"],
                   "QM_USAGE_API_ADDR": addr["usage"], "QM_DIRECTORY_ADDR": addr["policy"],
                   "QM_DIRECTORY_TOKEN": READER, "QM_REQUESTS_ADDR": addr["requests"],
                   "QM_REQUESTS_POLICY_ADDR": addr["policy"],
                   "QM_REQUESTS_USAGE_API_ADDR": addr["usage"],
                   "QM_REQUESTS_CLIENT_TOKEN": READER, "QM_REQUESTS_RULES": "manager:1:0",
                   "QM_METERING_METRICS_ADDR": ""}  # fmt: skip
            procs.append(spawn("policy", "services.policy", env, run_dir))
            await wait_serving(addr["policy"], None, procs[-1], 120)
            people = [{"user_id": f"bench-{i}", "manager_id": f"mgr-{i % MANAGERS}"}
                      for i in range(ns.users)]  # fmt: skip
            doc = {"users": [*people, *({"user_id": f"mgr-{m}"} for m in range(MANAGERS))]}
            async with open_channel(addr["policy"], None) as ch:
                await policy_pb2_grpc.PolicyAdminServiceStub(ch).ImportDirectory(
                    policy_pb2.ImportDirectoryRequest(format="json",
                                                      document=json.dumps(doc).encode()),
                    metadata=bearer(ADMIN), timeout=60)  # fmt: skip
            procs.append(spawn("cost-api", "services.metering.api", env, run_dir))
            await wait_serving(addr["usage"], None, procs[-1], 120)
            procs.append(spawn("requests", "services.requests", env, run_dir))
            await wait_serving(addr["requests"], None, procs[-1], 120)
            async with open_channel(addr["requests"], None) as ch:
                stub = requests_pb2_grpc.RequestServiceStub(ch)
                await drive(stub, argparse.Namespace(seconds=1.0, concurrency=2), ns.users)
                creates, decides, took = await drive(stub, ns, ns.users)
                ids = [f"past-{i}" for i in range(1, ns.past + 1)]
                gets, got_took = await baseline(stub, ns, ids)
                lists, one_gets = [], []
                for i in range(ns.lists):
                    # a Get between lists: the same call path, one call at a time, under
                    # the same load, so the list's own cost shows beside it
                    t = time.perf_counter()
                    one = f"wait-{i % max(1, min(50, ns.awaiting)) + 1}"
                    await stub.Get(requests_pb2.GetCreditRequest(request_id=one),
                                   metadata=bearer(ADMIN), timeout=30)  # fmt: skip
                    one_gets.append((time.perf_counter() - t) * 1000)
                    t = time.perf_counter()
                    mine = requests_pb2.ListCreditRequests(limit=50)
                    page = await stub.ListAwaitingMe(mine, metadata=acting("lead"), timeout=30)
                    lists.append((time.perf_counter() - t) * 1000)
                assert len(page.requests) == min(50, ns.awaiting), len(page.requests)
    finally:
        for proc in reversed(procs):
            proc.stop()
        shutil.rmtree(run_dir, ignore_errors=True)
    pairs = len(decides)
    out = {
        "past_requests": ns.past, "pending": ns.awaiting + ns.others,
        "concurrency": ns.concurrency, "pairs": pairs,
        "create_decide_pairs_per_s": round(pairs / took, 1),
        "create_p50_ms": round(p(creates, 0.5), 1), "create_p99_ms": round(p(creates, 0.99), 1),
        "decide_p50_ms": round(p(decides, 0.5), 1), "decide_p99_ms": round(p(decides, 0.99), 1),
        "get_per_s": round(len(gets) / got_took, 1), "get_p99_ms": round(p(gets, 0.99), 1),
        "awaiting_me": ns.awaiting, "awaiting_p50_ms": round(statistics.median(lists), 2),
        "awaiting_p99_ms": round(p(lists, 0.99), 2), "awaiting_sql_ms": round(sql_ms, 2),
        "awaiting_index_used": indexed, "awaiting_map_ms": round(map_ms, 2),
        "get_one_at_a_time_p50_ms": round(statistics.median(one_gets), 2),
        "get_one_at_a_time_p99_ms": round(p(one_gets, 0.99), 2),
        "load_average": os.getloadavg()[0],
    }  # fmt: skip
    say(f"create + decide: {out['create_decide_pairs_per_s']} pairs/s at concurrency "
        f"{ns.concurrency}; create p99 {out['create_p99_ms']} ms, decide p99 "
        f"{out['decide_p99_ms']} ms")  # fmt: skip
    say(f"baseline Get: {out['get_per_s']} calls/s, p99 {out['get_p99_ms']} ms")
    say(f"ListAwaitingMe with {ns.awaiting:,} pending for the approver: p50 "
        f"{out['awaiting_p50_ms']} ms, p99 {out['awaiting_p99_ms']} ms; a Get between them, "
        f"one call at a time: p50 {out['get_one_at_a_time_p50_ms']} ms, p99 "
        f"{out['get_one_at_a_time_p99_ms']} ms")  # fmt: skip
    say("load average (1, 5, 15 min) at the end: "
        + ", ".join(f"{x:.1f}" for x in os.getloadavg()))  # fmt: skip
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--past", type=int, default=100_000)
    parser.add_argument("--awaiting", type=int, default=1000)
    parser.add_argument("--others", type=int, default=9000)
    parser.add_argument("--users", type=int, default=1000)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--lists", type=int, default=500)
    ns = parser.parse_args()
    sys.stdout.write(json.dumps(asyncio.run(main_async(ns))) + "\n")


if __name__ == "__main__":
    main()
