"""`make run`, the README's first command, as a newcomer runs it: it comes up from
nothing, shows usage climbing and a decision flipping, and Ctrl-C stops everything
it started within 30 s."""

from __future__ import annotations

import os
import queue
import shutil
import signal
import subprocess
import threading
import time
from pathlib import Path

import pytest

from devtools.localinfra import free_port
from devtools.localinfra.ports import port_open
from tests.helpers import scrape

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.infra  # starts its own PostgreSQL and broker on free ports


def _lines(stream: object, out: queue.Queue[str]) -> None:
    for line in iter(stream.readline, ""):  # type: ignore[attr-defined]
        out.put(line)


def test_make_run_comes_up_flips_a_decision_and_stops_on_ctrl_c() -> None:
    run_dir = ROOT / ".run" / f"make-run-test-{os.getpid()}"
    ports = {"pg": free_port(), "broker": free_port(), "policy": free_port(), "api": free_port(),
             "metrics": free_port()}  # fmt: skip
    env = {k: v for k, v in os.environ.items() if not k.startswith("QM_")}
    env.update(
        QM_RUN_DIR=str(run_dir),
        QM_LOCAL_PG_PORT=str(ports["pg"]),
        QM_LOCAL_BROKER_PORT=str(ports["broker"]),
        QM_POLICY_ADDR=f"127.0.0.1:{ports['policy']}",
        QM_USAGE_API_ADDR=f"127.0.0.1:{ports['api']}",
        QM_METERING_METRICS_ADDR=f"127.0.0.1:{ports['metrics']}",
        QM_METERING_SESSION_TIMEOUT="4",
    )
    proc = subprocess.Popen(
        ["make", "--no-print-directory", "run"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,  # its own process group, as a terminal's foreground job
    )
    lines: queue.Queue[str] = queue.Queue()
    threading.Thread(target=_lines, args=(proc.stdout, lines), daemon=True).start()
    seen: list[str] = []
    try:
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            try:
                seen.append(lines.get(timeout=1))
            except queue.Empty:
                assert proc.poll() is None, "make run exited early:\n" + "".join(seen)
                continue
            if ">>> carol is now DENY" in seen[-1]:
                break
        else:
            raise AssertionError("no DENY within 180 s:\n" + "".join(seen[-40:]))
        text = "".join(seen)
        assert "policy gRPC serving on" in text
        assert ">>> carol is now WARN" in text
        assert "limit reached" in seen[-1]
        metrics = f"127.0.0.1:{ports['metrics']}"
        counted = scrape(metrics, "qm_metering_events_total", outcome="counted")
        assert counted is not None, "metering serves its metrics"
        assert counted > 0

        os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C in a terminal does
        stopped = time.monotonic()
        proc.wait(timeout=30)
        took = time.monotonic() - stopped
        time.sleep(0.5)
        while not lines.empty():
            seen.append(lines.get())
        assert "Stopped. Bye." in "".join(seen), "".join(seen[-20:])
        assert took < 30
        for name, port in ports.items():
            assert not port_open(port), f"{name} still listening on {port} after Ctrl-C"
        leftovers = subprocess.run(
            ["pgrep", "-f", str(run_dir)], capture_output=True, text=True, check=False
        ).stdout.split()
        assert leftovers == [], f"processes left behind: {leftovers}"
    finally:
        if proc.poll() is None:
            # A failed test still lets make run stop what it started (its children run
            # in sessions of their own and would outlive a SIGKILL of this group).
            os.killpg(proc.pid, signal.SIGINT)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        shutil.rmtree(run_dir, ignore_errors=True)
