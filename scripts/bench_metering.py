"""Metering throughput, memory and freshness, beside the ceiling for Python here.

    make bench-metering      # or: .venv/bin/python scripts/bench_metering.py

One run, on its own PostgreSQL and broker (free ports):
1. workload: --events usage events (default 200,000) for --users people (10,000) with
   a realistic model mix, reported through `UsageReporter` in batch mode (UsageBatch
   records per partition, as a busy gateway would);
2. ceiling: a plain confluent-kafka consumer over the same topic doing decode + price +
   sum into a dict: what one Python process can do with these records here;
3. worker: one metering worker process (its settings' defaults; --session-timeout
   sets the one that paces its batches) drains the same topic into Postgres; counted
   from when its first batch began (its metrics say how long its batches took) to its
   last commit; its peak RSS; and the totals it wrote
   are checked against the ceiling loop's sums, to the micro;
4. freshness: with the worker running under a steady load, probe events for fresh
   users, timed from produce until policy's totals view holds them.

With --workers N, N workers over --partitions partitions instead, with the pauses
joins and leaves cause: see scripts/bench_metering_scale.py.

The last line is one JSON object.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import random
import shutil
import signal
import statistics
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
from collections import defaultdict
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import asyncpg
from confluent_kafka import OFFSET_BEGINNING, Consumer, Producer, TopicPartition
from prometheus_client.parser import text_string_to_metric_families

from devtools.localinfra import free_port
from devtools.localinfra.process import ChildProcess
from devtools.localinfra.stack import open_infra
from quartermaster.money import micros_of_picos
from quartermaster.periods import PeriodKind, period_of
from quartermaster.reporter import UsageReporter
from quartermaster.topics import CONTENT_TYPE, PROTOBUF, SOURCE_HEADER, Topic
from quartermaster.v1.usage_pb2 import UsageBatch, UsageEvent
from services.metering.decode import InvalidUsage, epoch_nanos, validate
from services.metering.pricing import PriceCatalog, picos_of
from services.metering.settings import DEFAULT_PRICES
from services.metering.state import periods_at
from services.policy.totals import TotalsIndex
from services.policy.totals_feed import TotalsFeed

ROOT = Path(__file__).resolve().parent.parent
PARTITIONS = 3
# (model, share, input tokens range, cached share, output tokens range)
MIX = [
    ("gpt-5-mini", 40, (200, 4_000), 0.3, (50, 800)),
    ("gpt-5", 25, (1_000, 20_000), 0.5, (100, 3_000)),
    ("claude-sonnet-4-5", 20, (2_000, 40_000), 0.6, (200, 4_000)),
    ("gpt-4.1", 10, (500, 8_000), 0.2, (100, 1_500)),
    ("claude-opus-4-1", 5, (5_000, 60_000), 0.6, (500, 6_000)),
]


def say(text: str) -> None:
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


def workload(n: int, users: int, seed: int = 7, uniform: bool = False) -> list[UsageEvent]:
    """People as they work: each has a product and a main model (4 calls in 5) and a
    second one, drawn from the mix. `uniform`: every call a random product and model
    (the worst case for rollups: nearly one rollup row per event)."""
    rng = random.Random(seed)
    models = [m for m in MIX for _ in range(m[1])]
    products = ("chat", "codex", "api", "agents")
    habits = [(rng.choice(products), rng.choice(models), rng.choice(models)) for _ in range(users)]
    now = datetime.now(UTC)
    out = []
    for i in range(n):
        user = rng.randrange(users)
        product, main, other = habits[user]
        if uniform:
            product, main, other = rng.choice(products), rng.choice(models), rng.choice(models)
        model, _, (lo, hi), cached, (olo, ohi) = main if rng.random() < 0.8 else other
        inp = rng.randint(lo, hi)
        out_tokens = rng.randint(olo, ohi)
        e = UsageEvent(
            event_id=f"bench-{i}", workspace_id="bench", user_id=f"user-{user}",
            product=product, model=model,
            input_tokens=inp, cached_input_tokens=int(inp * cached * rng.random()),
            output_tokens=out_tokens, reasoning_tokens=out_tokens // 3 if model == "gpt-5" else 0,
        )  # fmt: skip
        e.occurred_at.FromDatetime(now)
        out.append(e)
    return out


CEILING_PASSES = 3  # the ceiling's passes over the topic a run (their median is its figure)


def ceiling(
    bootstrap: str, expected: int, batched: bool, partitions: int = PARTITIONS
) -> tuple[float, dict[str, int], dict[int, int]]:
    """Consume + decode + validate + price + sum, as fast as one process goes, until
    `expected` valid events: (events/s, micros per "user:month", end offset per
    partition)."""
    catalog = PriceCatalog.from_file(DEFAULT_PRICES)
    tz = ZoneInfo("UTC")
    consumer = Consumer(
        {"bootstrap.servers": bootstrap, "group.id": f"ceiling-{uuid.uuid4()}",
         "enable.auto.commit": False, "fetch.wait.max.ms": 10}
    )  # fmt: skip
    consumer.assign(
        [TopicPartition(Topic.USAGE.value, p, OFFSET_BEGINNING) for p in range(partitions)]
    )
    sums: dict[str, int] = defaultdict(int)
    ends: dict[int, int] = {}
    seen = 0
    start = None
    now = datetime.now(UTC)
    age = timedelta(days=35)
    while seen < expected:
        msgs = consumer.consume(1000, 1.0)
        if start is None and msgs:
            start = time.perf_counter()
        for m in msgs:
            if m.error() is not None:
                continue
            ends[m.partition() or 0] = (m.offset() or 0) + 1
            if batched:
                batch = UsageBatch()
                batch.ParseFromString(m.value() or b"")
                events: Iterable[UsageEvent] = batch.events
            else:
                one = UsageEvent()
                one.ParseFromString(m.value() or b"")
                events = (one,)
            for e in events:
                try:
                    validate(e, now, age)
                except InvalidUsage:
                    continue  # a bad record (--bad-ratio): to the DLQ, not summed
                at = epoch_nanos(e)
                key = f"{e.user_id}:{periods_at(e.occurred_at.seconds, tz)[2][1]}"  # the month
                price = catalog.version_at(e.model, at)[0]
                sums[key] += picos_of(
                    price,
                    e.input_tokens,
                    e.cached_input_tokens,
                    e.cache_write_input_tokens,
                    e.output_tokens,
                    e.reasoning_tokens,
                )  # exact: a total is rounded once
                seen += 1
    elapsed = time.perf_counter() - (start or time.perf_counter())
    consumer.close()
    return seen / elapsed, {k: micros_of_picos(v) for k, v in sums.items()}, ends


def produce_raw(bootstrap: str, events: list[UsageEvent], foreign: bool, bad: float) -> None:
    """One event a record through a plain producer: keyed by event id when `foreign`
    (its default CRC32 partitioner then puts ~2/3 of them away from their user's home
    partition: forwarded), and `bad` of all records empty ones from source "noisy"
    (a flood of bad records among the good)."""
    # idempotent, as UsageReporter: a retried send must not write a record twice (the
    # worker would count it once, by its event id, and the ceiling twice). Keyed by
    # user, murmur2 puts each at home, as Kafka's Java client does; by event id, the
    # default CRC32 partitioner puts most elsewhere.
    producer = Producer({
        "bootstrap.servers": bootstrap, "linger.ms": 50, "enable.idempotence": True,
        "partitioner": "consistent_random" if foreign else "murmur2_random",
    })  # fmt: skip
    pb: list[tuple[str, str | bytes | None]] = [(CONTENT_TYPE, PROTOBUF.encode())]
    noisy: list[tuple[str, str | bytes | None]] = [*pb, (SOURCE_HEADER, b"noisy")]
    owed = 0.0
    for e in events:
        owed += bad / (1 - bad) if bad < 1 else 0
        while owed >= 1:
            producer.produce(Topic.USAGE.value, key=e.user_id.encode(), value=b"", headers=noisy)
            producer.poll(0)
            owed -= 1
        key = (e.event_id if foreign else e.user_id).encode()
        producer.produce(Topic.USAGE.value, key=key, value=e.SerializeToString(), headers=pb)
        producer.poll(0)
    producer.flush(60)


def rss_mb(pid: int) -> tuple[float, float]:
    """(current, peak) resident memory of a process in MB."""
    vals = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        k, _, v = line.partition(":")
        if k in ("VmRSS", "VmHWM"):
            vals[k] = int(v.split()[0]) / 1024
    return vals["VmRSS"], vals["VmHWM"]


class Profile:
    """py-spy attached to a process while a block runs (`--profile FILE`): its samples
    in FILE (collapsed stacks, py-spy's raw format), the functions with the most
    samples of their own and of their callees printed after."""

    def __init__(self, pid: int, path: str | None) -> None:
        self.pid, self.path = pid, path
        self.proc: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> Profile:
        spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
        if self.path and not Path(spy).exists():
            raise SystemExit("--profile needs py-spy: .venv/bin/pip install py-spy")
        if self.path:
            argv = [spy, "record", "--pid", str(self.pid), "--format", "raw",
                    "--rate", "200", "--nonblocking", "-o", self.path]  # fmt: skip
            self.proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL)
            time.sleep(1)  # attached before the work starts
        return self

    def __exit__(self, *_: object) -> None:
        if self.proc is None or self.path is None:
            return
        self.proc.send_signal(signal.SIGINT)  # py-spy writes its file on SIGINT
        self.proc.wait(30)
        own: dict[str, int] = defaultdict(int)
        inclusive: dict[str, int] = defaultdict(int)
        total = 0
        for line in Path(self.path).read_text().splitlines():
            stack, _sep, count = line.rpartition(" ")
            frames = [f.split(" (")[0] + " " + f.rsplit("/", 1)[-1].rstrip(")")
                      for f in stack.split(";")]  # fmt: skip
            n = int(count)
            total += n
            own[frames[-1]] += n
            for f in set(frames):
                inclusive[f] += n
        say(f"profile: {total} samples in {self.path}; most samples of their own:")
        for f, n in sorted(own.items(), key=lambda x: -x[1])[:25]:
            say(f"  {100 * n / total:5.1f}%  {f}")
        say("most samples with their callees:")
        for f, n in sorted(inclusive.items(), key=lambda x: -x[1])[:40]:
            say(f"  {100 * n / total:5.1f}%  {f}")


def batch_seconds(metrics_addr: str) -> tuple[int, float, float]:
    """How many batches the worker has counted so far, their time in all and the
    bound of the histogram bucket holding the longest (the count, sum and buckets of
    its qm_metering_batch_duration_seconds histogram), read from its /metrics."""
    with urllib.request.urlopen(f"http://{metrics_addr}/metrics", timeout=10) as resp:
        text = resp.read().decode()
    count, seconds = 0, 0.0
    buckets: list[tuple[float, float]] = []
    for f in text_string_to_metric_families(text):
        for s in f.samples:
            if s.name == "qm_metering_batch_duration_seconds_count":
                count += int(s.value)
            elif s.name == "qm_metering_batch_duration_seconds_sum":
                seconds += s.value
            elif s.name == "qm_metering_batch_duration_seconds_bucket":
                buckets.append((float(s.labels["le"]), s.value))
    longest = min((le for le, n in buckets if n >= count), default=math.inf)
    return count, seconds, longest


async def drain(
    url: str,
    app_id: str,
    ends: dict[int, int],
    worker: ChildProcess,
    metrics_addr: str,
    micros: int | None = None,
) -> float:
    """Seconds the worker took to count every record: from when its first batch began
    to its last commit; with `micros`, to when the month totals add up to it
    (forwarded events are counted after the records that carried them). The group
    join before the first batch is not counted.

    When the first batch began is read from the worker's metrics, polled every 0.1 s
    from its start: once a batch has ended, the time then less the time its batches
    took (they run one after another). A committed offset is no sign: a batch's
    partitions commit one by one, and one batch may hold most of the backlog. The
    poll's interval, and any wait between batches, shorten the time measured by at
    most ~0.1 s. (Every 20 ms, rendering the metrics page took ~3 % of the worker's
    CPU during the drain.)"""
    target = sum(ends.values())
    conn = await asyncpg.connect(url)
    first = None
    polled = 0.0
    try:
        while True:
            if worker.poll() is not None:
                raise SystemExit(f"the worker died:\n{worker.log_tail()}")
            now = time.perf_counter()
            if first is None and now - polled >= 0.1:
                polled = now
                try:
                    count, seconds, _ = await asyncio.to_thread(batch_seconds, metrics_addr)
                except OSError:  # its metrics not served yet
                    count, seconds = 0, 0.0
                if count:
                    first = now - seconds
            rows = await conn.fetch(
                "SELECT partition, next_offset FROM metering.offsets WHERE consumer = $1",
                app_id,
            )
            at = {r["partition"]: r["next_offset"] for r in rows}
            # Each partition up to its end (a partition past its end, with bad records
            # the ceiling did not need to read, must not stand in for one behind).
            done = sum(min(at.get(p, 0), end) for p, end in ends.items())
            now = time.perf_counter()
            if done >= target and micros is not None:
                summed = await conn.fetchval(
                    "SELECT coalesce(sum(used_micros), 0)::bigint FROM metering.totals"
                    " WHERE period_kind = 'month'"
                )
                if summed < micros:
                    await asyncio.sleep(0.02)
                    continue
            if done >= target and first is not None:
                return now - first
            await asyncio.sleep(0.02)
    finally:
        await conn.close()


def freshness(bootstrap: str, probes: int, load_eps: int, bad_ratio: float = 0.0) -> list[float]:
    view = TotalsIndex()
    feed = TotalsFeed(bootstrap, view)
    feed.start()
    feed.wait_caught_up(60)
    month = period_of(PeriodKind.MONTH, datetime.now(UTC), ZoneInfo("UTC")).key
    stop = threading.Event()

    def background() -> None:
        rep = UsageReporter(bootstrap, batch_max=200, linger_ms=20)
        noisy = Producer({"bootstrap.servers": bootstrap, "linger.ms": 20})
        i = 0
        while not stop.is_set():
            t = time.perf_counter()
            for e in workload(load_eps // 10, 10_000, seed=i):
                e.event_id = f"load-{i}-{e.event_id}"
                rep.report(e)
            if bad_ratio:  # a noisy source's empty records among the load
                flood = int(load_eps // 10 * bad_ratio / (1 - bad_ratio))
                for k in range(flood):
                    noisy.produce(Topic.USAGE.value, key=f"n{k}".encode(), value=b"",
                                  headers=[(SOURCE_HEADER, b"noisy")])  # fmt: skip
                    noisy.poll(0)
                noisy.flush(5)
            i += 1
            rep.flush(5)
            time.sleep(max(0.0, 0.1 - (time.perf_counter() - t)))
        rep.close()

    load = threading.Thread(target=background)
    load.start()
    probe_rep = UsageReporter(bootstrap)
    out = []
    try:
        time.sleep(1)
        for i in range(probes):
            user = f"probe-{uuid.uuid4().hex[:8]}"
            e = workload(1, 1, seed=i)[0]
            e.user_id, e.event_id = user, f"probe-{user}"
            start = time.perf_counter()
            probe_rep.report(e)
            probe_rep.flush(5)
            while view.used(user, month) == 0:
                if time.perf_counter() - start > 30:
                    raise SystemExit("a probe never became visible")
                time.sleep(0.0005)
            out.append((time.perf_counter() - start) * 1000)
            time.sleep(0.05)
    finally:
        stop.set()
        load.join()
        probe_rep.close()
        feed.stop()
    return out


async def check_totals(url: str, sums: Mapping[str, int], when: str = "") -> None:
    """SystemExit unless the month totals in PostgreSQL are the ceiling loop's `sums`
    ("user:month" → micros), to the micro; `when` says at what point, in the line
    printed."""
    conn = await asyncpg.connect(url)
    try:
        rows = await conn.fetch(
            "SELECT subject_id, period_key, used_micros FROM metering.totals"
            " WHERE period_kind = 'month'"
        )
    finally:
        await conn.close()
    got = {f"{r['subject_id']}:{r['period_key']}": r["used_micros"] for r in rows}
    if got != dict(sums):
        differ = sorted(k for k in got.keys() | sums.keys() if got.get(k) != sums.get(k))
        raise SystemExit(
            f"the totals differ from the ceiling loop's sums for "
            f"{len(differ)} user-months, e.g. "
            + ", ".join(f"{k}: {got.get(k)} != {sums.get(k)}" for k in differ[:3])
        )
    say(f"  totals exact{when}: {len(got)} user-months, {sum(got.values()):,} micros")


async def main_async(
    n: int,
    users: int,
    probes: int,
    load_eps: int,
    batch: int,
    uniform: bool,
    profile: str | None = None,
    foreign: bool = False,
    bad_ratio: float = 0.0,
    in_process: bool = False,
    session_timeout: float = 10.0,
) -> dict[str, float | int | bool | list[int] | None]:
    run_dir = ROOT / ".run" / f"bench-metering-{os.getpid()}"
    app_id = f"bench-{uuid.uuid4().hex[:6]}"
    try:
        with open_infra(
            run_dir, durable=False,
            partitions=PARTITIONS,
        ) as infra:  # fmt: skip
            say(f"workload: {n} events, {users} users ...")
            events = workload(n, users, uniform=uniform)
            t = time.perf_counter()
            if foreign or bad_ratio:
                produce_raw(infra.kafka_bootstrap, events, foreign, bad_ratio)
            else:
                rep = UsageReporter(infra.kafka_bootstrap, batch_max=batch, linger_ms=50)
                for e in events:
                    rep.report(e)
                rep.close()
            say(f"  produced in {time.perf_counter() - t:.1f}s")

            # One pass of a few seconds moved 51,000-89,000 events/s between
            # consecutive runs on these machines: the median of CEILING_PASSES, each
            # printed, and the best of them for the most careful ratio.
            passes = []
            for _ in range(CEILING_PASSES):
                eps_pass, sums, ends = ceiling(
                    infra.kafka_bootstrap, n, batch > 1 and not (foreign or bad_ratio)
                )
                passes.append(eps_pass)
            ceiling_eps, best_ceiling = statistics.median(passes), max(passes)
            shown = ", ".join(f"{x:,.0f}" for x in passes)
            say(f"ceiling (consume+decode+price+sum): {ceiling_eps:,.0f} events/s, the median"
                f" of {shown}; {sum(ends.values())} records")  # fmt: skip

            env = {**os.environ, **infra.env(), "QM_METERING_APP_ID": app_id,
                   "QM_WORKSPACE_ID": "bench",  # the workspace its events name
                   "QM_METERING_SESSION_TIMEOUT": f"{session_timeout:g}", "QM_LOG_LEVEL": "WARNING",
                   "QM_METERING_METRICS_ADDR": f"127.0.0.1:{free_port()}"}  # fmt: skip
            if in_process:  # the counting path fed by confluent-kafka, no worker
                from bench_metering_inproc import count_in_process  # this script's directory

                seconds, batches = await count_in_process(env, ends)
                say(f"counting path in process: {n / seconds:,.0f} events/s ({seconds:.2f}s,"
                    f" {batches} batches)")  # fmt: skip
                await check_totals(infra.database_url, sums)
                return {"events": n, "events_per_record": 1 if foreign or bad_ratio else batch,
                        "in_process": True, "users": users, "events_per_s": round(n / seconds),
                        "ceiling_events_per_s": round(ceiling_eps),
                        "ratio": round(n / seconds / ceiling_eps, 3), "batches": batches,
                        "session_timeout_s": session_timeout,
                        "load_average": round(os.getloadavg()[0], 1)}  # fmt: skip
            metrics_addr = env["QM_METERING_METRICS_ADDR"]
            worker = ChildProcess(
                "metering", [sys.executable, "-m", "services.metering"],
                run_dir / "metering.log", env=env, cwd=ROOT,
            )  # fmt: skip
            worker.start()
            try:
                with Profile(worker.pid, profile):
                    # forwarded events are counted after the records that carried them
                    whole = sum(sums.values()) if foreign or bad_ratio else None
                    seconds = await drain(
                        infra.database_url, app_id, ends, worker, metrics_addr, whole
                    )
                eps = n / seconds
                _, peak = rss_mb(worker.pid)
                batches, batch_time, longest = batch_seconds(metrics_addr)
                load = round(os.getloadavg()[0], 1)  # the cores are shared: how busy they were
                say(f"worker: {eps:,.0f} events/s ({seconds:.2f}s), peak RSS {peak:.0f} MB,"
                    f" load average {load}")  # fmt: skip
                # A rebalance waits for the batch in hand: how long batches ran says
                # how long a join or leave during a catch-up would wait.
                say(f"  {batches} batches, {batch_time / max(batches, 1):.2f} s each on"
                    f" average, the longest <= {longest} s")  # fmt: skip
                await check_totals(infra.database_url, sums)
                fresh = freshness(infra.kafka_bootstrap, probes, load_eps, bad_ratio)
                _, peak = rss_mb(worker.pid)
            finally:
                worker.stop()
    finally:
        shutil.rmtree(run_dir, ignore_errors=True)
    q = statistics.quantiles(fresh, n=100)
    return {
        "events": n,
        "events_per_record": 1 if foreign or bad_ratio else batch,
        "foreign_partitioner": foreign,
        "bad_ratio": bad_ratio,
        "load_average_1m": round(os.getloadavg()[0], 2),
        "uniform_mix": uniform,
        "users": users,
        "events_per_s": round(eps),
        "ceiling_events_per_s": round(ceiling_eps),
        "ceiling_passes": [round(x) for x in passes],
        "ratio": round(eps / ceiling_eps, 3),
        "ratio_to_best_pass": round(eps / best_ceiling, 3),
        "rss_mb": round(peak, 1),
        "batches": batches,
        "session_timeout_s": session_timeout,
        "batch_mean_s": round(batch_time / max(batches, 1), 3),
        "batch_longest_le_s": longest if math.isfinite(longest) else None,
        "freshness_p50_ms": round(statistics.median(fresh), 1),
        "freshness_p99_ms": round(q[98], 1),
        "freshness_probes": len(fresh),
        "freshness_load_events_per_s": load_eps,
        "load_average": load,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--users", type=int, default=10_000)
    parser.add_argument("--probes", type=int, default=100)
    parser.add_argument("--load", type=int, default=2_000, help="events/s during freshness")
    parser.add_argument("--batch", type=int, default=200, help="events a record (1: single)")
    parser.add_argument(
        "--uniform", action="store_true", help="every call a random product and model"
    )
    parser.add_argument("--profile", metavar="FILE", help="py-spy samples of the worker's drain")
    parser.add_argument(
        "--in-process", action="store_true",
        help="the counting path fed by confluent-kafka instead of the worker (no freshness)",
    )  # fmt: skip
    parser.add_argument(
        "--foreign", action="store_true",
        help="one event a record keyed by event id (most land away from home: forwarded)",
    )  # fmt: skip
    parser.add_argument(
        "--bad-ratio", type=float, default=0.0,
        help="this share of all records empty ones from one source (also in freshness)",
    )  # fmt: skip
    parser.add_argument(
        "--session-timeout",
        type=float,
        default=10.0,
        help="QM_METERING_SESSION_TIMEOUT of the worker(s): the default's, 10; batches are "
        "paced at half of it",
    )
    scale = parser.add_argument_group(
        "scaled out (scripts/bench_metering_scale.py): N workers, joins and leaves"
    )
    scale.add_argument(
        "--workers",
        type=int,
        default=0,
        help="run N workers of one group instead (drain, CPU, join/leave pauses)",
    )
    scale.add_argument("--partitions", type=int, default=12, help="usage topic partitions")
    scale.add_argument("--keep-logs", action="store_true",
                       help="workers log at INFO, kept under .run/")  # fmt: skip
    ns = parser.parse_args()
    if not 0 <= ns.bad_ratio < 1:
        parser.error("--bad-ratio must be at least 0 and below 1")
    if ns.workers:
        from bench_metering_scale import run_scale  # this script's directory is on sys.path

        scaled = asyncio.run(run_scale(
            ns.events, ns.users, ns.batch, ns.partitions, ns.workers, ns.load,
            ns.session_timeout, ns.keep_logs,
        ))  # fmt: skip
        sys.stdout.write(json.dumps(scaled) + "\n")
        return
    result = asyncio.run(
        main_async(
            ns.events,
            ns.users,
            ns.probes,
            ns.load,
            ns.batch,
            ns.uniform,
            ns.profile,
            ns.foreign,
            ns.bad_ratio,
            ns.in_process,
            ns.session_timeout,
        )
    )
    sys.stdout.write(json.dumps(result) + "\n")


if __name__ == "__main__":
    main()
