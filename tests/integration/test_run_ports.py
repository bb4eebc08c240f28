"""make run checks every port it and its services will listen on before starting
anything: a port in use had ended it in a pg_ctl traceback naming neither the port nor
the setting that moves it."""

from __future__ import annotations

import os
import subprocess
import sys

from devtools.localinfra import free_port
from devtools.run_ports import listening, taken
from tests.conftest import ROOT


def test_a_port_in_use_is_named_with_its_setting(busy_port: int) -> None:
    free = free_port()
    said = taken(
        {"QM_LOCAL_PG_PORT": f"127.0.0.1:{busy_port}", "QM_POLICY_ADDR": f"127.0.0.1:{free}"}
    )
    assert f"127.0.0.1:{busy_port} (QM_LOCAL_PG_PORT)" in said
    assert "`QM_LOCAL_PG_PORT=<another> make run`" in said
    assert "QM_POLICY_ADDR" not in said
    assert taken({"QM_POLICY_ADDR": f"127.0.0.1:{free}"}) == ""


def test_every_listening_setting_is_checked() -> None:
    env = {"QM_POLICY_METRICS_ADDR": "127.0.0.1:9465", "QM_REQUESTS_HEALTH_ADDR": "127.0.0.1:9476"}
    addrs = listening(env, {"QM_LOCAL_PG_PORT": 55432})
    assert addrs["QM_LOCAL_PG_PORT"] == "127.0.0.1:55432"
    assert addrs["QM_POLICY_METRICS_ADDR"] == "127.0.0.1:9465"
    assert addrs["QM_REQUESTS_HEALTH_ADDR"] == "127.0.0.1:9476"
    for name in ("QM_POLICY_ADDR", "QM_USAGE_API_ADDR", "QM_REQUESTS_ADDR",
                 "QM_METERING_INGEST_ADDR", "QM_METERING_METRICS_ADDR",
                 "QM_NOTIFIER_INTERACTIVITY_ADDR"):  # fmt: skip
        assert addrs[name], name
    assert "QM_POLICY_HEALTH_ADDR" not in addrs, "empty: not served"


def test_make_run_stops_before_starting_anything(busy_port: int) -> None:
    env = {**os.environ, "QM_LOCAL_PG_PORT": str(busy_port)}
    done = subprocess.run([sys.executable, "-m", "devtools.run"], env=env, cwd=ROOT,
                          capture_output=True, text=True, timeout=60)  # fmt: skip
    assert done.returncode == 1, done.stdout + done.stderr
    assert f"127.0.0.1:{busy_port} (QM_LOCAL_PG_PORT)" in done.stderr
    assert "starting PostgreSQL" not in done.stdout
