"""The PolicyService servicer: validation, then a decision from memory."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from zoneinfo import ZoneInfo

import grpc
from google.protobuf.timestamp_pb2 import Timestamp

from quartermaster.periods import Period, PeriodKind, period_of
from quartermaster.v1 import policy_pb2, policy_pb2_grpc
from services.policy.decide import Limit, decide
from services.policy.totals import TotalsView

MAX_ID_LENGTH = 256


def _ts(at: datetime) -> Timestamp:
    ts = Timestamp()
    ts.FromDatetime(at)
    return ts


def _id_problems(name: str, value: str) -> list[str]:
    if not value.strip():
        return [f"{name}: must not be empty"]
    if len(value) > MAX_ID_LENGTH:
        return [f"{name}: longer than {MAX_ID_LENGTH} characters"]
    return []


MAX_BATCH = 1000


def check_problems(req: policy_pb2.CheckRequest, prefix: str = "") -> list[str]:
    """Every bad field of a CheckRequest, each named (under `prefix`, in a batch)."""
    out = _id_problems(f"{prefix}user_id", req.user_id)
    out += _id_problems(f"{prefix}product", req.product)
    out += _id_problems(f"{prefix}model", req.model)
    if req.estimated_micros < 0:
        out.append(f"{prefix}estimated_micros: must not be negative")
    return out


@dataclass
class LimitHolder:
    """The current limits, swapped whole by the refresh loop (never mutated in place)."""

    workspace: Limit | None = None


class PolicyServicer(policy_pb2_grpc.PolicyServiceServicer):
    def __init__(
        self,
        totals: TotalsView,
        limits: LimitHolder,
        tz: ZoneInfo,
        warn_percent: int,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self._totals = totals
        self._limits = limits
        self._tz = tz
        self._warn_percent = warn_percent
        self._clock = clock

    async def _state(
        self, user_id: str, context: grpc.aio.ServicerContext[object, object]
    ) -> tuple[Limit, Period, int]:
        limit = self._limits.workspace
        if limit is None:
            await context.abort(
                grpc.StatusCode.FAILED_PRECONDITION,
                "the workspace has no default limit yet (seed it or set one)",
            )
            raise AssertionError("abort returned")
        period = period_of(PeriodKind.MONTH, self._clock(), self._tz)
        return limit, period, self._totals.used(user_id, period.key)

    async def Check(
        self,
        request: policy_pb2.CheckRequest,
        context: grpc.aio.ServicerContext[policy_pb2.CheckRequest, policy_pb2.CheckResponse],
    ) -> policy_pb2.CheckResponse:
        problems = check_problems(request)
        if problems:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "; ".join(problems))
        return await self._check(request, context)  # type: ignore[arg-type]

    async def CheckBatch(
        self,
        request: policy_pb2.CheckBatchRequest,
        context: grpc.aio.ServicerContext[
            policy_pb2.CheckBatchRequest, policy_pb2.CheckBatchResponse
        ],
    ) -> policy_pb2.CheckBatchResponse:
        problems = [] if request.checks else ["checks: must not be empty"]
        if len(request.checks) > MAX_BATCH:
            problems.append(f"checks: at most {MAX_BATCH}, got {len(request.checks)}")
        for i, check in enumerate(request.checks[:MAX_BATCH]):
            problems += check_problems(check, f"checks[{i}].")
        if problems:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "; ".join(problems))
        results = [await self._check(c, context) for c in request.checks]  # type: ignore[arg-type]
        return policy_pb2.CheckBatchResponse(results=results)

    async def _check(
        self, request: policy_pb2.CheckRequest, context: grpc.aio.ServicerContext[object, object]
    ) -> policy_pb2.CheckResponse:
        limit, period, used = await self._state(request.user_id, context)
        decision, reason = decide(used, limit, request.estimated_micros, self._warn_percent)
        return policy_pb2.CheckResponse(
            decision=decision,  # type: ignore[arg-type]
            used_micros=used,
            limit_micros=limit.micros,
            remaining_micros=max(0, limit.micros - used),
            limit_source=limit.source,
            period_start=_ts(period.start),
            period_end=_ts(period.end),
            reason=reason,
        )

    async def GetBudget(
        self,
        request: policy_pb2.GetBudgetRequest,
        context: grpc.aio.ServicerContext[policy_pb2.GetBudgetRequest, policy_pb2.Budget],
    ) -> policy_pb2.Budget:
        problems = _id_problems("user_id", request.user_id)
        if problems:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "; ".join(problems))
        limit, period, used = await self._state(request.user_id, context)  # type: ignore[arg-type]
        return policy_pb2.Budget(
            user_id=request.user_id,
            used_micros=used,
            limit_micros=limit.micros,
            remaining_micros=max(0, limit.micros - used),
            limit_source=limit.source,
            period_start=_ts(period.start),
            period_end=_ts(period.end),
        )
