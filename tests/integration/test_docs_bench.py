"""Every `make bench-*` command the docs show runs, at a tiny size.

A bench takes minutes at the size its figures come from; here each documented command
runs with its sizes cut down (appended to its ARGS: argparse takes the last value), to
prove the command, its ARGS and the bench's whole path still work and end with the one
JSON line of results. The figures themselves come from full runs on a quiet machine
(docs/benchmarks.md). Each bench starts its own PostgreSQL and broker on free ports.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field

import pytest

from tests.integration.docs_blocks import ROOT
from tests.integration.docs_stack import as_typed
from tests.integration.test_docs import BENCH_SMOKE, SHOWN, kind_of


@dataclass(frozen=True)
class Small:
    """What makes a bench small: `args` appended to its ARGS (None: the Makefile passes
    it none, so it runs as shown) and settings for the processes it starts."""

    args: str | None
    env: dict[str, str] = field(default_factory=dict)


SHRINK: dict[str, Small] = {
    # The worker's rate is timed from when its first batch began (its batch metrics) to
    # its last commit: at most two records a batch, so a tiny workload still takes
    # many batches and that path runs. A 4 s session
    # timeout: the --workers runs wait on joins (about half of it each) and on a killed
    # worker's (all of it), and at 10 s the 1-worker run took 212 s of the suite.
    "bench-metering": Small(
        "--events 1000 --users 100 --probes 3 --load 200 --session-timeout 4",
        {"QM_METERING_BATCH_MAX": "2"},
    ),
    "bench-dedupe": Small("--ids 20000 --batch 1000"),
    "bench-policy": Small("--users 1000 --seconds 0.3 --warmup 0.1 --rounds 1"),
    "bench-costs": Small("--users 50 --days 2 --runs 1 --rounds 1"),
    "bench-requests": Small(
        "--past 500 --awaiting 60 --others 40 --users 20 --seconds 0.5 --lists 5 --concurrency 2"
    ),
    "bench-freshness": Small(None),
    "bench-notifier": Small("--intents 30 --users 5"),
    "bench-rpc-metrics": Small("--calls 200 --rounds 1"),
    "bench-ingest": Small(
        "--seconds 0.3 --warmup 0.1 --rounds 1 --concurrency 2 --concurrency-single 4"
    ),
}
# bench-metering --workers N (scripts/bench_metering_scale.py) times its drain by the
# stored offsets, so it needs no small batches: at two records a batch its workers fell
# behind the steady load, and each join or leave took minutes to settle, not seconds.
# Its steps wait for every partition to be held and to advance, and its three runs
# share two cores: 6 partitions (each of the 4-worker run's five workers after a join
# must hold one, and 6 over 5 still tests the assignor's uneven split) under 50
# events/s took 67 s for the three at once, where 12 under 200 took 105 s. The 4 s
# session timeout is the docs' fourth command's; 2 s saved nothing (joins took longer
# as often as a SIGKILL took less).
SCALED = Small("--events 1000 --users 100 --load 50 --partitions 6 --session-timeout 4")


def shrink_of(argv: list[str]) -> Small:
    """How documented bench command `argv` is made small."""
    if argv[1] == "bench-metering" and any("--workers" in a for a in argv[2:]):
        return SCALED
    return SHRINK[argv[1]]


BENCHES = [c for c in SHOWN if kind_of(c.text) == BENCH_SMOKE]


def small(text: str) -> list[str]:
    """The argv of documented bench command `text`, with SHRINK's sizes added to ARGS."""
    argv = shlex.split(text)
    assert argv[0] == "make", text
    assert len(argv) >= 2, text
    shrink = shrink_of(argv).args
    if shrink is None:
        return argv
    given = [a.removeprefix("ARGS=") for a in argv[2:] if a.startswith("ARGS=")]
    rest = [a for a in argv[2:] if not a.startswith("ARGS=")]
    return [*argv[:2], *rest, f"ARGS={' '.join([*given, shrink])}"]


def options(argv: list[str]) -> tuple[str, ...]:
    """What a bench command `argv` (as `small` makes it) runs: its target and its ARGS'
    options as the bench's argparse takes them (an option's last value counts)."""
    args = [t for a in argv[2:] if a.startswith("ARGS=") for t in a[5:].split()]
    taken: dict[str, str] = {}
    for i, arg in enumerate(args):
        if arg.startswith("--"):
            name, _, value = arg.partition("=")
            following = args[i + 1] if i + 1 < len(args) else "--"
            taken[name] = value or ("" if following.startswith("--") else following)
    rest = [a for a in argv[1:] if not a.startswith("ARGS=")]
    return (*rest, *sorted(f"{k} {v}".strip() for k, v in taken.items()))


# Benches run this many at once (each its own PostgreSQL, broker and processes, on
# free ports): most of a small bench is starting and stopping them, waiting, not CPU.
AT_ONCE = 3


def _run(text: str) -> subprocess.CompletedProcess[str]:
    env = as_typed({k: v for k, v in os.environ.items() if not k.startswith("QM_")})
    env.update(shrink_of(shlex.split(text)).env)
    return subprocess.run(
        small(text), cwd=ROOT, env=env, capture_output=True, text=True, timeout=600, check=False
    )


@pytest.fixture(scope="module")
def runs() -> Iterator[dict[str, Future[subprocess.CompletedProcess[str]]]]:
    """Every documented bench, started AT_ONCE at a time when the first test asks.
    Commands that come to the same run once made small (the 2-worker command and its
    --session-timeout 4 twin, at the smoke's 4 s) run once, for both tests."""
    with ThreadPoolExecutor(max_workers=AT_ONCE) as pool:
        started: dict[tuple[str, ...], Future[subprocess.CompletedProcess[str]]] = {}
        for c in BENCHES:
            once = options(small(c.text))
            if once not in started:
                started[once] = pool.submit(_run, c.text)
        yield {c.text: started[options(small(c.text))] for c in BENCHES}


@pytest.mark.infra  # each bench starts its own PostgreSQL and broker
@pytest.mark.parametrize("text", [c.text for c in BENCHES])
def test_bench_commands_run_small(
    text: str, runs: dict[str, Future[subprocess.CompletedProcess[str]]]
) -> None:
    done = runs[text].result()
    printed = done.stdout + done.stderr
    assert done.returncode == 0, f"`{text}` exited {done.returncode}:\n{printed[-3000:]}"
    last = done.stdout.strip().splitlines()[-1]
    assert isinstance(json.loads(last), dict), f"`{text}` did not end with its JSON line: {last}"
