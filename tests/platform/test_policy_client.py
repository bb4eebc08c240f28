"""PolicyClient and CheckBatch against the real policy server, against nothing, and
against a small in-process server that fails on purpose (the retries are gRPC's)."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest

from devtools.localinfra import free_port
from devtools.localinfra.stack import Infra
from quartermaster.policy_client import (
    OUTAGES,
    FailMode,
    PolicyClient,
    PolicyRefused,
    PolicyRequestError,
)
from quartermaster.v1 import policy_pb2
from services.policy.wiring import RunningPolicy
from tests.conftest import MeteringWorker
from tests.helpers import (
    SERVED_WITHIN_S,
    TOKENS,
    PolicyMethods,
    eventually,
    new_user,
    produce_usage,
    serve_policy_methods,
    usage,
)

GATEWAY = TOKENS["gateway"]
ONE_CREDIT = {"model": "gpt-5", "input_tokens": 400_000, "output_tokens": 50_000}


def req(user: str, estimated: int = 0) -> policy_pb2.CheckRequest:
    return policy_pb2.CheckRequest(
        user_id=user, product="chat", model="gpt-5", estimated_micros=estimated
    )


@pytest.mark.infra
async def test_check_and_check_batch_answer_in_request_order(
    infra: Infra, metering: MeteringWorker, policy_server: RunningPolicy
) -> None:
    spent, fresh = new_user(), new_user()
    produce_usage(infra.kafka_bootstrap, [usage(spent, **ONE_CREDIT) for _ in range(10)])
    target = f"127.0.0.1:{policy_server.port}"
    async with PolicyClient(
        target, fail=FailMode.CLOSED, deadline_s=SERVED_WITHIN_S, token=GATEWAY
    ) as client:

        async def used() -> int:
            return (await client.check(spent, "chat", "gpt-5")).used_micros

        await eventually(used, 10_000_000)
        results = await client.check_batch([req(fresh), req(spent), req(fresh, 11_000_000)])
        assert [r.decision for r in results] == [
            policy_pb2.DECISION_ALLOW,
            policy_pb2.DECISION_DENY,
            policy_pb2.DECISION_DENY,  # the estimate alone passes the 10-credit limit
        ]
        assert [r.used_micros for r in results] == [0, 10_000_000, 0]
        assert client.degraded == 0


@pytest.mark.infra
async def test_reserve_commit_and_release_through_the_client(
    policy_server: RunningPolicy,
) -> None:
    user = new_user()
    target = f"127.0.0.1:{policy_server.port}"
    async with PolicyClient(
        target, fail=FailMode.CLOSED, deadline_s=SERVED_WITHIN_S, token=GATEWAY
    ) as client:
        made = await client.reserve(user, "chat", "gpt-5", 3_000_000, request_id=f"a-{user}")
        assert made.decision == policy_pb2.DECISION_ALLOW
        assert (bool(made.reservation_id), made.reserved_micros) == (True, 3_000_000)
        again = await client.reserve(user, "chat", "gpt-5", 3_000_000, request_id=f"a-{user}")
        assert again.reservation_id == made.reservation_id, "a retry gets the same reservation"
        assert (await client.check(user, "chat", "gpt-5")).reserved_micros == 3_000_000

        done = await client.commit(made.reservation_id, 2_000_000)
        assert (done.committed, done.actual_micros) == (True, 2_000_000)
        other = await client.reserve(user, "chat", "gpt-5", 1_000_000, request_id=f"b-{user}")
        assert (await client.check(user, "chat", "gpt-5")).reserved_micros == 3_000_000
        released = await client.release(other.reservation_id)
        assert released is not None
        assert released.released
        assert await client.release(other.reservation_id) is None, "released already"
        assert (await client.check(user, "chat", "gpt-5")).reserved_micros == 2_000_000
        with pytest.raises(PolicyRequestError, match="actual_micros: must not be negative"):
            await client.commit(made.reservation_id, -1)
        assert client.degraded == 0


@pytest.mark.infra
async def test_bad_requests_raise_naming_the_fields_and_are_not_retried(
    policy_server: RunningPolicy,
) -> None:
    target = f"127.0.0.1:{policy_server.port}"
    async with PolicyClient(
        target, fail=FailMode.OPEN, deadline_s=SERVED_WITHIN_S, token=GATEWAY
    ) as client:
        with pytest.raises(PolicyRequestError, match="user_id: must not be empty"):
            await client.check("", "chat", "gpt-5")
        with pytest.raises(PolicyRequestError) as info:
            await client.check_batch([req("ok"), req("", -1)])
        assert str(info.value) == (
            "checks[1].user_id: must not be empty; checks[1].estimated_micros: must not be negative"
        )
        with pytest.raises(PolicyRequestError, match="checks: at most 1000, got 1001"):
            await client.check_batch([req("u")] * 1001)
        assert client.degraded == 0


@pytest.mark.parametrize(
    ("mode", "decision", "source"),
    [
        (FailMode.OPEN, policy_pb2.DECISION_ALLOW, "fail_open"),
        (FailMode.CLOSED, policy_pb2.DECISION_DENY, "fail_closed"),
    ],
)
async def test_when_policy_cannot_be_reached_the_gateways_choice_answers(
    mode: FailMode, decision: int, source: str
) -> None:
    nobody = f"127.0.0.1:{free_port()}"  # nothing listens here
    async with PolicyClient(nobody, fail=mode, deadline_s=0.1, retries=2, token=GATEWAY) as client:
        started = time.monotonic()
        got = await client.check("ann", "chat", "gpt-5")
        batch = await client.check_batch([req("ann"), req("bob")])
        made = await client.reserve("ann", "chat", "gpt-5", 1_000, request_id="r-1")
        with pytest.raises(grpc.aio.AioRpcError) as info:  # no fail mode for a commit
            await client.commit("7d4c6f0e-0000-4000-8000-000000000000", 1_000)
        took = time.monotonic() - started
    assert (got.decision, got.limit_source) == (decision, source)
    assert "policy unreachable (UNAVAILABLE" in got.reason
    assert [b.limit_source for b in batch] == [source, source]
    assert (made.decision, made.limit_source, made.reservation_id) == (decision, source, "")
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE
    assert client.degraded == 4
    assert took < 5, "bounded by deadlines and retries, not hanging"


@pytest.mark.infra
async def test_other_errors_are_not_hidden_by_the_fail_mode(policy_server: RunningPolicy) -> None:
    target = f"127.0.0.1:{policy_server.port}"
    async with PolicyClient(
        target, fail=FailMode.OPEN, deadline_s=SERVED_WITHIN_S, token=GATEWAY
    ) as client:
        # Point Check at a method policy lacks: refused (deny by default: no role may
        # call a method the roles table does not name), and raised, not the fail mode.
        client._stub = policy_pb2_grpc_unimplemented(client)  # type: ignore[assignment]
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await client.check("ann", "chat", "gpt-5")
    assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert client.degraded == 0


def policy_pb2_grpc_unimplemented(client: PolicyClient) -> object:
    """A stub whose Check goes to a method name the server does not serve."""

    class Stub:
        def __init__(self, channel: grpc.aio.Channel) -> None:
            self.Check = channel.unary_unary(
                "/quartermaster.v1.PolicyService/NoSuchMethod",
                request_serializer=policy_pb2.CheckRequest.SerializeToString,
                response_deserializer=policy_pb2.CheckResponse.FromString,
            )

    return Stub(client._channel)


class Flaky:
    """Answers UNAVAILABLE `failures` times, then ALLOW; Commit always says the hold
    ended (FAILED_PRECONDITION, which must not be retried). Counts the calls."""

    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.calls = 0

    async def Check(self, request: Any, context: Any) -> policy_pb2.CheckResponse:
        self.calls += 1
        if self.calls <= self.failures:
            await context.abort(grpc.StatusCode.UNAVAILABLE, "warming up")
        return policy_pb2.CheckResponse(decision=policy_pb2.DECISION_ALLOW)

    async def Commit(self, request: Any, context: Any) -> policy_pb2.Reservation:
        self.calls += 1
        await context.abort(grpc.StatusCode.FAILED_PRECONDITION, "reservation released")
        raise AssertionError("abort raises")


async def _serve(servicer: Flaky) -> AsyncIterator[str]:
    methods: PolicyMethods = {
        "Check": (servicer.Check, policy_pb2.CheckRequest, policy_pb2.CheckResponse),
        "Commit": (servicer.Commit, policy_pb2.CommitRequest, policy_pb2.Reservation),
    }
    async for target in serve_policy_methods(methods):
        yield target


@pytest.mark.parametrize(("retries", "decision", "calls"), [(2, "ALLOW", 3), (1, "DENY", 2)])
async def test_unavailable_is_retried_by_grpc_then_the_fail_mode_answers(
    retries: int, decision: str, calls: int
) -> None:
    flaky = Flaky(failures=2)
    async for target in _serve(flaky):
        async with PolicyClient(
            target, fail=FailMode.CLOSED, retries=retries, deadline_s=SERVED_WITHIN_S, token=GATEWAY
        ) as client:
            got = await client.check("ann", "chat", "gpt-5")
    assert policy_pb2.Decision.Name(got.decision) == f"DECISION_{decision}"
    assert flaky.calls == calls
    assert client.degraded == (0 if decision == "ALLOW" else 1)


async def test_a_final_answer_is_not_retried() -> None:
    flaky = Flaky(failures=0)
    async for target in _serve(flaky):
        async with PolicyClient(
            target, fail=FailMode.OPEN, retries=4, deadline_s=SERVED_WITHIN_S, token=GATEWAY
        ) as client:
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await client.commit("7d4c6f0e-0000-4000-8000-000000000000", 1)
    assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert flaky.calls == 1


class Refusing:
    """Answers every Check, CheckBatch and Reserve with one status."""

    def __init__(self, code: grpc.StatusCode) -> None:
        self.code = code
        self.calls = 0

    async def answer(self, request: Any, context: Any) -> Any:
        self.calls += 1
        await context.abort(self.code, f"answered {self.code.name}")


async def _serve_refusing(servicer: Refusing) -> AsyncIterator[str]:
    methods: PolicyMethods = {
        "Check": (servicer.answer, policy_pb2.CheckRequest, policy_pb2.CheckResponse),
        "CheckBatch": (
            servicer.answer,
            policy_pb2.CheckBatchRequest,
            policy_pb2.CheckBatchResponse,
        ),
        "Reserve": (servicer.answer, policy_pb2.ReserveRequest, policy_pb2.CheckResponse),
    }
    async for target in serve_policy_methods(methods):
        yield target


REFUSALS = [c for c in grpc.StatusCode if c not in OUTAGES and c != grpc.StatusCode.OK]


@pytest.mark.parametrize("code", [*sorted(OUTAGES, key=str), *REFUSALS], ids=lambda c: c.name)
async def test_only_an_outage_takes_the_fail_mode(code: grpc.StatusCode) -> None:
    """Issue 14, item 3: a refused request (RESOURCE_EXHAUSTED, FAILED_PRECONDITION,
    PERMISSION_DENIED, ...) raises; a fail-open gateway allows only when policy could
    not answer. Refusals are asked once (asking again gets the same answer)."""
    refusing = Refusing(code)
    async for target in _serve_refusing(refusing):
        async with PolicyClient(
            target, fail=FailMode.OPEN, retries=2, deadline_s=SERVED_WITHIN_S, token=GATEWAY
        ) as client:
            batch = [req("ann"), req("bob")]
            if code in OUTAGES:
                answers = [
                    await client.check("ann", "chat", "gpt-5"),
                    *await client.check_batch(batch),
                    await client.reserve("ann", "chat", "gpt-5", 1_000, request_id="r-1"),
                ]
                assert {a.limit_source for a in answers} == {"fail_open"}
            elif code in (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED):
                # A refused credential: PolicyRefused, for every call, never the fail mode.
                for call in (
                    client.check("ann", "chat", "gpt-5"),
                    client.check_batch(batch),
                    client.reserve("ann", "chat", "gpt-5", 1_000, request_id="r-1"),
                ):
                    with pytest.raises(PolicyRefused) as info:
                        await call
                    assert info.value.code() == code
                    assert str(info.value).startswith("policy refused the credential")
            else:
                raised = (grpc.aio.AioRpcError, PolicyRequestError)
                with pytest.raises(raised):
                    await client.check("ann", "chat", "gpt-5")
                with pytest.raises(raised):
                    await client.check_batch(batch)
                with pytest.raises(raised):
                    await client.reserve("ann", "chat", "gpt-5", 1_000, request_id="r-1")
            assert client.degraded == (4 if code in OUTAGES else 0)
    retried = code == grpc.StatusCode.UNAVAILABLE
    assert refusing.calls == (9 if retried else 3)
