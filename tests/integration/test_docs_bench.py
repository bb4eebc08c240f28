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
    # The worker's rate is taken from its first committed batch to its last: at most
    # two records a batch, so a tiny workload still takes several. A 4 s session
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
    "bench-ingest": Small("--seconds 0.3 --warmup 0.1 --rounds 1 --concurrency 2"),
}
BENCHES = [c for c in SHOWN if kind_of(c.text) == BENCH_SMOKE]


def small(text: str) -> list[str]:
    """The argv of documented bench command `text`, with SHRINK's sizes added to ARGS."""
    argv = shlex.split(text)
    assert argv[0] == "make", text
    assert len(argv) >= 2, text
    shrink = SHRINK[argv[1]].args
    if shrink is None:
        return argv
    given = [a.removeprefix("ARGS=") for a in argv[2:] if a.startswith("ARGS=")]
    rest = [a for a in argv[2:] if not a.startswith("ARGS=")]
    return [*argv[:2], *rest, f"ARGS={' '.join([*given, shrink])}"]


# Benches run this many at once (each its own PostgreSQL, broker and processes, on
# free ports): most of a small bench is starting and stopping them, waiting, not CPU.
AT_ONCE = 3


def _run(text: str) -> subprocess.CompletedProcess[str]:
    env = as_typed({k: v for k, v in os.environ.items() if not k.startswith("QM_")})
    env.update(SHRINK[shlex.split(text)[1]].env)
    return subprocess.run(
        small(text), cwd=ROOT, env=env, capture_output=True, text=True, timeout=600, check=False
    )


@pytest.fixture(scope="module")
def runs() -> Iterator[dict[str, Future[subprocess.CompletedProcess[str]]]]:
    """Every documented bench, started AT_ONCE at a time when the first test asks."""
    with ThreadPoolExecutor(max_workers=AT_ONCE) as pool:
        yield {c.text: pool.submit(_run, c.text) for c in BENCHES}


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
