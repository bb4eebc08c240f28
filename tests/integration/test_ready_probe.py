"""make run's readiness probe when it cannot be ready: it says where it stopped, in
time, instead of "ready" (tests/integration/test_make_run.py sees the ready line)."""

from __future__ import annotations

import time

import pytest

from devtools.localinfra import free_port
from devtools.ready import NotReady, probe_counted


async def test_a_policy_that_never_answers_is_named_once_the_time_is_up() -> None:
    nobody = f"127.0.0.1:{free_port()}"
    began = time.monotonic()
    with pytest.raises(NotReady, match="policy's GetBudget: UNAVAILABLE"):
        await probe_counted(f"127.0.0.1:{free_port()}", nobody, None, "t" * 16, within_s=1.0)
    assert time.monotonic() - began < 15, "bounded by within_s and one call's timeout"
