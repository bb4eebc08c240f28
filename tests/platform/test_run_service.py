"""A service that can't reach PostgreSQL ends with one line saying so, exit 1: the
Cost API, requests and the notifier printed 50-70 lines of asyncpg's connect (breaker);
policy had said it in one line. Every service starts through quartermaster.db.run_service."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from devtools.localinfra import free_port
from tests.conftest import ROOT
from tests.helpers import TOKENS_SPEC

pytestmark = pytest.mark.infra  # processes of their own (no infrastructure: none reachable)


@pytest.mark.parametrize(
    "module", ["services.policy", "services.metering.api", "services.requests", "services.notifier"]
)
def test_postgres_out_of_reach_is_one_line_and_exit_1(module: str) -> None:
    env = {
        **os.environ,
        "QM_DATABASE_URL": f"postgresql://qm:s3cretpw@127.0.0.1:{free_port()}/quartermaster",
        "QM_TOKENS": TOKENS_SPEC,
        "QM_REQUESTS_CLIENT_TOKEN": "test-reader-token-0123456789",
        **{name: f"127.0.0.1:{free_port()}"
           for name in ("QM_POLICY_ADDR", "QM_USAGE_API_ADDR", "QM_REQUESTS_ADDR")},
        "QM_USAGE_API_METRICS_ADDR": "off",
    }  # fmt: skip
    done = subprocess.run([sys.executable, "-m", module], env=env, cwd=ROOT,
                          capture_output=True, text=True, timeout=90)  # fmt: skip
    said = done.stdout + done.stderr
    assert done.returncode == 1, said
    assert "can't run: PostgreSQL is out of reach (QM_DATABASE_URL): ConnectionRefusedError" in said
    assert "Traceback" not in said, said
    assert "s3cretpw" not in said
