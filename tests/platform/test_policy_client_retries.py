"""PolicyClient's retries (gRPC's retry policy in the channel's service config) against
a policy stand-in whose every other attempt fails: a transient failure must reach the
server's answer, not the fail mode, however many calls a gateway makes and however
large a batch is. A stand-in because the real server can't be made to fail one attempt
in two; the stand-in speaks the real generated service's wire methods."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest

from quartermaster.policy_client import FailMode, PolicyClient
from quartermaster.v1 import policy_pb2
from tests.helpers import TOKENS, PolicyMethods, serve_policy_methods

GATEWAY = TOKENS["gateway"]


class EveryOtherFails:
    """Answers UNAVAILABLE on every odd attempt, the server's answer on every even one."""

    def __init__(self) -> None:
        self.attempts = 0

    async def _maybe_fail(self, context: Any) -> None:
        self.attempts += 1
        if self.attempts % 2:
            await context.abort(grpc.StatusCode.UNAVAILABLE, "blip")

    async def Check(self, request: Any, context: Any) -> policy_pb2.CheckResponse:
        await self._maybe_fail(context)
        return policy_pb2.CheckResponse(decision=policy_pb2.DECISION_ALLOW, limit_source="server")

    async def CheckBatch(self, request: Any, context: Any) -> policy_pb2.CheckBatchResponse:
        await self._maybe_fail(context)
        ok = policy_pb2.CheckResponse(decision=policy_pb2.DECISION_ALLOW, limit_source="server")
        return policy_pb2.CheckBatchResponse(results=[ok for _ in request.checks])


@pytest.fixture
async def blips() -> AsyncIterator[tuple[str, EveryOtherFails]]:
    servicer = EveryOtherFails()
    methods: PolicyMethods = {
        "Check": (servicer.Check, policy_pb2.CheckRequest, policy_pb2.CheckResponse),
        "CheckBatch": (
            servicer.CheckBatch,
            policy_pb2.CheckBatchRequest,
            policy_pb2.CheckBatchResponse,
        ),
    }
    async for target in serve_policy_methods(methods):
        yield target, servicer


async def test_transient_failures_keep_being_retried_over_many_calls(
    blips: tuple[str, EveryOtherFails],
) -> None:
    # The first throttle (20 tokens, 0.1 back per success) stopped retrying after ~10
    # failures: half of these 100 calls got the fail mode's DENY.
    target, servicer = blips
    async with PolicyClient(target, fail=FailMode.CLOSED, deadline_s=2.0, token=GATEWAY) as client:
        answers = [await client.check("ann", "chat", "gpt-5") for _ in range(100)]
    assert {a.limit_source for a in answers} == {"server"}
    assert client.degraded == 0
    assert servicer.attempts == 200


async def test_a_batch_larger_than_grpcs_default_retry_buffer_is_retried(
    blips: tuple[str, EveryOtherFails],
) -> None:
    # gRPC keeps 256 KiB of a call for retrying by default; this batch is ~290 KB.
    target, servicer = blips
    checks = [
        policy_pb2.CheckRequest(user_id=f"{i:04d}" + "u" * 250, product="chat", model="gpt-5")
        for i in range(1000)
    ]
    assert sum(c.ByteSize() for c in checks) > 256 * 1024
    async with PolicyClient(target, fail=FailMode.CLOSED, deadline_s=5.0, token=GATEWAY) as client:
        answers = await client.check_batch(checks)
    assert len(answers) == 1000
    assert {a.limit_source for a in answers} == {"server"}
    assert servicer.attempts == 2


def test_the_old_migration_command_says_where_migrations_went() -> None:
    # `python -m quartermaster.db URL` was the migration command; run now, it must not
    # exit 0 having migrated nothing.
    done = subprocess.run(
        [sys.executable, "-m", "quartermaster.db", "postgresql://x@127.0.0.1:1/x"],
        capture_output=True, text=True, check=False, timeout=60,
    )  # fmt: skip
    assert done.returncode != 0
    assert "python -m devtools.migrate" in done.stderr
