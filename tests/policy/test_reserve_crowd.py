"""A crowd of Reserves for one user through the gateway's documented client
(PolicyClient, FailMode.OPEN, deadline_s=0.25) against a real policy process (issue 14,
item 1): for a user already over a hard limit every answer is DENY, none the fail
mode's ALLOW; for a user with a little room left, the reservations admitted stay within
the README's bound (spend past the limit within one estimate). Timings are printed."""

from __future__ import annotations

import asyncio
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from devtools.localinfra import free_port
from devtools.localinfra.process import ChildProcess
from devtools.localinfra.stack import Infra
from quartermaster.db import connect_pool
from quartermaster.money import MICROS_PER_CREDIT
from quartermaster.policy_client import FailMode, PolicyClient
from quartermaster.v1 import policy_pb2, policy_pb2_grpc
from services.policy.decide import Enforcement
from services.policy.stores.limits import LimitStore
from tests.conftest import ROOT
from tests.helpers import TOKENS, channel, eventually, new_user
from tests.policy.test_readiness_faults import _publish_totals

pytestmark = pytest.mark.infra
CREDIT = MICROS_PER_CREDIT
LIMIT = 20 * CREDIT
ESTIMATE = CREDIT // 2
CALLERS = 200
DENY = policy_pb2.DECISION_DENY


@pytest.fixture
def policy_port(
    infra: Infra, service_env: dict[str, str], tmp_path: Path
) -> Iterator[tuple[int, str]]:
    """A policy process of a workspace of its own, limit LIMIT (hard): (port, workspace)."""
    workspace = f"ws-{uuid.uuid4().hex[:8]}"

    async def limit() -> None:
        pool = await connect_pool(infra.database_url)
        try:
            await LimitStore(pool, workspace).set_workspace_default(
                LIMIT, Enforcement.HARD, "tests"
            )
        finally:
            await pool.close()

    asyncio.run(limit())
    port = free_port()
    env = {**service_env, "QM_WORKSPACE_ID": workspace, "QM_POLICY_ADDR": f"127.0.0.1:{port}"}
    argv = [sys.executable, "-m", "services.policy"]
    proc = ChildProcess("policy", argv, tmp_path / "policy.log", env=env, cwd=ROOT)
    proc.start()
    try:
        yield port, workspace
    finally:
        proc.stop(timeout=10)


async def _crowd(port: int, user: str, deadline_s: float = 0.25) -> list[policy_pb2.CheckResponse]:
    client = PolicyClient(
        f"127.0.0.1:{port}", fail=FailMode.OPEN, deadline_s=deadline_s, token=TOKENS["gateway"]
    )
    async with client as policy:

        async def one() -> policy_pb2.CheckResponse:
            return await policy.reserve(user, "chat", "gpt-5", ESTIMATE, str(uuid.uuid4()))

        began = time.monotonic()
        answers = await asyncio.gather(*(one() for _ in range(CALLERS)))
        took = time.monotonic() - began
    fail_open = sum(a.limit_source == "fail_open" for a in answers)
    admitted = sum(bool(a.reservation_id) for a in answers)
    print(  # noqa: T201
        f"{CALLERS} concurrent Reserves for {user} (deadline {deadline_s} s):"
        f" {took * 1000:.0f} ms in all,"
        f" {admitted} reserved, {sum(a.decision == DENY for a in answers)} DENY,"
        f" {fail_open} fail_open"
    )
    return list(answers)


async def test_a_crowd_of_reserves_is_denied_or_bounded(
    infra: Infra, policy_port: tuple[int, str]
) -> None:
    port, workspace = policy_port
    over, edge, edge2 = new_user(), new_user(), new_user()
    room = 2 * ESTIMATE + ESTIMATE // 2  # two and a half estimates left
    used = {over: LIMIT * 5 // 4, edge: LIMIT - room, edge2: LIMIT - room}
    _publish_totals(infra.kafka_bootstrap, used)

    async with channel(f"127.0.0.1:{port}") as ch:
        health = health_pb2_grpc.HealthStub(ch)
        stub = policy_pb2_grpc.PolicyServiceStub(ch)

        async def ready_with_totals() -> tuple[int, int]:
            try:
                status = (await health.Check(health_pb2.HealthCheckRequest())).status
                if status != health_pb2.HealthCheckResponse.SERVING:
                    return (-1, -1)
                a = await stub.GetBudget(policy_pb2.GetBudgetRequest(user_id=over))
                b = await stub.GetBudget(policy_pb2.GetBudgetRequest(user_id=edge2))
                return (a.used_micros, b.used_micros)
            except grpc.aio.AioRpcError:  # not listening yet
                return (-1, -1)

        await eventually(ready_with_totals, (LIMIT * 5 // 4, LIMIT - room), within=90)

    # The README's setup, as the tester ran it; how many fit in 0.25 s depends on the
    # machine (one process answers the crowd one call at a time), so it is printed.
    await _crowd(port, over)
    # What the fix guarantees whatever the machine: a DENY from memory does not wait
    # for Postgres. The user's reservation lock is held meanwhile, so a Reserve that
    # queued on it (as every one did before) could only end in the fail mode.
    db = await asyncpg.connect(infra.database_url)
    try:
        key = f"{workspace}\x1fuser\x1f{over}"
        await db.execute("SELECT pg_advisory_lock(hashtextextended($1, 0))", key)
        answers = await _crowd(port, over, deadline_s=5.0)
    finally:
        await db.close()
    assert [a.limit_source for a in answers if a.limit_source == "fail_open"] == []
    assert {a.decision for a in answers} == {DENY}
    assert all(a.used_micros == LIMIT * 5 // 4 for a in answers)

    for user, deadline_s in ((edge, 0.25), (edge2, 5.0)):
        answers = await _crowd(port, user, deadline_s)
        admitted = sum(bool(a.reservation_id) for a in answers)
        # The README's bound: what is admitted past the limit is within one estimate
        # (here nothing past it: a third estimate would not fit, so it is denied).
        assert admitted * ESTIMATE - room <= ESTIMATE
        assert admitted <= room // ESTIMATE
        late = [a for a in answers if a.limit_source == "fail_open"]
        assert all(a.decision == DENY for a in answers if not a.reservation_id and a not in late)
    # With time enough for every caller, the room left is used, and only that.
    assert (admitted, late) == (room // ESTIMATE, [])
