"""HTTP ingest events/s beside a bare aiohttp endpoint that parses the same body.

    make bench-ingest      # or: .venv/bin/python scripts/bench_ingest.py [--seconds S ...]

On a broker of its own (free port; QM_KAFKA_BOOTSTRAP to use another) it starts, each
as its own process, the real ingest (`python -m services.metering.ingest`: it checks
the credential, reads and validates every event, sends one record per partition and
answers once the broker confirmed them) and a bare aiohttp server
(scripts/bench_ingest_bare.py) that reads the same body with json.loads and answers
202. One client (this process, aiohttp with --concurrency requests in flight, at
niceness --client-nice so the load generator does not take the cores from the server
it measures) posts the same pre-made bodies to both: JSON arrays of --events-per-body
events (100), then single-event bodies with --concurrency-single in flight (64: the
ingest answers a body only once the broker has it, so with fewer in flight it waits
on the broker with a core to spare, and the figure is the broker's latency, not the
ingest's capacity; docs/benchmarks.md). Rounds of --seconds alternate bare and ingest;
the figures are medians and ranges over rounds, each ratio the ingest round against
the bare round just before it. The last line is one JSON object, with the load average.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import time
import urllib.request
import uuid
from datetime import UTC, datetime
from pathlib import Path

import aiohttp

from devtools.localinfra import free_port
from devtools.localinfra.broker import LocalBroker
from quartermaster.kafka import ensure_topics

ROOT = Path(__file__).resolve().parent.parent
BARE = ROOT / "scripts" / "bench_ingest_bare.py"
TOKEN = "bench-reporter-token-0123456789"
PARTITIONS = 3


def make_bodies(n_bodies: int, per_body: int, users: int) -> list[bytes]:
    """`n_bodies` JSON bodies of `per_body` events (an array; one event: an object)."""
    rng = random.Random(1)
    now = datetime.now(UTC).isoformat()
    bodies = []
    for _ in range(n_bodies):
        events = [
            {"eventId": str(uuid.uuid4()), "occurredAt": now,
             "userId": f"user-{rng.randrange(users)}", "product": "chat", "model": "gpt-5",
             "inputTokens": str(rng.randrange(100, 5000)), "outputTokens": 300,
             "source": "bench", "workspaceId": "bench"}
            for _ in range(per_body)
        ]  # fmt: skip
        bodies.append(json.dumps(events if per_body > 1 else events[0]).encode())
    return bodies


async def drive(url: str, bodies: list[bytes], per_body: int, concurrency: int,
                seconds: float) -> tuple[float, dict[int, int]]:  # fmt: skip
    """(events/s answered 202, statuses seen) of posting `bodies` for `seconds`."""
    headers = {"Content-Type": "application/json", "Authorization": f"Bearer {TOKEN}"}
    statuses: dict[int, int] = {}
    stop = time.monotonic() + seconds
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector) as http:

        async def worker(k: int) -> None:
            i = k
            while time.monotonic() < stop:
                async with http.post(url, data=bodies[i % len(bodies)], headers=headers) as r:
                    await r.read()
                    statuses[r.status] = statuses.get(r.status, 0) + 1
                i += concurrency

        started = time.monotonic()
        await asyncio.gather(*(worker(k) for k in range(concurrency)))
        took = time.monotonic() - started
    return statuses.get(202, 0) * per_body / took, statuses


def wait_healthy(url: str, proc: subprocess.Popen[bytes], within: float = 60) -> None:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"{proc.args!r} exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=2) as resp:
                if resp.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.2)
    raise SystemExit(f"{url} not healthy within {within:.0f} s")


def start_servers(bootstrap: str) -> tuple[list[subprocess.Popen[bytes]], str, str]:
    """The ingest and the bare server, healthy; (processes, ingest URL, bare URL)."""
    ingest_addr, bare_addr = f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("QM_")}
    env |= {"QM_KAFKA_BOOTSTRAP": bootstrap, "QM_TOKENS": f"bench:reporter:{TOKEN}",
            "QM_METERING_INGEST_ADDR": ingest_addr, "QM_LOG_LEVEL": "WARNING",
            "QM_WORKSPACE_ID": "bench"}  # fmt: skip  # the events' workspace
    ingest = subprocess.Popen([sys.executable, "-m", "services.metering.ingest"], cwd=ROOT, env=env)
    bare = subprocess.Popen([sys.executable, str(BARE), bare_addr], cwd=ROOT, env=env)
    procs = [ingest, bare]
    wait_healthy(f"http://{ingest_addr}/healthz", ingest)
    wait_healthy(f"http://{bare_addr}/healthz", bare)
    return procs, f"http://{ingest_addr}/v1/usage", f"http://{bare_addr}/v1/usage"


async def measure(args: argparse.Namespace, urls: dict[str, str]) -> dict[str, object]:
    out: dict[str, object] = {}
    for per_body, concurrency in ((args.events_per_body, args.concurrency),
                                  (1, args.concurrency_single)):  # fmt: skip
        bodies = make_bodies(200, per_body, args.users)
        rates: dict[str, list[float]] = {"bare": [], "ingest": []}
        ratios: list[float] = []
        refused: dict[int, int] = {}
        for name in ("bare", "ingest"):  # warm-up
            await drive(urls[name], bodies, per_body, concurrency, args.warmup)
        for r in range(args.rounds):
            for name in ("bare", "ingest"):
                rate, statuses = await drive(urls[name], bodies, per_body, concurrency,
                                             args.seconds)  # fmt: skip
                rates[name].append(rate)
                for status, n in statuses.items():
                    if status != 202:
                        refused[status] = refused.get(status, 0) + n
            ratios.append(rates["ingest"][-1] / rates["bare"][-1])
            print(  # noqa: T201 - progress for the person at the terminal
                f"  {per_body:>3} events/body round {r + 1}: bare {rates['bare'][-1]:,.0f}/s,"
                f" ingest {rates['ingest'][-1]:,.0f}/s, ratio {ratios[-1]:.2f}",
                flush=True,
            )
        key = f"body_{per_body}"
        out[key] = {
            "bare_events_per_s": _spread(rates["bare"]),
            "ingest_events_per_s": _spread(rates["ingest"]),
            "ratio": _spread(ratios, 2),
            "concurrency": concurrency,
            "not_202": refused,
        }
    return out


def _spread(values: list[float], digits: int = 0) -> dict[str, float]:
    return {"median": round(statistics.median(values), digits),
            "min": round(min(values), digits), "max": round(max(values), digits)}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=5.0, help="length of a round")
    parser.add_argument("--warmup", type=float, default=2.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--events-per-body", type=int, default=100)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--concurrency-single", type=int, default=64,
                        help="requests in flight with single-event bodies")  # fmt: skip
    parser.add_argument("--users", type=int, default=1000)
    parser.add_argument("--client-nice", type=int, default=10)
    args = parser.parse_args()
    root = ROOT / ".run" / f"bench-ingest-{os.getpid()}"
    broker = None
    bootstrap = os.environ.get("QM_KAFKA_BOOTSTRAP", "")
    procs: list[subprocess.Popen[bytes]] = []
    try:
        if not bootstrap:
            root.mkdir(parents=True)
            broker = LocalBroker(root)
            broker.start()
            bootstrap = broker.bootstrap
        ensure_topics(bootstrap, PARTITIONS)
        procs, ingest_url, bare_url = start_servers(bootstrap)
        os.nice(args.client_nice)
        load_before = os.getloadavg()[0]
        results = asyncio.run(measure(args, {"ingest": ingest_url, "bare": bare_url}))
        results["load_average"] = {"before": load_before, "after": os.getloadavg()[0]}
        results["cores"] = os.cpu_count()
        print(json.dumps(results))  # noqa: T201 - the one JSON line of results
        # A refusal other than backpressure (429, 503) means the bench measured
        # nothing: the bodies are wrong for this ingest. Said, and not a success.
        wrong = {k: n for k in ("body_100", "body_1") for status, n in
                 results[k]["not_202"].items() if status not in (429, 503)}  # type: ignore[index]  # fmt: skip
        if wrong:
            raise SystemExit(f"the ingest refused the bench's bodies: {results}")
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            p.wait(30)
        if broker is not None:
            broker.stop()
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
