"""A password in QM_DATABASE_URL is shown nowhere (issue 14, item 17): `make run`'s
output and its services' logs (make run with mutual TLS on, too), the migrate command,
and services that fail to start on Postgres. Real processes on the session's
PostgreSQL (whose local cluster trusts any password: one is added to its URL) and
broker, but for make run's own broker (make run starts one): on the session's, once an
earlier test had started the session's metering worker, that worker counted make run's
readiness probe too (an event naming no workspace is each metering's), make run's
worker skipped it as a duplicate (the same PostgreSQL: "partition 1: 1 duplicate
event(s) not counted", the probe's partition), and make run said "NOT ready" after its
full 60 s: 68 s of the suite for that test, which passed all the same.
"""

from __future__ import annotations

import os
import queue
import shutil
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from devtools.localinfra import free_port
from devtools.localinfra.stack import Infra
from tests.conftest import ROOT
from tests.helpers import metrics_env
from tests.tlskit import make_pki

pytestmark = pytest.mark.infra
ADDED = "s3cret-Never-Shown"


def with_password(url: str) -> tuple[str, str]:
    """(`url` with a password, the password): the session's own when it has one (a
    given PostgreSQL), else ADDED."""
    parts = urlsplit(url)
    if parts.password:
        return url, parts.password
    user, _, host = parts.netloc.rpartition("@")
    return parts._replace(netloc=f"{user or 'qm'}:{ADDED}@{host}").geturl(), ADDED


def _env(**qm: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("QM_")}
    return env | qm


def _read_lines(stream: object, out: queue.Queue[str]) -> None:
    for line in iter(stream.readline, ""):  # type: ignore[attr-defined]
        out.put(line)


def test_make_run_shows_the_database_url_without_its_password(infra: Infra, tmp_path: Path) -> None:
    """Also with mutual TLS on: make run waits for policy's health over it, and is
    ready (on a broker of its own: see the module's docstring)."""
    url, password = with_password(infra.database_url)
    pki = make_pki(tmp_path / "pki")
    run_dir = ROOT / ".run" / f"no-passwords-{os.getpid()}-{uuid.uuid4().hex[:6]}"
    env = _env(
        QM_DATABASE_URL=url,
        QM_LOCAL_BROKER_PORT=str(free_port()),
        QM_WORKSPACE_ID=f"ws-{uuid.uuid4().hex[:8]}",
        QM_RUN_DIR=str(run_dir),
        QM_DEMO_TRAFFIC="false",
        QM_POLICY_ADDR=f"127.0.0.1:{free_port()}",
        QM_USAGE_API_ADDR=f"127.0.0.1:{free_port()}",
        **metrics_env(),
        QM_SLACK_STANDIN_PORT=str(free_port()),
        QM_SMTP_SINK_PORT=str(free_port()),
        QM_REQUESTS_ADDR=f"127.0.0.1:{free_port()}",
        QM_NOTIFIER_INTERACTIVITY_ADDR=f"127.0.0.1:{free_port()}",
        QM_METERING_INGEST_ADDR=f"127.0.0.1:{free_port()}",
        QM_METERING_APP_ID=f"qm-metering-np-{uuid.uuid4().hex[:8]}",
        QM_METERING_SESSION_TIMEOUT="4",
        **pki.server_env(mutual=True),
        **pki.client_env(with_cert=True),
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "devtools.run"], cwd=ROOT, env=env, text=True,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip
    lines: queue.Queue[str] = queue.Queue()
    threading.Thread(target=_read_lines, args=(proc.stdout, lines), daemon=True).start()
    seen: list[str] = []
    try:
        deadline = time.monotonic() + 120
        while not any("Press Ctrl-C" in line for line in seen):
            assert time.monotonic() < deadline, "make run not up in 120 s:\n" + "".join(seen)
            assert proc.poll() is None or not lines.empty(), "exited:\n" + "".join(seen)
            try:
                seen.append(lines.get(timeout=1))
            except queue.Empty:
                continue
        # make run waits for policy only: give the Cost API the time to say it serves
        # (slower now that the notifier starts beside it on a loaded machine)
        api_log = run_dir / "logs" / "cost-api.log"
        while "with TLS (mutual)" not in (api_log.read_text() if api_log.exists() else ""):
            assert time.monotonic() < deadline + 60, "the Cost API never said it serves"
            time.sleep(0.2)
        os.killpg(proc.pid, signal.SIGINT)
        proc.wait(timeout=60)
        time.sleep(0.2)  # the reader thread's last lines
        while not lines.empty():
            seen.append(lines.get())
        output = "".join(seen)
        logs = {p.name: p.read_text() for p in (run_dir / "logs").glob("*.log")}
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGINT)
            proc.wait(timeout=60)
        shutil.rmtree(run_dir, ignore_errors=True)
    assert "Stopped. Bye." in output
    assert "policy gRPC serving on" in output
    assert "  ready: an event produced now was counted and in policy's budget " in output, output
    assert f"grpcurl -cacert {pki.ca} -cert {pki.client_cert} -key {pki.client_key}" in output
    shown = f"postgres  {url.replace(password, '****')} (env)"
    assert shown in output, output
    assert password not in output
    assert sorted(logs) == [
        "cost-api.log",
        "ingest.log",
        "metering.log",
        "notifier.log",
        "policy.log",
        "requests.log",
    ]
    for name, text in logs.items():
        assert password not in text, name
    for name in ("policy.log", "cost-api.log"):
        assert "with TLS (mutual)" in logs[name], logs[name][-2000:]


def test_migrate_shows_no_password(infra: Infra) -> None:
    url, password = with_password(infra.database_url)
    res = subprocess.run(
        [sys.executable, "-m", "devtools.migrate", url], cwd=ROOT, env=_env(),
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    assert password not in res.stdout + res.stderr


@pytest.mark.parametrize("module", ["services.policy", "services.metering", "services.notifier"])
def test_a_service_that_cannot_reach_postgres_shows_no_password(infra: Infra, module: str) -> None:
    closed = f"postgresql://qm:{ADDED}@127.0.0.1:{free_port()}/quartermaster"
    env = _env(
        QM_DATABASE_URL=closed,
        QM_KAFKA_BOOTSTRAP=infra.kafka_bootstrap,
        QM_LOG_LEVEL="DEBUG",
        QM_POLICY_ADDR=f"127.0.0.1:{free_port()}",
        **metrics_env(),
    )
    res = subprocess.run(
        [sys.executable, "-m", module], cwd=ROOT, env=env,
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert res.returncode != 0
    output = res.stdout + res.stderr
    assert "onnect" in output, output  # it did fail on the connection ("Connect call failed")
    assert ADDED not in output, output
