"""`PolicyClient`: how a gateway asks policy before each model call.

    client = PolicyClient("policy:50051", fail=FailMode.OPEN)
    verdict = await client.check("ann", "chat", "gpt-5", estimated_micros=12_000)
    if verdict.decision == policy_pb2.DECISION_DENY: ...

With reservations (the spend admitted past a limit stays within one estimate however
many callers race for the last credits):

    hold = await client.reserve("ann", "chat", "gpt-5", 12_000, request_id=call_id)
    if hold.decision != policy_pb2.DECISION_DENY:
        ...  # the model call; report its usage with request_id=call_id
        await client.commit(hold.reservation_id, actual_micros)  # or release() if unused

Every call has a deadline (`deadline_s`, default 250 ms). A call that fails because
policy is unavailable or slow is retried `retries` times with a short backoff; after
that the client answers by itself, as the gateway chose: `FailMode.OPEN` allows the
call, `FailMode.CLOSED` denies it. Such an answer says so: `limit_source` is
"fail_open" or "fail_closed" and `reason` names the error, so the gateway can log and
count degraded decisions. Bad requests (INVALID_ARGUMENT) are never retried: they
raise `PolicyRequestError`, naming the fields.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from enum import StrEnum

import grpc

from quartermaster.v1 import policy_pb2, policy_pb2_grpc

# Errors that say nothing about the request itself: worth another try, then the
# fail mode.
_UNREACHABLE = {
    grpc.StatusCode.UNAVAILABLE,
    grpc.StatusCode.DEADLINE_EXCEEDED,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
}
_TRANSIENT = _UNREACHABLE | {
    grpc.StatusCode.FAILED_PRECONDITION,  # e.g. policy has no limits loaded yet
}


class FailMode(StrEnum):
    OPEN = "open"  # allow when policy can't answer (availability first)
    CLOSED = "closed"  # deny when policy can't answer (budget first)


class PolicyRequestError(ValueError):
    """Policy refused the request as invalid; the message names the fields."""


class PolicyClient:
    def __init__(
        self,
        target: str,
        *,
        fail: FailMode,
        deadline_s: float = 0.25,
        retries: int = 2,
        backoff_s: float = 0.02,
    ) -> None:
        if deadline_s <= 0 or retries < 0 or backoff_s < 0:
            raise ValueError("deadline_s must be > 0; retries and backoff_s must be >= 0")
        self.fail = fail
        self.deadline_s = deadline_s
        self.retries = retries
        self.backoff_s = backoff_s
        self._channel = grpc.aio.insecure_channel(target)
        self._stub = policy_pb2_grpc.PolicyServiceStub(self._channel)
        self.degraded = 0  # answers the client gave by itself

    async def close(self) -> None:
        await self._channel.close(None)

    async def __aenter__(self) -> PolicyClient:
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.close()

    def _fallback(self, error: grpc.aio.AioRpcError) -> policy_pb2.CheckResponse:
        self.degraded += 1
        why = f"policy unreachable ({error.code().name}: {error.details()})"
        if self.fail is FailMode.OPEN:
            return policy_pb2.CheckResponse(
                decision=policy_pb2.DECISION_ALLOW,
                limit_source="fail_open",
                reason=f"{why}: allowed by the gateway's fail-open choice",
            )
        return policy_pb2.CheckResponse(
            decision=policy_pb2.DECISION_DENY,
            limit_source="fail_closed",
            reason=f"{why}: denied by the gateway's fail-closed choice",
        )

    async def _call(
        self, method: str, request: object, retry: set[grpc.StatusCode] = _TRANSIENT
    ) -> object:
        last: grpc.aio.AioRpcError | None = None
        for attempt in range(self.retries + 1):
            if attempt:
                await asyncio.sleep(self.backoff_s * 2 ** (attempt - 1))
            try:
                return await getattr(self._stub, method)(request, timeout=self.deadline_s)
            except grpc.aio.AioRpcError as exc:
                if exc.code() == grpc.StatusCode.INVALID_ARGUMENT:
                    raise PolicyRequestError(exc.details()) from None
                if exc.code() not in retry:
                    raise
                last = exc
        assert last is not None
        raise last

    async def _answer(self, method: str, request: object) -> policy_pb2.CheckResponse:
        """A CheckResponse from policy, or from the fail mode when it can't answer."""
        try:
            result = await self._call(method, request)
        except grpc.aio.AioRpcError as exc:
            if exc.code() not in _TRANSIENT:
                raise
            return self._fallback(exc)
        assert isinstance(result, policy_pb2.CheckResponse)
        return result

    async def check(
        self, user_id: str, product: str, model: str, estimated_micros: int = 0
    ) -> policy_pb2.CheckResponse:
        request = policy_pb2.CheckRequest(
            user_id=user_id, product=product, model=model, estimated_micros=estimated_micros
        )
        return await self._answer("Check", request)

    async def check_batch(
        self, checks: Sequence[policy_pb2.CheckRequest]
    ) -> list[policy_pb2.CheckResponse]:
        """Results in request order; one fallback answer per check when policy can't
        answer."""
        try:
            result = await self._call("CheckBatch", policy_pb2.CheckBatchRequest(checks=checks))
        except grpc.aio.AioRpcError as exc:
            if exc.code() not in _TRANSIENT:
                raise
            return [self._fallback(exc) for _ in checks]
        assert isinstance(result, policy_pb2.CheckBatchResponse)
        return list(result.results)

    async def reserve(
        self,
        user_id: str,
        product: str,
        model: str,
        estimated_micros: int,
        request_id: str,
        ttl_seconds: int = 0,
    ) -> policy_pb2.CheckResponse:
        """Check and, when admitted, hold `estimated_micros` until the usage reported
        with this `request_id` is counted, `commit`/`release`, or `ttl_seconds` (0: the
        server's default). Retrying is safe: the same request_id gets the same hold.
        When policy can't answer, the fail mode answers, without a reservation_id."""
        request = policy_pb2.ReserveRequest(
            user_id=user_id, product=product, model=model, estimated_micros=estimated_micros,
            request_id=request_id, ttl_seconds=ttl_seconds,
        )  # fmt: skip
        return await self._answer("Reserve", request)

    async def commit(self, reservation_id: str, actual_micros: int) -> policy_pb2.Reservation:
        """The call cost `actual_micros`: the hold becomes that until the usage is
        counted. Retried while policy is unreachable (committing twice is harmless),
        then raises; an uncommitted hold still ends with its usage or its ttl."""
        request = policy_pb2.CommitRequest(
            reservation_id=reservation_id, actual_micros=actual_micros
        )
        result = await self._call("Commit", request, retry=_UNREACHABLE)
        assert isinstance(result, policy_pb2.Reservation)
        return result

    async def release(self, reservation_id: str) -> policy_pb2.Reservation | None:
        """The call did not happen: give the held budget back. Retried while policy is
        unreachable; None when it was released already (say, by an attempt that timed
        out but landed)."""
        request = policy_pb2.ReleaseRequest(reservation_id=reservation_id)
        try:
            result = await self._call("Release", request, retry=_UNREACHABLE)
        except grpc.aio.AioRpcError as exc:
            if exc.code() != grpc.StatusCode.FAILED_PRECONDITION:
                raise
            result = None
            if "already released" not in (exc.details() or ""):
                raise
        assert result is None or isinstance(result, policy_pb2.Reservation)
        return result
