"""Policy started against a PostgreSQL that never answers (an address that accepts
the connection and then says nothing, as a firewall or a hung server does) exits
non-zero, saying so, rather than sitting there looking alive (issue 14, item 4). No
infrastructure: the "database" is a listening socket nobody reads from."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time

import pytest

from devtools.localinfra import free_port
from quartermaster.db import CONNECT_TIMEOUT_SECONDS
from tests.conftest import ROOT
from tests.helpers import TOKENS_SPEC

# No infrastructure, but it waits out the 10 s connect timeout: with the process tests,
# not in the unit target (kept under a minute).
pytestmark = pytest.mark.infra


def test_policy_without_its_database_exits_non_zero() -> None:
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)  # the kernel completes handshakes; nothing ever answers
        port = silent.getsockname()[1]
        env = {k: v for k, v in os.environ.items() if not k.startswith("QM_")}
        env |= {
            "QM_DATABASE_URL": f"postgresql://qm@127.0.0.1:{port}/qm",
            "QM_POLICY_ADDR": f"127.0.0.1:{free_port()}",
            "QM_TOKENS": TOKENS_SPEC,
        }
        began = time.monotonic()
        # The bound is only there so a regression fails instead of hanging the suite.
        done = subprocess.run(
            [sys.executable, "-m", "services.policy"],
            env=env, cwd=ROOT, capture_output=True, text=True,
            timeout=CONNECT_TIMEOUT_SECONDS + 30,
        )  # fmt: skip
    print(f"policy exited {done.returncode} after {time.monotonic() - began:.1f} s")  # noqa: T201
    assert done.returncode == 1, done.stderr[-2000:]
    assert "PostgreSQL is out of reach" in done.stderr, done.stderr[-2000:]
    assert "Traceback" not in done.stderr, done.stderr[-2000:]
