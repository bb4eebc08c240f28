"""policy over a real gRPC connection: validation, health, reflection."""

from __future__ import annotations

from typing import TYPE_CHECKING

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from quartermaster.v1 import policy_pb2
from services.policy.wiring import RunningPolicy

pytestmark = pytest.mark.infra

if TYPE_CHECKING:
    from quartermaster.v1.policy_pb2_grpc import PolicyServiceAsyncStub as Stub


@pytest.mark.parametrize(
    ("request_", "message"),
    [
        (
            policy_pb2.CheckRequest(),
            "user_id: must not be empty; product: must not be empty; model: must not be empty",
        ),
        (
            policy_pb2.CheckRequest(user_id="u", product="p", model="m", estimated_micros=-1),
            "estimated_micros: must not be negative",
        ),
        (
            policy_pb2.CheckRequest(user_id="u" * 300, product="p", model="m"),
            "user_id: longer than 256 characters",
        ),
        (
            policy_pb2.CheckRequest(user_id="u", product="  ", model="m"),
            "product: must not be empty",
        ),
        (
            policy_pb2.CheckRequest(user_id="u", product="p", model="m", reserve=True),
            "request_id: must not be empty",
        ),
    ],
)
async def test_invalid_checks_name_the_field(
    policy: Stub, request_: policy_pb2.CheckRequest, message: str
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await policy.Check(request_)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert info.value.details() == message


async def test_get_budget_without_a_user_is_invalid(policy: Stub) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await policy.GetBudget(policy_pb2.GetBudgetRequest(user_id="  "))
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert info.value.details() == "user_id: must not be empty"


async def test_health_and_reflection(policy_server: RunningPolicy) -> None:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{policy_server.port}") as ch:
        health = health_pb2_grpc.HealthStub(ch)
        for service in ("", "quartermaster.v1.PolicyService"):
            resp = await health.Check(health_pb2.HealthCheckRequest(service=service))
            assert resp.status == health_pb2.HealthCheckResponse.SERVING
        refl = reflection_pb2_grpc.ServerReflectionStub(ch)
        call = refl.ServerReflectionInfo()
        await call.write(reflection_pb2.ServerReflectionRequest(list_services=""))
        reply = await call.read()
        await call.done_writing()
        names = {s.name for s in reply.list_services_response.service}
        assert {"quartermaster.v1.PolicyService", "grpc.health.v1.Health"} <= names
