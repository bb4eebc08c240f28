"""Real servers refuse to start on a certificate out of its dates, naming the file and
the dates, and start with a WARNING on one that expires within 14 days (issue 14,
breaker #9): policy (`python -m services.policy`) and the Cost API (`python -m
services.metering.api`) as processes on the session's PostgreSQL and broker, with
certificates made in the test. (The other listeners, the notifier's Slack
interactivity endpoint and the metrics endpoints, serve plain HTTP, without TLS of
their own: nothing to check there.)"""

from __future__ import annotations

import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from devtools.localinfra import free_port
from tests.conftest import ROOT
from tests.platform.test_tls_dates import leaf

pytestmark = pytest.mark.infra
NOW = datetime.now(UTC)
DAY = timedelta(days=1)
SERVERS = {
    "policy": ([sys.executable, "-m", "services.policy"], "QM_POLICY_ADDR"),
    "metering api": ([sys.executable, "-m", "services.metering.api"], "QM_USAGE_API_ADDR"),
}


def env_with(service_env: dict[str, str], addr_var: str, cert: str, key: str) -> dict[str, str]:
    return {**service_env, addr_var: f"127.0.0.1:{free_port()}",
            "QM_TLS_CERT_FILE": cert, "QM_TLS_KEY_FILE": key}  # fmt: skip


@pytest.mark.parametrize("server", sorted(SERVERS))
def test_a_server_with_an_expired_certificate_refuses_to_start(
    service_env: dict[str, str], tmp_path: Path, server: str
) -> None:
    argv, addr_var = SERVERS[server]
    _ca, cert, key = leaf(tmp_path, "server", NOW - 90 * DAY, NOW - 2 * DAY)
    done = subprocess.run(argv, env=env_with(service_env, addr_var, cert, key), cwd=ROOT,
                          capture_output=True, text=True, timeout=60)  # fmt: skip
    assert done.returncode == 2, done
    assert f"QM_TLS_CERT_FILE: {cert}: the certificate for " in done.stderr, done.stderr
    expired_on = (NOW - 2 * DAY).strftime("%Y-%m-%d")
    assert f" expired (valid from {(NOW - 90 * DAY).strftime('%Y-%m-%d')}" in done.stderr
    assert f"to {expired_on}" in done.stderr


@pytest.mark.parametrize("server", sorted(SERVERS))
def test_a_server_whose_certificate_expires_soon_starts_with_a_warning(
    service_env: dict[str, str], tmp_path: Path, server: str
) -> None:
    argv, addr_var = SERVERS[server]
    _ca, cert, key = leaf(tmp_path, "server", NOW - DAY, NOW + 3 * DAY)
    log_path = tmp_path / "server.log"
    with log_path.open("w") as log:
        proc = subprocess.Popen(argv, env=env_with(service_env, addr_var, cert, key), cwd=ROOT,
                                stdout=log, stderr=subprocess.STDOUT)  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        wanted = "gRPC on "  # the listening line comes after the TLS material is built
        while wanted not in log_path.read_text() and time.monotonic() < deadline:
            assert proc.poll() is None, log_path.read_text()
            time.sleep(0.1)
        text = log_path.read_text()
        assert wanted in text, text
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    [line] = [ln for ln in text.splitlines() if "expires on" in ln]
    assert "WARNING qm.tls: TLS: " in line, line
    assert f"{cert}: the certificate for " in line
    assert f"expires on {(NOW + 3 * DAY).strftime('%Y-%m-%d')}" in line
