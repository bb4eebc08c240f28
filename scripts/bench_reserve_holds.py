"""Reserve's cost beside many open holds (issue 14): store-level Reserve latency with
N open holds of one flooding user in a pool, beside the baseline with none.

    .venv/bin/python scripts/bench_reserve_holds.py [--holds 0,2000,10000] [--calls 200]

On its own PostgreSQL and broker (free ports) it writes the holds straight to the
table, then times ReservationStore.reserve (lock, sums, insert + NOTIFY, commit) one
call at a time for: another user outside the pool, a member of the pool (whose
Reserve sums the pool's holds), and the flooding user (the cap lifted). "old rows"
times the read the store did before (every open hold of the user and their pools
into Python) for the pool member, under the same lock. Medians in ms; the last line
is one JSON object.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import statistics
import time
import uuid
from pathlib import Path

import asyncpg

from devtools.localinfra.stack import open_infra
from quartermaster.db import connect_pool
from services.policy.reservations import Held
from services.policy.stores.reservations import Periods, ReservationStore

ROOT = Path(__file__).resolve().parent.parent
KEY = "2026-11"
OLD_READ = (
    "SELECT * FROM policy.reservations WHERE workspace_id = $1 AND (request_id = $4 OR"
    " (released_at IS NULL AND expires_at > now() AND (user_id = $2 OR pools && $3::text[])))"
)


class Admit:
    admitted = True

    def __init__(self, held: Held) -> None:
        self.held = held


async def _median_ms(calls: int, one: object) -> float:
    took = []
    for i in range(calls):
        t = time.perf_counter()
        await one(i)  # type: ignore[operator]
        took.append((time.perf_counter() - t) * 1000)
    return round(statistics.median(took), 2)


async def _round(pool: asyncpg.Pool, holds: int, calls: int) -> dict[str, float]:
    ws = f"bench-{uuid.uuid4().hex[:6]}"
    store = ReservationStore(pool, ws)
    await pool.execute(
        "INSERT INTO policy.reservations (reservation_id, workspace_id, user_id, request_id,"
        " pools, estimated_micros, expires_at) SELECT gen_random_uuid(), $1, 'flood',"
        " 'f-' || i, '{big}', 1, now() + interval '1 hour' FROM generate_series(1, $2) i",
        ws, holds,
    )  # fmt: skip
    await pool.execute("ANALYZE policy.reservations")
    lifted = Periods(KEY, (KEY,), (), max_open=10**9)

    def reserve(user: str, pools: tuple[str, ...]) -> object:
        periods = lifted if pools else Periods(KEY, (), (), max_open=10**9)
        return lambda i: store.reserve(
            user, pools, f"{user}-{uuid.uuid4().hex}", 1, 3600, Admit, periods
        )

    async def old(i: int) -> None:
        async with pool.acquire() as conn, conn.transaction():
            await conn.fetch(OLD_READ, ws, "member", ["big"], f"x-{i}")

    out = {
        "other user": await _median_ms(calls, reserve("other", ())),
        "pool member": await _median_ms(calls, reserve("member", ("big",))),
        "old rows (pool member)": await _median_ms(calls, old),
        "flooding user": await _median_ms(calls, reserve("flood", ("big",))),
    }
    await pool.execute("DELETE FROM policy.reservations WHERE workspace_id = $1", ws)
    return out


async def bench(url: str, holds: list[int], calls: int) -> dict[str, dict[str, float]]:
    pool = await connect_pool(url)
    try:
        results = {}
        for n in holds:
            results[str(n)] = got = await _round(pool, n, calls)
            print(f"{n:>7,} open holds: " + ", ".join(f"{k} {v} ms" for k, v in got.items()))  # noqa: T201
        return results
    finally:
        await pool.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--holds", default="0,2000,10000")
    ap.add_argument("--calls", type=int, default=200)
    ns = ap.parse_args()
    holds = [int(h) for h in ns.holds.split(",")]
    run_dir = ROOT / ".run" / f"bench-holds-{os.getpid()}"
    run_dir.mkdir(parents=True, exist_ok=True)
    try:
        with open_infra(run_dir, durable=False, partitions=1) as infra:
            results = asyncio.run(bench(infra.database_url, holds, ns.calls))
    finally:
        shutil.rmtree(run_dir, ignore_errors=True)
    print(json.dumps(results))  # noqa: T201


if __name__ == "__main__":
    main()
