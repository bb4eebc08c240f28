"""Metering scaled out (issue 12, item 7): N workers of one consumer group over P
partitions, their aggregate events/s and CPU, and the pause each join and leave causes.

    make bench-metering ARGS="--workers 2 --partitions 12"

Run by bench_metering.py when --workers is given; one run, on its own PostgreSQL and
broker (free ports), the usage topic with --partitions partitions:
1. settle: --workers worker processes start on the empty topic; a warm-up record for
   every partition each 0.2 s until every worker holds partitions (the partition
   labels of its qm_metering_consumer_lag gauge), none held twice, all held, for
   STABLE_SECONDS in a row;
2. drain: --events usage events, serialized beforehand into UsageBatch records of
   --batch events on their users' home partitions (as UsageReporter sends them), then
   produced at once; timed from the first produce until PostgreSQL's stored offsets
   reach every partition's end: aggregate events/s, and each worker's CPU seconds
   over that time (/proc/PID/stat);
3. join/leave: under a steady --load (events/s through UsageReporter, every partition
   every 0.1 s), four steps: a worker joins, the oldest is SIGKILLed, a worker joins,
   the oldest is stopped with SIGTERM; each once the last has settled (the group
   holds every partition again and each has advanced since). The stored offsets
   are sampled every SAMPLE_SECONDS; for each step, the longest time one partition's
   offset stood still (what its users' freshness saw) and the longest time no
   partition advanced at all (the whole group stopped), beside the same figures for
   the quiet seconds before the first step;
4. ceiling: bench_metering's single-process loop over every record of the run; the
   month totals the workers wrote are checked against its sums, to the micro.

Worker settings are the service's defaults but for QM_METERING_SESSION_TIMEOUT
(--session-timeout, default the worker's 10 s: a join waits about half of it on the
local broker, and a SIGKILLed worker's partitions wait all of it).
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import shutil
import sys
import threading
import time
import urllib.request
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import asyncpg
from bench_metering import ROOT, ceiling, check_totals, say, workload
from confluent_kafka import Producer
from prometheus_client.parser import text_string_to_metric_families

from devtools.localinfra import free_port
from devtools.localinfra.process import ChildProcess
from devtools.localinfra.stack import open_infra
from quartermaster.partitioning import partition_of
from quartermaster.reporter import UsageReporter
from quartermaster.topics import CONTENT_TYPE, PROTOBUF, USAGE_BATCH_TYPE, Topic
from quartermaster.v1.usage_pb2 import UsageBatch, UsageEvent

STABLE_SECONDS = 2.0
SAMPLE_SECONDS = 0.02
BASELINE_SECONDS = 4.0
_HEADERS: list[tuple[str, str | bytes | None]] = [
    (CONTENT_TYPE, f"{PROTOBUF}; type={USAGE_BATCH_TYPE}".encode())
]
_TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds a process has used (/proc/PID/stat fields 14-15)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / _TICK


def held(metrics_addr: str) -> set[int] | None:
    """The partitions a worker counts now (those its qm_metering_consumer_lag gauge
    reports: counted at least once since assigned, not revoked); None when its metrics
    server does not answer yet."""
    try:
        with urllib.request.urlopen(f"http://{metrics_addr}/metrics", timeout=5) as resp:
            text = resp.read().decode()
    except OSError:
        return None
    return {int(s.labels["partition"]) for f in text_string_to_metric_families(text)
            for s in f.samples if s.name == "qm_metering_consumer_lag"}  # fmt: skip


@dataclass
class Fleet:
    """Worker processes of one consumer group, named w1, w2, ... in start order."""

    env: dict[str, str]
    logs: Path
    running: dict[str, ChildProcess] = field(default_factory=dict)
    addrs: dict[str, str] = field(default_factory=dict)
    started: int = 0

    def start(self) -> str:
        self.started += 1
        name = f"w{self.started}"
        self.addrs[name] = f"127.0.0.1:{free_port()}"
        env = {**self.env, "QM_METERING_METRICS_ADDR": self.addrs[name]}
        proc = ChildProcess("metering", [sys.executable, "-m", "services.metering"],
                            self.logs / f"{name}.log", env=env, cwd=ROOT)  # fmt: skip
        proc.start()
        self.running[name] = proc
        return name

    def log(self, name: str) -> str:
        """What worker `name` logged so far ("" before it wrote anything)."""
        path = self.logs / f"{name}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def oldest(self) -> str:
        return next(iter(self.running))

    def kill(self, name: str) -> None:
        self.running.pop(name).kill()

    def stop(self, name: str) -> None:
        self.running.pop(name).stop(timeout=30)

    def check(self) -> None:
        for name, proc in self.running.items():
            if proc.poll() is not None:
                raise SystemExit(f"worker {name} died:\n{proc.log_tail()}")

    def close(self) -> None:
        for proc in self.running.values():
            proc.stop(timeout=30)
        self.running.clear()


def home_users(partitions: int) -> dict[int, str]:
    """A user id at home on each partition (murmur2, as metering counts it)."""
    out: dict[int, str] = {}
    i = 0
    while len(out) < partitions:
        out.setdefault(partition_of(f"warm-{i}", partitions), f"warm-{i}")
        i += 1
    return out


def batch_records(
    events: list[UsageEvent], partitions: int, batch: int
) -> list[tuple[int, bytes, bytes]]:
    """`events` as UsageReporter would send them: (partition, key, UsageBatch bytes) of
    up to `batch` events each, on their users' home partitions."""
    by_home: dict[int, list[UsageEvent]] = {}
    for e in events:
        by_home.setdefault(partition_of(e.user_id, partitions), []).append(e)
    return [(p, evs[i].user_id.encode(), UsageBatch(events=evs[i : i + batch]).SerializeToString())
            for p, evs in by_home.items() for i in range(0, len(evs), batch)]  # fmt: skip


def produce(bootstrap: str, records: list[tuple[int, bytes, bytes]]) -> dict[int, int]:
    """Produce the records and wait for the broker; the end offset each partition then
    has (from the delivery reports: the local broker's ListOffsets is wrong)."""
    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 5,
                         "enable.idempotence": True})  # fmt: skip
    ends: dict[int, int] = {}
    errors: list[str] = []

    def delivered(err: object, msg: object) -> None:
        if err is not None:
            errors.append(str(err))
            return
        p, o = msg.partition(), msg.offset()  # type: ignore[attr-defined]
        ends[p] = max(ends.get(p, 0), o + 1)

    for partition, key, value in records:
        producer.produce(Topic.USAGE.value, key=key, value=value, partition=partition,
                         headers=_HEADERS, on_delivery=delivered)  # fmt: skip
        producer.poll(0)
    if producer.flush(60) or errors:
        raise SystemExit(f"records not delivered: {errors[:3]}")
    return ends


async def offsets(conn: asyncpg.Connection, app_id: str) -> dict[int, int]:
    rows = await conn.fetch(
        "SELECT partition, next_offset FROM metering.offsets WHERE consumer = $1", app_id
    )
    return {r["partition"]: r["next_offset"] for r in rows}


async def caught_up(conn: asyncpg.Connection, app_id: str, ends: dict[int, int],
                    fleet: Fleet, limit: float = 600) -> float:  # fmt: skip
    """Wait until every partition's stored offset reaches `ends`; when, perf_counter."""
    deadline = time.perf_counter() + limit
    while True:
        at = await offsets(conn, app_id)
        now = time.perf_counter()
        if all(at.get(p, 0) >= end for p, end in ends.items()):
            return now
        fleet.check()
        if now > deadline:
            raise SystemExit(f"not counted within {limit}s: {at} of {ends}")
        await asyncio.sleep(SAMPLE_SECONDS)


async def whole(fleet: Fleet, partitions: int) -> bool:
    """Whether every running worker counts some partitions, none counted twice, every
    partition by one of them."""
    holds = [await asyncio.to_thread(held, fleet.addrs[name]) for name in fleet.running]
    every = [h for h in holds if h]
    return (len(every) == len(holds) and sum(map(len, every)) == partitions
            and set().union(*every) == set(range(partitions)))  # fmt: skip


async def settle(bootstrap: str, fleet: Fleet, partitions: int, limit: float = 300) -> int:
    """Warm-up records until the group is `whole` STABLE_SECONDS in a row; the warm-up
    events produced."""
    homes = home_users(partitions)
    sent, stable_since, deadline = 0, None, time.perf_counter() + limit
    while True:
        warm = []
        for p, user in homes.items():
            e = workload(1, 1, seed=sent)[0]
            e.user_id, e.event_id = user, f"warm-{sent}"
            warm.append((p, user.encode(), UsageBatch(events=[e]).SerializeToString()))
            sent += 1
        await asyncio.to_thread(produce, bootstrap, warm)
        ok, now = await whole(fleet, partitions), time.perf_counter()
        stable_since = (stable_since or now) if ok else None
        if stable_since is not None and now - stable_since >= STABLE_SECONDS:
            return sent
        fleet.check()
        if now > deadline:
            raise SystemExit(f"the group did not settle within {limit}s")
        await asyncio.sleep(0.2)


class Load:
    """A steady load through UsageReporter (batch mode) in a thread: `eps` events/s in
    10 rounds a second; `sent` events so far."""

    def __init__(self, bootstrap: str, eps: int, users: int) -> None:
        self.bootstrap, self.eps, self.users = bootstrap, eps, users
        self.sent = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run)

    def _run(self) -> None:
        rep = UsageReporter(self.bootstrap, batch_max=200, linger_ms=20)
        i = 0
        while not self._stop.is_set():
            t = time.perf_counter()
            for e in workload(max(1, self.eps // 10), self.users, seed=1000 + i):
                e.event_id = f"load-{i}-{e.event_id}"
                rep.report(e)
                self.sent += 1
            rep.flush(5)
            i += 1
            time.sleep(max(0.0, 0.1 - (time.perf_counter() - t)))
        rep.close()

    def __enter__(self) -> Load:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()


@dataclass
class Pause:
    """The longest stall within one step's window, in seconds: of any one partition
    (`partition`), and of the whole group (`group`: no partition advanced)."""

    step: str
    partition: float
    group: float


def pauses(
    advances: dict[int, list[float]], windows: list[tuple[str, float, float]]
) -> list[Pause]:
    """For each (step, start, end) window, the longest gaps between offset advances
    that end within it (a stall that began at the step ends inside its window)."""
    every = sorted(t for ts in advances.values() for t in ts)

    def longest(times: list[float], start: float, end: float) -> float:
        gaps = [b - a for a, b in itertools.pairwise(times) if start <= b < end]
        return max(gaps, default=0.0)

    return [Pause(step, max((longest(ts, a, b) for ts in advances.values()), default=0.0),
                  longest(every, a, b)) for step, a, b in windows]  # fmt: skip


async def join_leave(url: str, app_id: str, fleet: Fleet, partitions: int,
                     timeline: Path | None, limit: float = 180) -> list[Pause]:  # fmt: skip
    """The steps, sampling the stored offsets (wall-clock times, to compare with the
    workers' logs; written to `timeline` as JSON when given); their pauses. A step's
    window lasts until the group is `whole` again and every partition has advanced
    since (so its pauses have ended), plus a second."""
    advances: dict[int, list[float]] = {}
    last: dict[int, int] = {}
    done = asyncio.Event()

    async def sample() -> None:
        conn = await asyncpg.connect(url)
        try:
            while not done.is_set():
                at, now = await offsets(conn, app_id), time.time()
                for p, o in at.items():
                    if o != last.get(p):
                        last[p] = o
                        advances.setdefault(p, []).append(now)
                await asyncio.sleep(SAMPLE_SECONDS)
        finally:
            await conn.close()

    async def resumed(deadline: float) -> None:
        while not await whole(fleet, partitions):
            fleet.check()
            if time.time() > deadline:
                holds = {n: await asyncio.to_thread(held, fleet.addrs[n]) for n in fleet.running}
                tails = "".join(
                    f"\n--- {n}:\n" + "\n".join(fleet.log(n).splitlines()[-12:])
                    for n in fleet.running
                )  # fmt: skip
                raise SystemExit(
                    f"the group did not hold every partition within {limit}s: each running "
                    f"worker counts {holds} (of {partitions}); the end of their logs:{tails}"
                )
            await asyncio.sleep(0.1)
        since = time.time()
        while any(advances.get(p, [0.0])[-1] < since for p in range(partitions)):
            fleet.check()
            if time.time() > deadline:
                raise SystemExit(f"partitions did not advance within {limit}s")
            await asyncio.sleep(SAMPLE_SECONDS)
        await asyncio.sleep(1.0)

    steps: list[tuple[str, Callable[[], object]]] = [
        ("join", fleet.start),
        ("SIGKILL", lambda: fleet.kill(fleet.oldest())),
        ("join", fleet.start),
        ("SIGTERM", lambda: fleet.stop(fleet.oldest())),
    ]
    sampler = asyncio.create_task(sample())
    windows = []
    try:
        t = time.time()
        await asyncio.sleep(BASELINE_SECONDS)
        windows.append(("steady", t + 1.0, time.time()))
        for name, act in steps:
            t = time.time()
            await asyncio.to_thread(act)  # a SIGTERMed worker may take seconds to leave
            await resumed(t + limit)
            at = time.strftime("%H:%M:%S", time.localtime(t))
            say(f"  {at} {name}: {len(fleet.running)} worker(s) after it, "
                f"settled in {time.time() - t:.1f}s")  # fmt: skip
            windows.append((name, t, time.time()))
    finally:
        done.set()
        await sampler
    if timeline is not None:
        text = json.dumps({"windows": windows, "advances": advances})
        await asyncio.to_thread(timeline.write_text, text)
    return pauses(advances, windows)


async def run_scale(
    n: int, users: int, batch: int, partitions: int, workers: int, load_eps: int,
    session_timeout: float, keep_logs: bool,
) -> dict[str, object]:  # fmt: skip
    run_dir = ROOT / ".run" / f"bench-metering-scale-{os.getpid()}"
    app_id = f"bench-{uuid.uuid4().hex[:6]}"
    try:
        with open_infra(run_dir, durable=False, partitions=partitions) as infra:
            env = {**os.environ, **infra.env(), "QM_METERING_APP_ID": app_id,
                   "QM_WORKSPACE_ID": "bench", "QM_TOPIC_PARTITIONS": str(partitions),
                   "QM_METERING_SESSION_TIMEOUT": str(session_timeout),
                   "QM_LOG_LEVEL": "INFO" if keep_logs else "WARNING"}  # fmt: skip
            fleet = Fleet(env, run_dir / "logs")
            conn = await asyncpg.connect(infra.database_url)
            try:
                events = workload(n, users)
                records = batch_records(events, partitions, batch)
                t = time.perf_counter()
                for _ in range(workers):
                    fleet.start()
                warm = await settle(infra.kafka_bootstrap, fleet, partitions)
                say(f"{workers} worker(s), {partitions} partitions: group settled in "
                    f"{time.perf_counter() - t:.1f}s")  # fmt: skip
                pids = {name: proc.pid for name, proc in fleet.running.items()}
                cpu0 = {name: cpu_seconds(pid) for name, pid in pids.items()}
                t0 = time.perf_counter()
                ends = await asyncio.to_thread(produce, infra.kafka_bootstrap, records)
                produced = time.perf_counter() - t0
                t1 = await caught_up(conn, app_id, ends, fleet)
                cpu = {name: round(cpu_seconds(pid) - cpu0[name], 2) for name, pid in pids.items()}
                eps = n / (t1 - t0)
                say(f"drain: {n} events in {len(records)} records, {eps:,.0f} events/s "
                    f"({t1 - t0:.2f}s, produced in {produced:.2f}s); CPU s per worker {cpu}, "
                    f"load average {os.getloadavg()[0]:.1f}")  # fmt: skip

                timeline = run_dir / "logs" / "timeline.json" if keep_logs else None
                with Load(infra.kafka_bootstrap, load_eps, users) as load:
                    found = await join_leave(
                        infra.database_url, app_id, fleet, partitions, timeline
                    )
                for p in found:
                    say(f"  {p.step:8s} longest pause: one partition {p.partition:.2f}s, "
                        f"all partitions {p.group:.2f}s")  # fmt: skip
                await asyncio.sleep(2)  # the last of the load counted: the ceiling runs alone
                total = warm + n + load.sent
                ceiling_eps, sums, all_ends = ceiling(
                    infra.kafka_bootstrap, total, batched=True, partitions=partitions
                )
                say(f"ceiling (one process: consume+decode+price+sum): {ceiling_eps:,.0f} "
                    f"events/s over all {total} events")  # fmt: skip
                await caught_up(conn, app_id, all_ends, fleet)
                await check_totals(infra.database_url, sums, " after the joins and leaves")
            finally:
                await conn.close()
                fleet.close()
                if keep_logs:
                    kept = ROOT / ".run" / f"bench-metering-logs-{os.getpid()}"
                    shutil.copytree(run_dir / "logs", kept, dirs_exist_ok=True)
                    say(f"worker logs in {kept}")
    finally:
        shutil.rmtree(run_dir, ignore_errors=True)
    return {
        "workers": workers,
        "partitions": partitions,
        "events": n,
        "events_per_record": batch,
        "events_per_s": round(eps),
        "ceiling_events_per_s": round(ceiling_eps),
        "ratio": round(eps / ceiling_eps, 3),
        "cpu_s_per_worker": list(cpu.values()),
        "session_timeout_s": session_timeout,
        "load_events_per_s": load_eps,
        "pauses_s": [[p.step, round(p.partition, 2), round(p.group, 2)] for p in found],
        "load_average_1m": round(os.getloadavg()[0], 2),
    }
