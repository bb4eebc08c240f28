"""`PolicyClient`: how a gateway asks policy before each model call.

    client = PolicyClient("policy:50051", fail=FailMode.OPEN, token=gateway_token)
    # over TLS: PolicyClient(..., tls=ClientTls.from_files(ca=Path("ca.pem")))
    verdict = await client.check("ann", "chat", "gpt-5", estimated_micros=12_000)
    if verdict.decision == policy_pb2.DECISION_DENY: ...

With reservations (the spend admitted past a limit stays within one estimate however
many callers race for the last credits):

    reservation = await client.reserve("ann", "chat", "gpt-5", 12_000, request_id=call_id)
    if reservation.decision != policy_pb2.DECISION_DENY:
        ...  # the model call; report its usage with request_id=call_id
        await client.commit(reservation.reservation_id, actual_micros)  # or release() if unused

Every call has a deadline (`deadline_s`, default 250 ms), retries included. A call that
fails because policy is unavailable is retried up to
`retries` times with an exponential, jittered backoff from `backoff_s`, by gRPC itself:
the channel's service config carries the retry policy (retryable codes, backoff, max
attempts; no retry throttle: see `service_config`). When the deadline passes or the
retries are spent, the client answers by itself, as the gateway chose: `FailMode.OPEN`
allows the call,
`FailMode.CLOSED` denies it. Such an answer says so: `limit_source` is
"fail_open" or "fail_closed" and `reason` names the error, so the gateway can log and
count degraded decisions. Bad requests (INVALID_ARGUMENT) are never retried: they
raise `PolicyRequestError`, naming the fields.

Only an outage takes the fail mode: UNAVAILABLE (policy unreachable, restarting, or
its database away) and DEADLINE_EXCEEDED (too slow). Every other status is policy
refusing this request, and raises: a refused request is not an outage, and a
fail-open gateway must not allow what policy refused. A refused credential
(UNAUTHENTICATED: a missing or unknown `token`; PERMISSION_DENIED: one without role
gateway) raises `PolicyRefused`, saying what to fix; a fail-open gateway with a bad
token must not allow everything. Others raise grpc.aio.AioRpcError (PolicyRefused is
one too): RESOURCE_EXHAUSTED (a request or an answer over gRPC's size limits: a batch
of 441 checks once came back so, and was allowed whole; or a Reserve for a user who
has the most open reservations policy allows) and FAILED_PRECONDITION (no
limit applies to the user: a configuration to fix, not to paper over). A request over
the 4 MB policy accepts is refused before it is sent (PolicyRequestError).

gRPC reports TLS mistakes as UNAVAILABLE too (a plaintext client and a TLS server, a
CA the server's certificate is not signed by, no client certificate for a mutual-TLS
server): they take the fail mode like an outage, so a fail-open gateway that forgot
its CA allows everything. When the error shows a TLS pattern, the answer's `reason`
carries a hint naming the likely setting, and the client logs it once at WARNING
(also when `commit`/`release`, which raise the error as it is, meet it; the hints:
quartermaster.tls.handshake_hint).

One difference from the hand-written loop this replaced: that loop gave each attempt its
own deadline and retried a slow answer; gRPC retries only statuses the server sent,
within the call's one deadline. A slow policy therefore meets the fail mode after
`deadline_s`, not after (retries + 1) * `deadline_s`: the gateway's wait is bounded by
the number it chose.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from enum import StrEnum

import grpc
from google.protobuf.message import Message

from quartermaster.grpcclient import ChannelClient
from quartermaster.tls import ClientTls, handshake_hint
from quartermaster.v1 import policy_pb2, policy_pb2_grpc

log = logging.getLogger(__name__)

SERVICE = "quartermaster.v1.PolicyService"
# The statuses that say policy could not answer, nothing about the request: the only
# ones the fail mode answers. Any other is an answer about this request (see above).
OUTAGES = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED})
# What gRPC retries: an unreachable policy. Not a deadline (gRPC retries within the
# call's one deadline), and never a refusal (asking again gets the same answer).
_RETRIED = {
    ("Check", "CheckBatch", "Reserve"): {grpc.StatusCode.UNAVAILABLE},
    ("Commit", "Release"): {grpc.StatusCode.UNAVAILABLE},
}
MAX_RETRIES = 4  # gRPC caps maxAttempts at 5
# The largest request policy's server accepts (gRPC's default receive limit).
MAX_REQUEST_BYTES = 4 * 1024 * 1024


RETRY_BUFFER_BYTES = 4 * 1024 * 1024


def service_config(retries: int, backoff_s: float) -> str:
    """The channel's gRPC service config (JSON): the retry policy per method group."""
    methods: list[dict[str, object]] = []
    for names, codes in _RETRIED.items():
        methods.append(
            {
                "name": [{"service": SERVICE, "method": name} for name in names],
                "retryPolicy": {
                    "maxAttempts": retries + 1,
                    "initialBackoff": f"{backoff_s:.6f}s",
                    "maxBackoff": f"{backoff_s * 2**retries:.6f}s",
                    "backoffMultiplier": 2,
                    "retryableStatusCodes": sorted(code.name for code in codes),
                },
            }
        )
    # No retryThrottling (gRFC A6): measured here, grpcio's throttle drains by one token
    # per failed attempt and successful retried calls did not refill it, so a gateway
    # seeing one blip every other call stopped retrying for good after maxTokens / 2
    # blips (20 tokens: half of 100 calls got the fail mode; 100 tokens: a quarter).
    # A call's attempts are bounded by `retries` (at most 5) and its deadline instead.
    return json.dumps({"methodConfig": methods if retries else []})


class FailMode(StrEnum):
    OPEN = "open"  # allow when policy can't answer (availability first)
    CLOSED = "closed"  # deny when policy can't answer (budget first)


class PolicyRequestError(ValueError):
    """Policy refused the request as invalid; the message names the fields."""


# The statuses that refuse the caller's credential, not the request.
_CREDENTIAL_REFUSALS = {
    grpc.StatusCode.UNAUTHENTICATED: (
        "is the token given to PolicyClient(token=...) one of policy's QM_TOKENS?"
    ),
    grpc.StatusCode.PERMISSION_DENIED: "the gateway's token needs role gateway (docs/security.md)",
}


class PolicyRefused(grpc.aio.AioRpcError):
    """Policy refused the client's credential: UNAUTHENTICATED (no such token) or
    PERMISSION_DENIED (a token without the role). Never an outage: the fail mode does
    not answer it. `code()` and `details()` are policy's; `str()` adds what to fix. A
    grpc.aio.AioRpcError, so code catching those catches it too."""

    def __init__(self, error: grpc.aio.AioRpcError) -> None:
        super().__init__(
            error.code(), error.initial_metadata(),
            error.trailing_metadata(),  # type: ignore[arg-type]  # grpc-stubs: a tuple, same pairs
            error.details(), error.debug_error_string(),
        )  # fmt: skip
        self.hint = _CREDENTIAL_REFUSALS.get(error.code(), "")

    def __str__(self) -> str:
        return f"policy refused the credential ({self.code().name}: {self.details()}): {self.hint}"


class PolicyClient(ChannelClient):
    def __init__(
        self,
        target: str,
        *,
        fail: FailMode,
        deadline_s: float = 0.25,
        retries: int = 2,
        backoff_s: float = 0.02,
        tls: ClientTls | None = None,
        token: str,
    ) -> None:
        """`target`: host:port of policy; `tls`: how to reach it over TLS (None:
        plaintext). A server `tls` does not trust is an outage like any other
        UNAVAILABLE: the fail mode answers (with a hint naming the TLS setting).
        `token`: the bearer token sent with every call (a credential of policy's
        QM_TOKENS with role gateway). ValueError for an empty or missing token (policy
        refuses every call without one: there is no no-auth mode), or a deadline,
        backoff or retry count out of range."""
        if not token or not isinstance(token, str):
            raise ValueError(
                "token: empty; PolicyClient needs a bearer token with role gateway, one of "
                "policy's QM_TOKENS (docs/security.md)"
            )
        if deadline_s <= 0 or not 0 <= retries <= MAX_RETRIES or backoff_s <= 0:
            raise ValueError(
                f"deadline_s and backoff_s must be > 0; retries between 0 and {MAX_RETRIES}"
            )
        self.fail = fail
        self.deadline_s = deadline_s
        self.retries = retries
        self.backoff_s = backoff_s
        super().__init__(
            target,
            [
                ("grpc.service_config", service_config(retries, backoff_s)),
                # gRPC keeps only 256 KiB of a call for retrying: a larger CheckBatch was
                # never retried. Up to the default 4 MiB message size, it is.
                ("grpc.per_rpc_retry_buffer_size", RETRY_BUFFER_BYTES),
            ],
            tls=tls,
            token=token,
        )
        self._stub = policy_pb2_grpc.PolicyServiceStub(self._channel)
        self.degraded = 0  # answers the client gave by itself
        self._tls = tls
        self._hinted = False  # the TLS hint is logged once per client, not per call

    def _tls_hint(self, error: grpc.aio.AioRpcError) -> str:
        """The TLS hint for an UNAVAILABLE `error` ("" for none), logged at WARNING
        the first time: a gateway with a wrong TLS setting sees it once, not per call."""
        if error.code() != grpc.StatusCode.UNAVAILABLE:
            return ""
        hint = handshake_hint(error.details() or "", self._tls)
        if hint and not self._hinted:
            self._hinted = True
            log.warning("policy at %s unreachable: %s", self.target, hint)
        return hint

    def _fallback(self, error: grpc.aio.AioRpcError) -> policy_pb2.CheckResponse:
        self.degraded += 1
        why = f"policy unreachable ({error.code().name}: {error.details()})"
        hint = self._tls_hint(error)
        if hint:
            why = f"{why} [{hint}]"
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

    async def _call(self, method: str, request: Message) -> object:
        """One call, retried by the channel's policy; INVALID_ARGUMENT becomes
        PolicyRequestError, UNAUTHENTICATED and PERMISSION_DENIED PolicyRefused, any
        other failure is raised as grpc.aio.AioRpcError.
        A request larger than policy accepts is refused here, unsent: sending it
        could spend the whole deadline, and a deadline takes the fail mode."""
        size = request.ByteSize()
        if size > MAX_REQUEST_BYTES:
            raise PolicyRequestError(
                f"request: {size} bytes, more than the {MAX_REQUEST_BYTES} policy accepts"
            )
        try:
            return await getattr(self._stub, method)(
                request, timeout=self.deadline_s, metadata=self._metadata
            )
        except grpc.aio.AioRpcError as exc:
            if exc.code() == grpc.StatusCode.INVALID_ARGUMENT:
                raise PolicyRequestError(exc.details()) from None
            if exc.code() in _CREDENTIAL_REFUSALS:
                raise PolicyRefused(exc) from None
            self._tls_hint(exc)  # logged once; commit and release raise it as it is
            raise

    async def _answer(self, method: str, request: Message) -> policy_pb2.CheckResponse:
        """A CheckResponse from policy, or from the fail mode when it can't answer."""
        try:
            result = await self._call(method, request)
        except grpc.aio.AioRpcError as exc:
            if exc.code() not in OUTAGES:
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

    async def budget(self, user_id: str) -> policy_pb2.Budget:
        """Where `user_id` stands this period (GetBudget): used, limit and remaining
        micros, the limit's source, reserved micros and the pools'. A read, so no fail
        mode answers for it: an outage raises grpc.aio.AioRpcError (UNAVAILABLE or
        DEADLINE_EXCEEDED), as does any refusal (PolicyRefused for the credential,
        NOT_FOUND or FAILED_PRECONDITION when no limit applies)."""
        result = await self._call("GetBudget", policy_pb2.GetBudgetRequest(user_id=user_id))
        assert isinstance(result, policy_pb2.Budget)
        return result

    async def check_batch(
        self, checks: Sequence[policy_pb2.CheckRequest]
    ) -> list[policy_pb2.CheckResponse]:
        """Results in request order; one fallback answer per check when policy can't
        answer."""
        try:
            result = await self._call("CheckBatch", policy_pb2.CheckBatchRequest(checks=checks))
        except grpc.aio.AioRpcError as exc:
            if exc.code() not in OUTAGES:
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
        """Check and, when admitted, reserve `estimated_micros` until the usage reported
        with this `request_id` is counted, `commit`/`release`, or `ttl_seconds` (0: the
        server's default). Retrying is safe: the same request_id gets the same reservation.
        When policy can't answer, the fail mode answers, without a reservation_id."""
        request = policy_pb2.ReserveRequest(
            user_id=user_id, product=product, model=model, estimated_micros=estimated_micros,
            request_id=request_id, ttl_seconds=ttl_seconds,
        )  # fmt: skip
        return await self._answer("Reserve", request)

    async def commit(self, reservation_id: str, actual_micros: int) -> policy_pb2.Reservation:
        """The call cost `actual_micros`: the reservation becomes that until the usage is
        counted. Retried while policy is unreachable (the same commit again answers the
        same), then raises; an uncommitted reservation still ends with its usage or its
        ttl. A settled reservation is final: committing one that was released, expired,
        or committed with another amount raises (FAILED_PRECONDITION naming its state)."""
        request = policy_pb2.CommitRequest(
            reservation_id=reservation_id, actual_micros=actual_micros
        )
        result = await self._call("Commit", request)
        assert isinstance(result, policy_pb2.Reservation)
        return result

    async def release(self, reservation_id: str) -> policy_pb2.Reservation | None:
        """The call did not happen: give the held budget back. Retried while policy is
        unreachable; None when nothing is held any more: released already (say, by an
        attempt that timed out but landed) or expired. A committed reservation can't be
        released (its spend stays counted until metered): that raises
        (FAILED_PRECONDITION)."""
        request = policy_pb2.ReleaseRequest(reservation_id=reservation_id)
        try:
            result = await self._call("Release", request)
        except grpc.aio.AioRpcError as exc:
            if exc.code() != grpc.StatusCode.FAILED_PRECONDITION:
                raise
            result = None
            details = exc.details() or ""
            if "already released" not in details and "already expired" not in details:
                raise
        assert result is None or isinstance(result, policy_pb2.Reservation)
        return result
