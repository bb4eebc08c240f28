"""PostgreSQL that stops answering (frozen through a proxy) under a policy server with
a short QM_DATABASE_TIMEOUT: Check answers from memory, writes answer UNAVAILABLE
within a bound, and everything works again once it answers."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from urllib.parse import urlsplit

import grpc
import pytest

from devtools.localinfra.stack import Infra
from quartermaster.db import connect_pool
from quartermaster.v1 import policy_pb2, policy_pb2_grpc
from services.policy import wiring
from services.policy.decide import Enforcement
from services.policy.settings import PolicySettings
from services.policy.stores.limits import LimitStore
from tests.conftest import ADMIN_METADATA
from tests.helpers import channel as authed_channel
from tests.helpers import eventually
from tests.metering.test_stop_bounded import Proxy, proxied
from tests.policy.workspaces import new_workspace

pytestmark = pytest.mark.infra
TIMEOUT = 2.0


async def behind_proxy(
    infra: Infra, service_env: dict[str, str]
) -> tuple[wiring.RunningPolicy, Proxy, str]:
    """A policy server of a new workspace (a default limit set) whose PostgreSQL is
    reached through a proxy the test can freeze, serving; QM_DATABASE_TIMEOUT 2 s."""
    workspace = await new_workspace(infra.database_url, 10_000_000)
    u = urlsplit(infra.database_url)
    proxy = Proxy(u.hostname or "127.0.0.1", u.port or 5432)
    env = {
        **service_env,
        "QM_DATABASE_URL": proxied(infra.database_url, proxy.port),
        "QM_WORKSPACE_ID": workspace,
        "QM_DATABASE_TIMEOUT": str(TIMEOUT),
    }
    running = await wiring.start(PolicySettings.from_env(env), addr="127.0.0.1:0")
    await asyncio.wait_for(running.serving.wait(), 60)
    return running, proxy, workspace


@pytest.fixture
async def frozen_policy(
    infra: Infra, service_env: dict[str, str]
) -> AsyncIterator[tuple[wiring.RunningPolicy, Proxy, str]]:
    running, proxy, workspace = await behind_proxy(infra, service_env)
    try:
        yield running, proxy, workspace
    finally:
        proxy.frozen.clear()
        await asyncio.wait_for(running.stop(1), 60)
        proxy.close()


async def timed(call: Awaitable[object]) -> tuple[str, float]:
    began = time.monotonic()
    try:
        await call
        code = "OK"
    except grpc.aio.AioRpcError as exc:
        code = exc.code().name
    return code, time.monotonic() - began


async def test_frozen_postgres_check_answers_writes_unavailable_and_recover(
    infra: Infra,
    frozen_policy: tuple[wiring.RunningPolicy, Proxy, str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO)
    running, proxy, workspace = frozen_policy
    channel = authed_channel(f"127.0.0.1:{running.port}", "gateway")
    policy = policy_pb2_grpc.PolicyServiceStub(channel)
    admin = policy_pb2_grpc.PolicyAdminServiceStub(channel)

    def reserve(request_id: str, user: str = "ann") -> policy_pb2.ReserveRequest:
        return policy_pb2.ReserveRequest(user_id=user, product="chat", model="gpt-5",
                                         estimated_micros=1_000, request_id=request_id)  # fmt: skip

    check = policy_pb2.CheckRequest(user_id="ann", product="chat", model="gpt-5")
    try:
        made = await policy.Reserve(reserve("before"))
        proxy.frozen.set()
        began = time.monotonic()
        # More writes than the pool has connections (10).
        writes: list[Awaitable[object]] = [
            policy.Reserve(reserve(f"during-{i}", f"u{i}"), timeout=60) for i in range(15)
        ]
        writes += [
            policy.Commit(policy_pb2.CommitRequest(reservation_id=made.reservation_id), timeout=60),
            admin.SetDefaultLimit(policy_pb2.SetDefaultLimitRequest(
                limit_micros=1, period=policy_pb2.PERIOD_DAY,
                enforcement=policy_pb2.ENFORCEMENT_HARD), metadata=ADMIN_METADATA, timeout=60),
            admin.ListLimits(policy_pb2.ListLimitsRequest(), metadata=ADMIN_METADATA, timeout=60),
        ]  # fmt: skip
        write_tasks = [asyncio.ensure_future(timed(w)) for w in writes]
        checks = []
        while time.monotonic() - began < 12:
            checks.append(await timed(policy.Check(check, timeout=5)))
            await asyncio.sleep(0.5)
        done, pending = await asyncio.wait(write_tasks, timeout=60)
        results = [t.result() for t in done]
        print("checks while frozen:", checks[:3], "... max", max(t for _, t in checks))  # noqa: T201
        print("writes while frozen:", sorted(results, key=lambda r: r[1]))  # noqa: T201
        assert not pending, f"{len(pending)} writes still pending after 60 s"
        assert all(c == "OK" and t < 1 for c, t in checks), checks
        assert {c for c, _ in results} == {"UNAVAILABLE"}, results
        proxy.frozen.clear()
        await works_again(infra, policy, workspace, made.reservation_id, reserve, check)
    finally:
        await channel.close(None)
    # asyncpg.pool's own warnings carry a traceback, put on one line by the services'
    # logging (quartermaster.telemetry); every other record must have none.
    ours = [r for r in caplog.records if r.name != "asyncpg.pool"]
    assert not [r.getMessage() for r in ours if r.exc_info], "a traceback was logged"
    assert all(r.levelno < logging.ERROR for r in ours), [
        r.getMessage() for r in ours if r.levelno >= logging.ERROR
    ]
    assert running.listener.reconnects >= 1  # the LISTEN connection was replaced


async def works_again(
    infra: Infra,
    policy: policy_pb2_grpc.PolicyServiceAsyncStub,
    workspace: str,
    reservation_id: str,
    reserve: Callable[..., policy_pb2.ReserveRequest],
    check: policy_pb2.CheckRequest,
) -> None:
    """Once PostgreSQL answers again: a Reserve, the Commit of the one made before the
    freeze, 30 concurrent writes (every pooled connection usable), and a limit change
    made elsewhere reaching the replica."""
    unfrozen = time.monotonic()

    async def reserved_after() -> object:
        try:
            return (await policy.Reserve(reserve("after"), timeout=10)).decision
        except grpc.aio.AioRpcError as exc:
            return exc.code()

    await eventually(reserved_after, policy_pb2.DECISION_ALLOW, within=30)
    print(f"Reserve OK {time.monotonic() - unfrozen:.1f} s after unfreezing")  # noqa: T201
    done_commit = await policy.Commit(
        policy_pb2.CommitRequest(reservation_id=reservation_id, actual_micros=500),
        timeout=10,
    )
    assert done_commit.committed
    # Every connection of the pool usable again: 30 concurrent writes all answer.
    again = await asyncio.gather(
        *(timed(policy.Reserve(reserve(f"again-{i}", f"u{i}"), timeout=20)) for i in range(30))
    )
    assert {c for c, _ in again} == {"OK"}, again

    # A limit change made elsewhere reaches this replica (LISTEN or polling).
    pool = await connect_pool(infra.database_url)
    try:
        await LimitStore(pool, workspace).set_workspace_default(1, Enforcement.HARD, "tests")
    finally:
        await pool.close()

    async def denied() -> object:
        return (await policy.Check(check)).decision

    await eventually(denied, policy_pb2.DECISION_DENY, within=10)


async def test_a_stop_ends_within_the_bounds_while_postgres_does_not_answer(
    infra: Infra, service_env: dict[str, str]
) -> None:
    """SIGTERM's path (`RunningPolicy.stop`) on a frozen PostgreSQL: the LISTEN
    connection's close waited for good (it is outside the pool, and had no command
    timeout), then the pool's close raised TimeoutError, which `run_service` reports as
    "PostgreSQL is out of reach", exit 1. Now each is closed within its bound
    (PING_TIMEOUT_SECONDS, db.CLOSE_SECONDS) and then closed under it."""
    running, proxy, _ = await behind_proxy(infra, service_env)
    try:
        proxy.frozen.set()
        await asyncio.sleep(0.5)
        began = time.monotonic()
        await asyncio.wait_for(running.stop(1), 60)  # raised nothing, ended
        took = time.monotonic() - began
        # grace 1 s, the listener's close 5 s, the pool's 10 s: within Kubernetes' 30 s
        assert took < 25, f"stop took {took:.1f} s"
    finally:
        proxy.frozen.clear()
        proxy.close()
