"""The session's metering HTTP ingest, as a real process (a plugin of tests/conftest.py:
its fixtures serve every test directory)."""

from __future__ import annotations

import os
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from devtools.localinfra import free_port
from devtools.localinfra.process import ChildProcess

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def _ingest_session(service_env: dict[str, str]) -> Iterator[str]:
    """metering's HTTP ingest for the session, as a real process
    (`python -m services.metering.ingest`); yields its address (host:port) once its
    /healthz says the broker is reachable."""
    addr = f"127.0.0.1:{free_port()}"
    log_path = ROOT / ".run" / f"test-{os.getpid()}-logs" / "ingest.log"
    argv = [sys.executable, "-m", "services.metering.ingest"]
    env = {**service_env, "QM_METERING_INGEST_ADDR": addr}
    proc = ChildProcess("ingest", argv, log_path, env=env, cwd=ROOT)
    proc.start()
    try:
        deadline = time.monotonic() + 60
        while not _healthy(addr):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"the ingest never got healthy:\n{proc.log_tail()}")
            time.sleep(0.2)
        yield addr
    finally:
        proc.stop(timeout=15)


def _healthy(addr: str) -> bool:
    try:
        with urllib.request.urlopen(f"http://{addr}/healthz", timeout=5) as resp:
            return bool(resp.status == 200)
    except OSError:  # not listening yet, or 503 (an HTTPError is an OSError)
        return False


@pytest.fixture
def ingest_addr(request: pytest.FixtureRequest, _ingest_session: str) -> str:
    """host:port of the session's HTTP ingest (POST /v1/usage, /healthz, /metrics)."""
    if request.node.get_closest_marker("infra") is None:
        raise pytest.UsageError(f"{request.node.nodeid} uses the ingest without @pytest.mark.infra")
    return _ingest_session
