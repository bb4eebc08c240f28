"""PostgreSQL down: policy answers UNAVAILABLE, and comes back with it (issue 14, item 14).

Reserve, Commit and the admin calls answered UNKNOWN "Unexpected ConnectionRefusedError"
with the database down, so PolicyClient.reserve raised instead of answering with the
gateway's fail mode. A fault test: it stops a PostgreSQL of its own (stopping the test
session's would disturb every other test), under a real policy server on the session's
broker, then starts it again.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable

import grpc
import pytest

from devtools.localinfra.postgres import LocalPostgres
from quartermaster.policy_client import FailMode, PolicyClient
from quartermaster.v1 import policy_pb2, policy_pb2_grpc
from services.policy import wiring
from services.policy.settings import PolicySettings
from tests.conftest import ADMIN_METADATA
from tests.helpers import TOKENS, eventually, refusal
from tests.helpers import channel as authed_channel
from tests.policy.workspaces import new_workspace

pytestmark = pytest.mark.infra
DOWN = grpc.StatusCode.UNAVAILABLE


@pytest.fixture
async def policy_on_it(
    own_postgres: LocalPostgres, service_env: dict[str, str]
) -> AsyncIterator[wiring.RunningPolicy]:
    workspace = await new_workspace(own_postgres.url, 10_000_000)
    env = {**service_env, "QM_DATABASE_URL": own_postgres.url, "QM_WORKSPACE_ID": workspace}
    running = await wiring.start(PolicySettings.from_env(env), addr="127.0.0.1:0")
    try:
        await asyncio.wait_for(running.serving.wait(), 60)
        yield running
    finally:
        await running.stop(1)


def _restarted(pg: LocalPostgres) -> None:
    """Start the same cluster again, its data kept (and stopped by the fixture)."""
    pg.fresh = False
    pg.start()


async def test_with_postgres_down_its_calls_answer_unavailable_and_the_fail_mode_decides(
    own_postgres: LocalPostgres, policy_on_it: wiring.RunningPolicy
) -> None:
    target = f"127.0.0.1:{policy_on_it.port}"
    channel = authed_channel(target, "gateway")
    policy = policy_pb2_grpc.PolicyServiceStub(channel)
    admin = policy_pb2_grpc.PolicyAdminServiceStub(channel)

    def reserve(request_id: str) -> policy_pb2.ReserveRequest:
        return policy_pb2.ReserveRequest(user_id="ann", product="chat", model="gpt-5",
                                         estimated_micros=1_000, request_id=request_id)  # fmt: skip

    try:
        made = await policy.Reserve(reserve("before"))
        own_postgres.stop()
        calls: list[Awaitable[object]] = [
            policy.Reserve(reserve("during")),
            policy.Check(policy_pb2.CheckRequest(
                user_id="ann", product="chat", model="gpt-5", reserve=True, request_id="c")),
            policy.Commit(policy_pb2.CommitRequest(reservation_id=made.reservation_id)),
            policy.Release(policy_pb2.ReleaseRequest(reservation_id=made.reservation_id)),
            admin.SetDefaultLimit(policy_pb2.SetDefaultLimitRequest(
                limit_micros=1, period=policy_pb2.PERIOD_DAY,
                enforcement=policy_pb2.ENFORCEMENT_HARD), metadata=ADMIN_METADATA),
            admin.ListLimits(policy_pb2.ListLimitsRequest(), metadata=ADMIN_METADATA),
            admin.UpsertUser(policy_pb2.User(user_id="bob"), metadata=ADMIN_METADATA),
        ]  # fmt: skip
        for call in calls:
            code, details = await refusal(call)
            assert code == DOWN, (code, details)
            assert "database is out of reach" in details
            assert "Error" not in details, "no exception class names leave the server"

        # What answers from memory still does.
        check = policy_pb2.CheckRequest(user_id="ann", product="chat", model="gpt-5")
        assert (await policy.Check(check)).decision == policy_pb2.DECISION_ALLOW

        for mode, source in ((FailMode.CLOSED, "fail_closed"), (FailMode.OPEN, "fail_open")):
            async with PolicyClient(
                target, fail=mode, deadline_s=2.0, token=TOKENS["gateway"]
            ) as client:
                got = await client.reserve("ann", "chat", "gpt-5", 1_000, request_id="gw")
                assert (got.limit_source, got.reservation_id) == (source, "")
                with pytest.raises(grpc.aio.AioRpcError) as info:
                    await client.commit(made.reservation_id, 1_000)
                assert info.value.code() == DOWN

        _restarted(own_postgres)

        async def reserved_after() -> object:
            # The pool connects again on its own: UNAVAILABLE until it has.
            try:
                return (await policy.Reserve(reserve("after"))).decision
            except grpc.aio.AioRpcError as exc:
                return exc.code()

        await eventually(reserved_after, policy_pb2.DECISION_ALLOW, within=30)
        done = await policy.Commit(
            policy_pb2.CommitRequest(reservation_id=made.reservation_id, actual_micros=500)
        )
        assert done.committed
    finally:
        await channel.close(None)
