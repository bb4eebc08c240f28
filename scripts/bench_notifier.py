"""Notifier: intents per second through dedupe and delivery to the Slack stand-in, and
the lag from an intent's creation to its delivery being recorded (p50, p99).

Starts its own PostgreSQL and broker on free ports, a policy server (the directory,
in this process), the Slack stand-in (in this process, no pacing, no 429s: the
notifier's own cost is measured, not Slack's limits) and `--replicas` notifier
processes. Publishes `--intents` threshold intents over `--users` people, each one
twice (the second copy is dedupe work, as a replay would be), at `--rate` intents/s
(0: all at once), and waits until every one is delivered. Lag is the delivery row's
`delivered_at` minus the intent's `created_at`; intents/s counts distinct intents from
the first publish to the last delivery. Prints a summary, then one JSON line.

    make bench-notifier            # or: .venv/bin/python scripts/bench_notifier.py
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import sys
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

import asyncpg

from devtools.localinfra import free_port
from devtools.localinfra.process import ChildProcess
from devtools.localinfra.stack import open_infra
from devtools.slack_standin import SlackStandin
from quartermaster import kafka
from quartermaster.db import connect_pool
from quartermaster.notifications import intent, record
from quartermaster.v1 import notifications_pb2
from services.policy import wiring
from services.policy.directory import UserInfo
from services.policy.directory_import import DirectoryDoc
from services.policy.settings import PolicySettings
from services.policy.stores.directory import DirectoryStore

ROOT = Path(__file__).resolve().parent.parent
TOKEN = "bench-reader-token-0123456789"


def _note(ws: str, user: str, n: int, what: str = "bench") -> notifications_pb2.Notification:
    return intent(
        dedupe_key=f"threshold:user:{user}:{what}-{n}:80:{user}",
        kind=notifications_pb2.NOTIFICATION_KIND_THRESHOLD_CROSSED, workspace_id=ws,
        recipient_user_id=user, subject="You have used 80% of your monthly AI budget",
        body="bench", created_at=datetime.now(UTC),
        data={"subject": f"user:{user}", "percent": "80", "used_micros": "8000000",
              "limit_micros": "10000000", "period_key": datetime.now(UTC).strftime("%Y-%m")},
    )  # fmt: skip


async def _publish(
    bootstrap: str, ws: str, users: list[str], intents: int, rate: float, warm: int = 0
) -> None:
    producer = kafka.producer(bootstrap, **{"linger.ms": 5, "acks": "all"})
    for p in range(warm):
        topic, key, value, headers = record(_note(ws, users[p], p, "warm"))
        producer.produce(topic, key=key, value=value, headers=headers, partition=p)
    per_tick = max(1, round(rate * 0.05)) if rate > 0 else max(intents, 1)
    tick = per_tick / rate if rate > 0 else 0.0
    for start in range(0, intents, per_tick):
        for n in range(start, min(start + per_tick, intents)):
            topic, key, value, headers = record(_note(ws, users[n % len(users)], n))
            for _ in range(2):  # each intent twice
                producer.produce(topic, key=key, value=value, headers=headers)
        producer.poll(0)
        if rate > 0:
            await asyncio.sleep(tick)
    if producer.flush(60):
        raise SystemExit("intents still in flight after 60 s")


async def _delivered(
    pool: asyncpg.Pool, ws: str, n: int, within: float, procs: list[ChildProcess]
) -> None:
    """Until `n` deliveries are recorded; SystemExit naming the notifier that exited (with
    its log's tail) or the time that ran out, not a wait without end."""
    deadline = time.monotonic() + within
    while await pool.fetchval(
        "SELECT count(*) FROM notifier.deliveries WHERE workspace_id = $1"
        " AND state = 'delivered'", ws) < n:  # fmt: skip
        for p in procs:
            if p.poll() is not None:
                raise SystemExit(f"{p.name} exited ({p.poll()}):\n{p.log_tail()}")
        if time.monotonic() > deadline:
            raise SystemExit(f"not every intent delivered within {within} s")
        await asyncio.sleep(0.02)


def _percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


async def _run(ns: argparse.Namespace) -> dict[str, object]:
    run_dir = ROOT / ".run" / f"bench-notifier-{os.getpid()}"
    ws = f"bench-{uuid.uuid4().hex[:6]}"
    users = [f"u{i:05d}" for i in range(ns.users)]
    standin = SlackStandin()
    await standin.start()
    procs: list[ChildProcess] = []
    try:
        with open_infra(run_dir, durable=False,
                        partitions=3) as infra:  # fmt: skip
            env = {**os.environ, **infra.env(), "QM_WORKSPACE_ID": ws,
                   "QM_TOKENS": f"bench:reader:{TOKEN}", "QM_DIRECTORY_TOKEN": TOKEN,
                   "QM_NOTIFIER_SLACK_BASE_URL": standin.api_url,
                   "QM_NOTIFIER_SLACK_PACE_SECONDS": "0", "QM_NOTIFIER_SENDERS": str(ns.senders),
                   "QM_NOTIFIER_POLL_SECONDS": "0.02", "QM_LOG_LEVEL": "WARNING"}  # fmt: skip
            pool = await connect_pool(infra.database_url)
            people = [UserInfo(u, f"{u}@example.com", u, f"U{u}") for u in users]
            await DirectoryStore(pool, ws).apply(DirectoryDoc(people, [], {}), "bench", False)
            policy = await wiring.start(PolicySettings.from_env(env), addr="127.0.0.1:0")
            await asyncio.wait_for(policy.serving.wait(), 60)
            env["QM_DIRECTORY_ADDR"] = f"127.0.0.1:{policy.port}"
            for i in range(ns.replicas):
                own = {**env, "QM_NOTIFIER_METRICS_ADDR": f"127.0.0.1:{free_port()}"}
                p = ChildProcess(f"notifier-{i}", [sys.executable, "-m", "services.notifier"],
                                 run_dir / f"notifier-{i}.log", env=own, cwd=ROOT)  # fmt: skip
                p.start()
                procs.append(p)
            try:
                # Warm up: one intent per partition, delivered before the clock starts
                # (the replicas have joined their group and read to the end by then).
                await _publish(infra.kafka_bootstrap, ws, users, 0, 0, warm=3)
                await _delivered(pool, ws, 3, ns.timeout, procs)
                start = time.time()
                await _publish(infra.kafka_bootstrap, ws, users, ns.intents, ns.rate)
                await _delivered(pool, ws, 3 + ns.intents, ns.timeout, procs)
                rows = await pool.fetch(
                    "SELECT extract(epoch FROM delivered_at - intent_at) AS lag,"
                    " extract(epoch FROM delivered_at) AS at FROM notifier.deliveries"
                    " WHERE workspace_id = $1 AND dedupe_key NOT LIKE '%:warm-%'", ws)  # fmt: skip
            finally:
                for p in procs:
                    p.stop()
                await policy.stop(1)
                await pool.close()
    finally:
        await standin.stop()
        shutil.rmtree(run_dir, ignore_errors=True)
    lags = [float(r["lag"]) * 1000 for r in rows]
    seconds = max(float(r["at"]) for r in rows) - start
    messages = len(standin.posted())
    return {
        "intents": ns.intents, "records": 2 * ns.intents, "replicas": ns.replicas,
        "rate": ns.rate, "messages": messages, "seconds": round(seconds, 2),
        "intents_per_s": round(ns.intents / seconds, 1),
        "lag_p50_ms": round(_percentile(lags, 50), 1),
        "lag_p99_ms": round(_percentile(lags, 99), 1),
    }  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--intents", type=int, default=2000)
    parser.add_argument("--users", type=int, default=200)
    parser.add_argument("--replicas", type=int, default=2)
    parser.add_argument("--senders", type=int, default=8)
    parser.add_argument("--rate", type=float, default=0.0, help="intents/s (0: all at once)")
    parser.add_argument("--timeout", type=float, default=300.0)
    ns = parser.parse_args()
    out = asyncio.run(_run(ns))
    if out["messages"] != ns.intents + 3:  # and the 3 warm-up intents
        raise SystemExit(f"{out['messages']} messages for {ns.intents} intents: {out}")
    sys.stdout.write(
        f"{ns.intents} intents (each published twice) through {ns.replicas} notifier(s): "
        f"{out['intents_per_s']} intents/s, lag p50 {out['lag_p50_ms']} ms,"
        f" p99 {out['lag_p99_ms']} ms\n"
    )
    sys.stdout.write(json.dumps(out) + "\n")


if __name__ == "__main__":
    main()
