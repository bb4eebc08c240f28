"""`make test-unit`, the edit-test loop's target, as a person runs it: it passes, runs
the tests that need no infrastructure, and starts none (no PostgreSQL, broker or
service process is left or needed). Marked `suite`: it runs a whole target itself, so
the target leaves it out (it would otherwise run itself without end)."""

from __future__ import annotations

import os
import re
import subprocess
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.suite


def test_make_test_unit_passes_without_any_infrastructure() -> None:
    # No QM_* settings: a unit test must not need an address to pass.
    env = {k: v for k, v in os.environ.items() if not k.startswith(("QM_", "MAKE"))}
    started = time.monotonic()
    done = subprocess.run(
        ["make", "--no-print-directory", "test-unit"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    took = time.monotonic() - started
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    summary = re.search(r"(\d+) passed, (\d+) deselected", done.stdout)
    assert summary is not None, done.stdout[-2000:]
    passed, deselected = map(int, summary.groups())
    assert passed >= 150, summary.group(0)
    assert deselected >= 50, summary.group(0)  # the infra tests, left out
    print(f"make test-unit: {summary.group(0)} in {took:.1f} s")  # noqa: T201
