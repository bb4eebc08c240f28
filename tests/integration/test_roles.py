"""Every RPC of every service against the real servers (the session's policy server and
a Cost API on the session's PostgreSQL): without a credential UNAUTHENTICATED, with a
credential lacking the role PERMISSION_DENIED naming what the call needed, with each
role the table allows not refused. Health and reflection answer without one. And the
clients: a fail-open PolicyClient with a refused token raises, never allows.

Calls carry an empty request: the ones let through are refused by validation or
answer for nobody, so no test's data changes."""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from devtools.localinfra.stack import Infra
from quartermaster import roles
from quartermaster.directory_client import DirectoryClient, DirectoryUnavailable
from quartermaster.policy_client import FailMode, PolicyClient, PolicyRefused
from quartermaster.tokens import ROLES
from services.metering import api
from services.metering.settings import MeteringSettings
from services.policy.wiring import RunningPolicy
from services.requests import wiring as requests_wiring
from services.requests.settings import RequestsSettings
from tests.helpers import SERVED_WITHIN_S, TOKENS, metadata, refusal

pytestmark = pytest.mark.infra
REFUSED = {grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED}
# Answers that would mean the call never reached its servicer properly.
NEVER = REFUSED | {grpc.StatusCode.UNIMPLEMENTED, grpc.StatusCode.UNKNOWN, grpc.StatusCode.INTERNAL}
METERING = ("UsageService", "PriceCatalogService")
# Defined in the protos and the roles table, served by no server yet: named, not missed.
NOT_SERVED: dict[str, str] = {}
REQUESTS = ("RequestService",)
SERVED = [m for m in sorted(roles.METHOD_ROLES) if roles.short(m).split("/")[0] not in NOT_SERVED]


@pytest.fixture
async def addresses(
    infra: Infra, service_env: dict[str, str], policy_server: RunningPolicy
) -> AsyncIterator[dict[str, str]]:
    """service name → address of the real server that serves it."""
    running = await api.start(MeteringSettings.from_env(service_env), addr="127.0.0.1:0")
    requests = await requests_wiring.start(
        RequestsSettings.from_env(service_env), addr="127.0.0.1:0"
    )
    try:
        policy, metering = f"127.0.0.1:{policy_server.port}", f"127.0.0.1:{running.served.port}"
        services = {roles.short(m).split("/")[0] for m in roles.METHOD_ROLES}
        where = {s: metering if s in METERING else policy for s in services}
        yield {**where, **{s: f"127.0.0.1:{requests.port}" for s in REQUESTS}}
    finally:
        await requests.stop(1)
        await running.stop(1)


async def _status(
    target: str, method: str, md: tuple[tuple[str, str], ...]
) -> tuple[grpc.StatusCode, str]:
    async with grpc.aio.insecure_channel(target) as ch:
        try:
            await ch.unary_unary(method, None, None)(b"", metadata=md, timeout=30)
        except grpc.aio.AioRpcError as exc:
            return exc.code(), exc.details() or ""
    return grpc.StatusCode.OK, ""


@pytest.mark.parametrize("method", SERVED, ids=roles.short)
async def test_every_method_needs_a_credential_with_its_role(
    addresses: dict[str, str], method: str
) -> None:
    target = addresses[roles.short(method).split("/")[0]]
    allowed = roles.METHOD_ROLES[method]
    code, said = await _status(target, method, ())
    assert code == grpc.StatusCode.UNAUTHENTICATED, said
    assert said.startswith(f"{roles.short(method)} needs a credential")
    for role in ROLES:
        code, said = await _status(target, method, metadata(role))
        if role in allowed:
            assert code not in NEVER, (role, code, said)
        else:
            assert code == grpc.StatusCode.PERMISSION_DENIED, (role, code, said)
            needed = " or ".join(sorted(allowed))
            who = f"credential 'tests-{role}' has {role}"
            assert said == f"{roles.short(method)} needs role {needed}; {who}"


async def test_health_and_reflection_answer_without_a_credential(
    addresses: dict[str, str],
) -> None:
    for target in set(addresses.values()):
        async with grpc.aio.insecure_channel(target) as ch:
            answer = await health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest())
            assert answer.status == health_pb2.HealthCheckResponse.SERVING


async def test_a_fail_open_client_with_a_refused_token_raises_and_never_allows(
    policy_server: RunningPolicy,
) -> None:
    target = f"127.0.0.1:{policy_server.port}"
    for empty in ("", None):
        with pytest.raises(ValueError, match="token: empty; PolicyClient needs a bearer token"):
            PolicyClient(target, fail=FailMode.OPEN, token=empty)  # type: ignore[arg-type]
    for token, code, said in (
        ("an-unknown-token-0123456789", grpc.StatusCode.UNAUTHENTICATED, "QM_TOKENS?"),
        (TOKENS["reader"], grpc.StatusCode.PERMISSION_DENIED, "needs role gateway"),
    ):
        async with PolicyClient(
            target, fail=FailMode.OPEN, deadline_s=SERVED_WITHIN_S, token=token
        ) as client:
            with pytest.raises(PolicyRefused) as info:
                await client.check("ann", "chat", "gpt-5")
            assert info.value.code() == code
            assert said in str(info.value)
            assert token not in str(info.value)
            assert (await refusal(client.check_batch([])))[0] == code  # an AioRpcError too
            assert client.degraded == 0
    async with PolicyClient(
        target, fail=FailMode.OPEN, deadline_s=SERVED_WITHIN_S, token=TOKENS["gateway"]
    ) as client:
        verdict = await client.check("ann", "chat", "gpt-5")
        assert verdict.limit_source != "fail_open"
        # security.md: role gateway reads budgets; the client has the call for it.
        budget = await client.budget("ann")
        assert (budget.user_id, budget.limit_micros) == ("ann", verdict.limit_micros)


async def test_a_directory_client_sends_its_token(policy_server: RunningPolicy) -> None:
    target = f"127.0.0.1:{policy_server.port}"
    async with DirectoryClient(target, token=TOKENS["reader"]) as directory:
        assert isinstance(await directory.group_members([]), dict)
    async with DirectoryClient(target, token=TOKENS["gateway"]) as directory:
        with pytest.raises(
            DirectoryUnavailable,
            match="PERMISSION_DENIED: DirectoryService/GroupMembers needs role admin or reader",
        ):
            await directory.group_members([])
