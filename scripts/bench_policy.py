"""Policy Check speed with 100,000 users loaded, beside a bare grpc.aio echo service.

    make bench-policy      # or: .venv/bin/python scripts/bench_policy.py [--users N ...]

On its own PostgreSQL and broker (free ports) it loads a directory of --users people
in 200 teams under 10 departments (member limits on a quarter of the teams, pooled
budgets on the departments, model policies on a tenth of the teams, an override for
1 % of the people) and a month's total for every user on the totals topic. Then it
starts, each as its own process, the real policy server and a bare grpc.aio echo
service answering the same method shape with a canned CheckResponse, and drives both
with the same client: --clients processes, --concurrency calls in flight in all,
each call a Check for a random loaded user. The clients run at niceness
--client-nice (10): on a 2-core machine the load generator would otherwise take the
cores from the server it measures, which a client on its own machine never does.
Rounds alternate echo and policy; the figures are medians over rounds, and the
ratios are medians of each policy round against the echo round just before it. The
policy server times every Check inside the servicer, and the echo its handler, with
the same wrapper (so both pay for the instrument). After the clients, the policy
server also times reloads of its rules after a change of limits and after a
directory change, with the longest the event loop stalled meanwhile (Checks wait that
long). The last line is one JSON object.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import shutil
import signal
import statistics
import subprocess
import sys
import time
from array import array
from datetime import UTC, datetime
from pathlib import Path

import asyncpg

from devtools.localinfra.stack import open_infra
from quartermaster import kafka
from quartermaster.grpcclient import open_channel
from quartermaster.periods import PeriodKind, period_of
from quartermaster.topics import Topic
from quartermaster.v1 import policy_pb2, usage_pb2
from quartermaster.wire import timestamp

ROOT = Path(__file__).resolve().parent.parent
SERVER = ROOT / "scripts" / "bench_policy_server.py"
POLICY_METHOD = "/quartermaster.v1.PolicyService/Check"
ECHO_METHOD = "/bench.Echo/Check"
WORKSPACE = "bench"
# Both servers get it on every call (the echo ignores it), so the ratio includes what
# authenticating a call costs policy (quartermaster.auth) and nothing of the transport.
TOKEN = "bench-gateway-token-0123456789"
AUTH = (("authorization", f"Bearer {TOKEN}"),)


def say(text: str) -> None:
    sys.stderr.write(text + "\n")
    sys.stderr.flush()


# -- the load ------------------------------------------------------------------------


async def seed_directory(url: str, users: int) -> None:
    conn = await asyncpg.connect(url)
    try:
        await conn.execute(
            """
            INSERT INTO policy.workspaces (workspace_id, default_limit_micros, updated_by)
            VALUES ('bench', 10000000, 'bench');
            INSERT INTO policy.groups (workspace_id, group_id, name, kind)
            SELECT 'bench', 'dept-' || d, 'Department ' || d, 'department'
            FROM generate_series(0, 9) d;
            INSERT INTO policy.groups (workspace_id, group_id, name, kind, parent_id)
            SELECT 'bench', 'team-' || t, 'Team ' || t, 'team', 'dept-' || (t % 10)
            FROM generate_series(0, 199) t;
            INSERT INTO policy.group_limits (workspace_id, group_id, scope, limit_micros,
                period, enforcement, updated_by)
            SELECT 'bench', 'team-' || t, 'member', 20000000 + t * 1000, 'month', 'hard', 'bench'
            FROM generate_series(0, 199, 4) t;
            INSERT INTO policy.group_limits (workspace_id, group_id, scope, limit_micros,
                period, enforcement, updated_by)
            SELECT 'bench', 'dept-' || d, 'pool', 500000000000, 'month', 'hard', 'bench'
            FROM generate_series(0, 9) d;
            INSERT INTO policy.model_policies (workspace_id, group_id, allowed_models,
                fallback_model, fallback_at_percent, updated_by)
            SELECT 'bench', 'team-' || t, '{}', 'gpt-5-mini', 80, 'bench'
            FROM generate_series(0, 199, 10) t;
            """
        )
        await conn.execute(
            """
            INSERT INTO policy.users (workspace_id, user_id, email, display_name, manager_id)
            SELECT 'bench', 'user-' || u, 'user' || u || '@bench.example', 'User ' || u,
                   'user-' || (u / 10)
            FROM generate_series(0, $1 - 1) u
            """,
            users,
        )
        await conn.execute(
            """
            INSERT INTO policy.memberships (workspace_id, user_id, group_id)
            SELECT 'bench', 'user-' || u, 'team-' || (u % 200) FROM generate_series(0, $1 - 1) u
            """,
            users,
        )
        await conn.execute(
            """
            INSERT INTO policy.overrides (workspace_id, override_id, user_id, additive,
                limit_micros, period, granted_by, reason, starts_at, review_at)
            SELECT 'bench', 'ov-' || u, 'user-' || u, false, 50000000, 'month', 'bench',
                   'bench load', now() - interval '1 day', now() + interval '90 days'
            FROM generate_series(0, $1 - 1, 100) u
            """,
            users,
        )
    finally:
        await conn.close()


def seed_totals(bootstrap: str, users: int) -> None:
    now = datetime.now(UTC)
    month = period_of(PeriodKind.MONTH, now, UTC)  # type: ignore[arg-type]
    producer = kafka.producer(bootstrap, acks="all", **{"linger.ms": 20})
    rng = random.Random(7)
    for u in range(users):
        msg = usage_pb2.UsageTotal(
            workspace_id=WORKSPACE, subject_kind=usage_pb2.SUBJECT_KIND_USER,
            subject_id=f"user-{u}", period_kind=usage_pb2.PERIOD_KIND_MONTH,
            period_key=month.key, period_start=timestamp(month.start),
            period_end=timestamp(month.end), used_micros=rng.randrange(0, 12_000_000),
            event_count=10, updated_at=timestamp(now),
        )  # fmt: skip
        while True:
            try:
                producer.produce(
                    Topic.USAGE_TOTALS.value, key=f"user:user-{u}:{month.key}".encode(),
                    value=msg.SerializeToString(),
                )  # fmt: skip
                break
            except BufferError:
                producer.poll(0.05)
        producer.poll(0)
    if producer.flush(120) != 0:
        raise RuntimeError("could not produce the totals")


# -- the client ----------------------------------------------------------------------


async def client(
    target: str, method: str, concurrency: int, seconds: float, users: int, warmup: float
) -> dict[str, object]:
    rng = random.Random(os.getpid())
    requests = [
        policy_pb2.CheckRequest(
            user_id=f"user-{rng.randrange(users)}",
            product="chat",
            model="gpt-5",
            estimated_micros=5_000,
        ).SerializeToString()
        for _ in range(2000)
    ]
    latencies = array("q")
    # Plaintext, as the servers it measures are (their environment has no QM_TLS_*).
    async with open_channel(target, None) as ch:
        call = ch.unary_unary(
            method,
            request_serializer=lambda b: b,
            response_deserializer=policy_pb2.CheckResponse.FromString,
        )
        await call(requests[0], metadata=AUTH)
        start = time.perf_counter() + warmup
        stop = start + seconds

        async def worker(i: int) -> None:
            k = i
            while True:
                t = time.perf_counter()
                if t >= stop:
                    return
                await call(requests[k % len(requests)], metadata=AUTH)
                k += concurrency
                if t >= start:
                    latencies.append(time.perf_counter_ns() - int(t * 1e9))

        await asyncio.gather(*(worker(i) for i in range(concurrency)))
    return {"calls": len(latencies), "lat_ns": latencies.tolist()}


def run_clients(target: str, method: str, ns: argparse.Namespace) -> tuple[float, list[int]]:
    """(calls/s, latencies in ns) of --clients client processes run at once."""
    per = [ns.concurrency // ns.clients + (1 if i < ns.concurrency % ns.clients else 0)
           for i in range(ns.clients)]  # fmt: skip
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                __file__,
                "client",
                target,
                method,
                str(c),
                str(ns.seconds),
                str(ns.users),
                str(ns.warmup),
            ],
            stdout=subprocess.PIPE,
            cwd=ROOT,
            preexec_fn=(lambda: os.nice(ns.client_nice)) if ns.client_nice else None,
        )
        for c in per
    ]
    calls, lat = 0, []
    for p in procs:
        out, _ = p.communicate(timeout=ns.seconds + ns.warmup + 120)
        if p.returncode != 0:
            raise RuntimeError(f"a client failed ({p.returncode})")
        got = json.loads(out)
        calls += got["calls"]
        lat += got["lat_ns"]
    return calls / ns.seconds, lat


# -- the run -------------------------------------------------------------------------


def start_server(
    kind: str, run_dir: Path, env: dict[str, str]
) -> tuple[subprocess.Popen[bytes], int, Path]:
    portfile, timings = run_dir / f"{kind}.port", run_dir / f"{kind}.timings"
    log = (run_dir / f"{kind}.log").open("wb")
    proc = subprocess.Popen(
        [sys.executable, str(SERVER), kind, str(portfile), str(timings)],
        env=env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    deadline = time.monotonic() + 600
    while not portfile.exists() or not portfile.read_text().strip():
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"{kind} server did not start; see {run_dir / (kind + '.log')}")
        time.sleep(0.05)
    return proc, int(portfile.read_text()), timings


def cpu_seconds(pid: int) -> float:
    """User + system CPU a process has used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def machine_busy_seconds() -> float:
    """CPU time every core has spent on anything but idling, so far."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    return (sum(fields) - fields[3] - fields[4]) / os.sysconf("SC_CLK_TCK")


def pct(values: list[int], p: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(len(s) * p))] if s else float("nan")


def main_run(ns: argparse.Namespace) -> dict[str, object]:
    run_dir = ROOT / ".run" / f"bench-policy-{os.getpid()}"
    run_dir.mkdir(parents=True, exist_ok=True)
    procs: list[subprocess.Popen[bytes]] = []
    try:
        with open_infra(run_dir, durable=False, partitions=3) as infra:
            t = time.perf_counter()
            asyncio.run(seed_directory(infra.database_url, ns.users))
            seed_totals(infra.kafka_bootstrap, ns.users)
            say(f"loaded {ns.users:,} users and their totals in {time.perf_counter() - t:.1f}s")
            env = {k: v for k, v in os.environ.items() if not k.startswith("QM_")}
            env.update(infra.env(), QM_WORKSPACE_ID=WORKSPACE, QM_LOG_LEVEL="WARNING")
            env.update(QM_TOKENS=f"bench:gateway:{TOKEN}")
            t = time.perf_counter()
            policy, policy_port, timings = start_server("policy", run_dir, env)
            procs.append(policy)
            say(f"policy serving after {time.perf_counter() - t:.1f}s")
            echo, echo_port, echo_timings = start_server("echo", run_dir, env)
            procs.append(echo)
            # per round: calls/s, p50, p99, server CPU µs a call, machine CPU µs a call
            rounds: dict[str, list[tuple[float, ...]]] = {"echo": [], "policy": []}
            for r in range(ns.rounds):
                for name, proc, port, method in (
                    ("echo", echo, echo_port, ECHO_METHOD),
                    ("policy", policy, policy_port, POLICY_METHOD),
                ):
                    cpu, busy = cpu_seconds(proc.pid), machine_busy_seconds()
                    rps, lat = run_clients(f"127.0.0.1:{port}", method, ns)
                    # The clients' warm-up is counted too: per call, a slight overstatement
                    # alike for both servers.
                    calls = rps * ns.seconds
                    cpu_us = (cpu_seconds(proc.pid) - cpu) / calls * 1e6
                    busy_us = (machine_busy_seconds() - busy) / calls * 1e6
                    p50, p99 = pct(lat, 0.5) / 1e6, pct(lat, 0.99) / 1e6
                    rounds[name].append((rps, p50, p99, cpu_us, busy_us))
                    say(f"round {r + 1} {name:>6}: {rps:8.0f} calls/s  p50 {p50:.2f} ms"
                        f"  p99 {p99:.2f} ms  server CPU {cpu_us:.0f} us/call"
                        f"  machine {busy_us:.0f} us/call")  # fmt: skip
            for p in procs:
                p.send_signal(signal.SIGTERM)
            for p in procs:
                p.wait(60)
            spent, alone, echo_spent = array("q"), array("q"), array("q")
            spent.frombytes(timings.read_bytes())
            echo_spent.frombytes(echo_timings.read_bytes())
            reloads = json.loads(timings.with_suffix(".reloads").read_text())
            alone.frombytes(timings.with_suffix(".alone").read_bytes())
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
        shutil.rmtree(run_dir, ignore_errors=True)

    def med(name: str, i: int) -> float:
        return statistics.median(x[i] for x in rounds[name])

    def paired(i: int) -> float:
        return statistics.median(
            p[i] / e[i] for p, e in zip(rounds["policy"], rounds["echo"], strict=True)
        )

    handler, handler_cpu = spent.tolist()[0::2], spent.tolist()[1::2]
    out = {
        "users": ns.users,
        "concurrency": ns.concurrency,
        "clients": ns.clients,
        "client_nice": ns.client_nice,
        "rounds": ns.rounds,
        "rps": round(med("policy", 0)),
        "p50_ms": round(med("policy", 1), 3),
        "p99_ms": round(med("policy", 2), 3),
        "echo_rps": round(med("echo", 0)),
        "echo_p50_ms": round(med("echo", 1), 3),
        "echo_p99_ms": round(med("echo", 2), 3),
        # Per round, policy against the echo round just before it (the host's load
        # drifts over seconds; a pair a few seconds apart shares it), then the median.
        "ratio": round(paired(0), 3),
        "ratio_of_medians": round(med("policy", 0) / med("echo", 0), 3),
        "p99_vs_echo": round(paired(2), 3),
        "server_cpu_us_per_call": round(med("policy", 3), 1),
        "echo_server_cpu_us_per_call": round(med("echo", 3), 1),
        "machine_cpu_us_per_call": round(med("policy", 4), 1),
        "echo_machine_cpu_us_per_call": round(med("echo", 4), 1),
        "handler_p50_us": round(pct(handler, 0.5) / 1e3, 1),
        "handler_p99_us": round(pct(handler, 0.99) / 1e3, 1),
        "handler_cpu_p50_us": round(pct(handler_cpu, 0.5) / 1e3, 1),
        "handler_cpu_p99_us": round(pct(handler_cpu, 0.99) / 1e3, 1),
        "handler_calls": len(handler),
        # the same wrapper around the echo's handler: what the instrument costs alone
        "echo_handler_p50_us": round(pct(echo_spent.tolist()[0::2], 0.5) / 1e3, 1),
        "echo_handler_p99_us": round(pct(echo_spent.tolist()[0::2], 0.99) / 1e3, 1),
        "handler_alone_p50_us": round(pct(alone.tolist(), 0.5) / 1e3, 1),
        "handler_alone_p99_us": round(pct(alone.tolist(), 0.99) / 1e3, 1),
        **reloads,
    }
    return out


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "client":
        target, method, conc, secs, users, warmup = sys.argv[2:8]
        got = asyncio.run(client(target, method, int(conc), float(secs), int(users), float(warmup)))
        sys.stdout.write(json.dumps(got))
        return
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--users", type=int, default=100_000)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--clients", type=int, default=1)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--warmup", type=float, default=1.0)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument(
        "--client-nice", type=int, default=10,
        help="niceness of the client processes (servers stay at 0): the load generator"
        " yields the shared cores to the server it measures, as a client machine would",
    )  # fmt: skip
    ns = parser.parse_args()
    sys.stdout.write(json.dumps(main_run(ns)) + "\n")


if __name__ == "__main__":
    main()
