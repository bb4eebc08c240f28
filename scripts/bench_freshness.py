"""Freshness: time from producing one usage event to `GetBudget` reflecting it.

Starts its own PostgreSQL, broker, metering worker (a process) and policy server on
free ports, warms up, then produces one event at a time, `--samples` times, and
polls GetBudget every millisecond until the new total shows. Prints each sample,
then one JSON line: {"samples", "median_ms", "max_ms", "min_ms"}.

    make bench-freshness            # or: .venv/bin/python scripts/bench_freshness.py
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
import uuid
from pathlib import Path

from devtools.localinfra import free_port
from devtools.localinfra.process import ChildProcess
from devtools.localinfra.stack import open_infra
from quartermaster import kafka
from quartermaster.db import connect_pool
from quartermaster.grpcclient import open_channel
from quartermaster.money import MICROS_PER_CREDIT
from quartermaster.tls import ClientTls
from quartermaster.topics import CONTENT_TYPE, PROTOBUF, Topic
from quartermaster.v1 import policy_pb2, policy_pb2_grpc, usage_pb2
from services.policy import wiring
from services.policy.decide import Enforcement
from services.policy.settings import PolicySettings
from services.policy.stores.limits import LimitStore

ROOT = Path(__file__).resolve().parent.parent
TOKEN = "bench-reader-token-0123456789"
AUTH = (("authorization", f"Bearer {TOKEN}"),)


def _event(user: str) -> bytes:
    e = usage_pb2.UsageEvent(
        event_id=str(uuid.uuid4()), user_id=user, product="bench", model="gpt-5",
        input_tokens=1000, output_tokens=500,
    )  # fmt: skip
    e.occurred_at.GetCurrentTime()
    return e.SerializeToString()


async def _measure(
    bootstrap: str, port: int, tls: ClientTls | None, samples: int, out: list[float]
) -> None:
    producer = kafka.producer(bootstrap, **{"linger.ms": 0, "acks": "all"})
    user = f"bench-{uuid.uuid4().hex[:8]}"
    async with open_channel(f"127.0.0.1:{port}", tls) as ch:
        stub = policy_pb2_grpc.PolicyServiceStub(ch)
        for i in range(samples + 3):  # the first 3 warm the path up and are not counted
            request = policy_pb2.GetBudgetRequest(user_id=user)
            before = (await stub.GetBudget(request, metadata=AUTH)).used_micros
            start = time.perf_counter()
            producer.produce(
                Topic.USAGE.value, key=user.encode(), value=_event(user),
                headers=[(CONTENT_TYPE, PROTOBUF.encode())],
            )  # fmt: skip
            producer.poll(0)
            # The first event waits for the worker to join its group and take its
            # partitions: on a loaded machine that alone took most of a minute.
            deadline = start + (180 if i == 0 else 60)
            while True:
                b = await stub.GetBudget(request, metadata=AUTH)
                if b.used_micros > before:
                    break
                if time.perf_counter() > deadline:
                    raise SystemExit(f"sample {i}: the event never showed in GetBudget")
                await asyncio.sleep(0.001)
            ms = (time.perf_counter() - start) * 1000
            if i >= 3:
                out.append(ms)
                sys.stdout.write(f"sample {i - 2:2d}: {ms:7.1f} ms\n")
    producer.flush(5)


async def _run(samples: int) -> list[float]:
    run_dir = ROOT / ".run" / f"bench-freshness-{os.getpid()}"
    workspace = f"bench-{uuid.uuid4().hex[:6]}"
    results: list[float] = []
    try:
        with open_infra(run_dir, durable=False, partitions=3) as infra:
            env = {
                **os.environ, **infra.env(), "QM_WORKSPACE_ID": workspace,
                "QM_TOKENS": f"bench:reader:{TOKEN}",
                "QM_METERING_APP_ID": f"bench-{workspace}", "QM_METERING_SESSION_TIMEOUT": "4",
                "QM_METERING_METRICS_ADDR": f"127.0.0.1:{free_port()}",
            }  # fmt: skip
            pool = await connect_pool(infra.database_url)
            await LimitStore(pool, workspace).set_workspace_default(
                1000 * MICROS_PER_CREDIT, Enforcement.HARD, "bench"
            )
            await pool.close()
            metering = ChildProcess(
                "metering", [sys.executable, "-m", "services.metering"],
                run_dir / "metering.log", env=env, cwd=ROOT,
            )  # fmt: skip
            metering.start()
            settings = PolicySettings.from_env(env)
            policy = await wiring.start(settings, addr="127.0.0.1:0")
            try:
                await asyncio.wait_for(policy.serving.wait(), 60)
                tls = settings.client_tls
                await _measure(infra.kafka_bootstrap, policy.port, tls, samples, results)
            finally:
                await policy.stop(1)
                metering.stop()
    finally:
        shutil.rmtree(run_dir, ignore_errors=True)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--samples", type=int, default=20)
    ns = parser.parse_args()
    got = asyncio.run(_run(ns.samples))
    summary = {
        "samples": len(got),
        "median_ms": round(statistics.median(got), 1),
        "max_ms": round(max(got), 1),
        "min_ms": round(min(got), 1),
    }
    sys.stdout.write(json.dumps(summary) + "\n")


if __name__ == "__main__":
    main()
