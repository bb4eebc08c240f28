"""Bytes per remembered event id, in a worker's memory and in PostgreSQL.

    make bench-dedupe        # or: .venv/bin/python scripts/bench_dedupe.py

1. memory: --ids (default 1,000,000) id hashes added to `dedupe.SeenIds` in batches of
   --batch (5,000) over two hours, measured with tracemalloc; beside it, in the same
   run, the dict of id_hash -> epoch seconds the worker kept before (the baseline);
2. PostgreSQL: the same ids written as the worker writes them (`metering.seen_ids`,
   one row per batch) into its own PostgreSQL, and beside it a table shaped as the
   former `metering.seen_events` (a row per id, its two indexes): bytes per id from
   `pg_total_relation_size`;
3. the projection for --per-day (100 M) events a day over --partitions (12): ids are
   remembered 24-25 h, so a day's ids and an hour more, in all partitions' workers.

The last line is one JSON object.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import shutil
import sys
import time
import tracemalloc
from datetime import UTC, datetime
from pathlib import Path

import asyncpg

from devtools.discovery import migration_dirs
from devtools.localinfra.postgres import LocalPostgres
from quartermaster.db import migrate
from services.metering.dedupe import HOUR, SeenIds
from services.metering.stores.counting import _write_seen

ROOT = Path(__file__).resolve().parent.parent
T0 = 1_796_000_000


def say(text: str) -> None:
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


def batches(n: int, size: int, seed: int = 12) -> list[list[int]]:
    rng = random.Random(seed)
    ids = [rng.getrandbits(64) - 2**63 for _ in range(n)]
    return [ids[i : i + size] for i in range(0, n, size)]


def traced(build: object) -> tuple[float, object]:
    """(bytes allocated, what `build()` returned) under tracemalloc."""
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        kept = build()  # type: ignore[operator]
        return float(tracemalloc.get_traced_memory()[0] - before), kept
    finally:
        tracemalloc.stop()


def memory(parts: list[list[int]]) -> tuple[float, float, float]:
    """(bytes per id packed, bytes per id in the former dict, µs per looked-up id)."""
    n = sum(len(p) for p in parts)
    step = 2 * HOUR / len(parts)

    def packed() -> SeenIds:
        seen = SeenIds()
        for i, p in enumerate(parts):
            seen.add(p, T0 + i * step)
        seen.seen_among(parts[0][:1], T0)  # merged, as in counting
        return seen

    def former() -> dict[int, float]:
        # its own int objects, as the worker's dict held the only reference to each
        # hash (the shared `parts` were allocated before tracing began)
        out: dict[int, float] = {}
        for i, p in enumerate(parts):
            at = T0 + i * step
            out.update(
                dict.fromkeys(
                    (
                        int.from_bytes(h.to_bytes(8, "big", signed=True), "big", signed=True)
                        for h in p
                    ),
                    at,
                )
            )
        return out

    used, seen = traced(packed)
    before, _ = traced(former)
    assert isinstance(seen, SeenIds)
    query = parts[-1] + [h ^ 1 for h in parts[0]]  # half counted, half new
    t = time.perf_counter()
    found = seen.seen_among(query, T0)
    lookup_us = (time.perf_counter() - t) * 1e6 / len(query)
    assert found >= set(parts[-1])
    return used / n, before / n, lookup_us


async def in_postgres(url: str, parts: list[list[int]]) -> tuple[float, float]:
    """(bytes per id in metering.seen_ids, bytes per id in a seen_events-shaped table)."""
    n = sum(len(p) for p in parts)
    conn = await asyncpg.connect(url)
    try:
        for i, p in enumerate(parts):
            async with conn.transaction():
                await _write_seen(conn, i % 3, dict.fromkeys(p, float(T0 + i)))
        await conn.execute(
            "CREATE TABLE bench_seen_events (partition integer NOT NULL, id_hash bigint"
            " NOT NULL, seen_at timestamptz NOT NULL, PRIMARY KEY (partition, id_hash));"
            "CREATE INDEX bench_seen_events_at ON bench_seen_events (seen_at)"
        )
        now = datetime.now(UTC)
        for i, p in enumerate(parts):
            await conn.execute(
                "INSERT INTO bench_seen_events SELECT $1, h, $3 FROM unnest($2::bigint[]) h",
                i % 3, p, now,
            )  # fmt: skip
        await conn.execute("VACUUM ANALYZE metering.seen_ids")
        await conn.execute("VACUUM ANALYZE bench_seen_events")
        packed = await conn.fetchval("SELECT pg_total_relation_size('metering.seen_ids')")
        former = await conn.fetchval("SELECT pg_total_relation_size('bench_seen_events')")
        return packed / n, former / n
    finally:
        await conn.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--ids", type=int, default=1_000_000)
    parser.add_argument("--batch", type=int, default=5_000, help="ids a committed batch")
    parser.add_argument("--per-day", type=float, default=100e6, help="events a day")
    parser.add_argument("--partitions", type=int, default=12)
    ns = parser.parse_args()
    parts = batches(ns.ids, ns.batch)
    say(f"memory: {ns.ids:,} ids in batches of {ns.batch:,} ...")
    per_id, before_id, lookup_us = memory(parts)
    say(f"  packed {per_id:.1f} bytes an id (the former dict: {before_id:.1f}); "
        f"look-up {lookup_us:.2f} us an id")  # fmt: skip
    run_dir = ROOT / ".run" / f"bench-dedupe-{os.getpid()}"
    pg = LocalPostgres(run_dir / "pg", durable=False, fresh=True)
    try:
        pg.start()
        migrate(pg.url, migration_dirs())
        pg_id, pg_before = asyncio.run(in_postgres(pg.url, parts))
    finally:
        pg.stop()
        shutil.rmtree(run_dir, ignore_errors=True)
    say(f"PostgreSQL: {pg_id:.1f} bytes an id (a row an id, as before: {pg_before:.1f})")
    remembered = ns.per_day * 25 / 24  # a day's ids and at most an hour more
    result = {
        "ids": ns.ids,
        "batch": ns.batch,
        "memory_bytes_per_id": round(per_id, 2),
        "memory_bytes_per_id_before": round(before_id, 1),
        "lookup_us_per_id": round(lookup_us, 3),
        "postgres_bytes_per_id": round(pg_id, 2),
        "postgres_bytes_per_id_before": round(pg_before, 1),
        "events_per_day": ns.per_day,
        "partitions": ns.partitions,
        "projected_memory_gb_all_workers": round(remembered * per_id / 1e9, 3),
        "projected_memory_gb_per_partition": round(remembered * per_id / ns.partitions / 1e9, 3),
        "projected_memory_gb_before": round(remembered * before_id / 1e9, 2),
        "projected_postgres_gb": round(remembered * pg_id / 1e9, 3),
        "projected_postgres_gb_before": round(remembered * pg_before / 1e9, 2),
    }
    say(f"projection, {ns.per_day:,.0f} events a day over {ns.partitions} partitions: "
        f"{result['projected_memory_gb_all_workers']} GB of memory in all workers "
        f"(before: {result['projected_memory_gb_before']} GB), "
        f"{result['projected_postgres_gb']} GB in PostgreSQL "
        f"(before: {result['projected_postgres_gb_before']} GB)")  # fmt: skip
    sys.stdout.write(json.dumps(result) + "\n")


if __name__ == "__main__":
    main()
