"""The PolicyService servicer: validation, then a decision from memory.

A decision takes the user's resolved limit (rules.Snapshot), their spend this
period (metering's totals) plus their open reservations, and does the same for
every pooled budget they draw on; the worst answer wins. Only Reserve (and Check
with `reserve`), Commit and Release touch Postgres.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from zoneinfo import ZoneInfo

import asyncpg
import grpc
from google.protobuf.timestamp_pb2 import Timestamp

from quartermaster.grpcserver import abort
from quartermaster.periods import Period, PeriodKind, period_of
from quartermaster.v1 import policy_pb2, policy_pb2_grpc
from services.policy import store
from services.policy.decide import Enforcement, Limit, classify, decide
from services.policy.holds import HoldsView, open_micros
from services.policy.rules import NoLimit, Resolved, Snapshot
from services.policy.totals import TotalsView

MAX_ID_LENGTH = 256
MAX_BATCH = 1000
MAX_TTL_SECONDS = 86_400

PERIODS = {
    PeriodKind.DAY: policy_pb2.PERIOD_DAY,
    PeriodKind.WEEK: policy_pb2.PERIOD_WEEK,
    PeriodKind.MONTH: policy_pb2.PERIOD_MONTH,
}
ENFORCEMENTS = {
    Enforcement.HARD: policy_pb2.ENFORCEMENT_HARD,
    Enforcement.SOFT: policy_pb2.ENFORCEMENT_SOFT,
}
Context = grpc.aio.ServicerContext[object, object]


def ts(at: datetime) -> Timestamp:
    out = Timestamp()
    out.FromDatetime(at)
    return out


def id_problems(name: str, value: str) -> list[str]:
    if not value.strip():
        return [f"{name}: must not be empty"]
    if len(value) > MAX_ID_LENGTH:
        return [f"{name}: longer than {MAX_ID_LENGTH} characters"]
    return []


async def refuse(context: grpc.aio.ServicerContext[Any, Any], problems: list[str]) -> None:
    """Abort with INVALID_ARGUMENT naming every problem, when there are any."""
    if problems:
        await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "; ".join(problems))


def check_problems(req: policy_pb2.CheckRequest, prefix: str = "") -> list[str]:
    """Every bad field of a CheckRequest, each named (under `prefix`, in a batch)."""
    out = id_problems(f"{prefix}user_id", req.user_id)
    out += id_problems(f"{prefix}product", req.product)
    out += id_problems(f"{prefix}model", req.model)
    if req.estimated_micros < 0:
        out.append(f"{prefix}estimated_micros: must not be negative")
    if req.reserve:
        out += id_problems(f"{prefix}request_id", req.request_id)
    out += _ttl_problems(f"{prefix}reservation_ttl_seconds", req.reservation_ttl_seconds)
    return out


def _ttl_problems(name: str, ttl: int) -> list[str]:
    if not 0 <= ttl <= MAX_TTL_SECONDS:
        return [f"{name}: must be between 0 and {MAX_TTL_SECONDS}"]
    return []


@dataclass
class LimitHolder:
    """The current snapshot, swapped whole by the refresh loop (never mutated in place)."""

    snapshot: Snapshot


class Verdict:
    """One decision and the standing behind it (a plain slotted class: it is built
    on every Check, and a dataclass costs more)."""

    __slots__ = (
        "decision",
        "limit",
        "period",
        "pools",
        "reason",
        "reserved",
        "suggested_model",
        "used",
    )

    def __init__(
        self, decision: int, reason: str, limit: Limit, period: Period, used: int, reserved: int
    ) -> None:
        self.decision = decision
        self.reason = reason
        self.limit = limit
        self.period = period
        self.used = used  # spend in the totals plus open holds
        self.reserved = reserved
        # (group_id, used, limit, remaining, Period enum) per pool
        self.pools: list[tuple[str, int, int, int, int]] = []
        self.suggested_model = ""

    @property
    def admitted(self) -> bool:
        return self.decision != policy_pb2.DECISION_DENY

    def response(self, reservation_id: str = "") -> policy_pb2.CheckResponse:
        # Copying a prepared message and setting what changed costs half of building
        # one from keywords; this runs on every Check.
        out = policy_pb2.CheckResponse()
        out.CopyFrom(_template(self.limit, self.period))
        out.decision = self.decision  # type: ignore[assignment]
        out.used_micros = self.used
        out.remaining_micros = max(0, self.limit.micros - self.used)
        out.reason = self.reason
        for p in self.pools:
            out.pools.append(_pool_standing(p))
        if self.reserved:
            out.reserved_micros = self.reserved
        if reservation_id:
            out.reservation_id = reservation_id
        if self.suggested_model:
            out.suggested_model = self.suggested_model
        return out

    def pool_standings(self) -> list[policy_pb2.PoolStanding]:
        return [_pool_standing(p) for p in self.pools]


_POOL_STANDINGS: dict[str, tuple[tuple[str, int, int, int, int], policy_pb2.PoolStanding]] = {}


def _pool_standing(p: tuple[str, int, int, int, int]) -> policy_pb2.PoolStanding:
    """A pool's standing as a message, made again only when it changed: every member
    of the pool shows the same one, and copying a message costs less than building it."""
    got = _POOL_STANDINGS.get(p[0])
    if got is None or got[0] != p:
        if len(_POOL_STANDINGS) > 10_000:
            _POOL_STANDINGS.clear()
        msg = policy_pb2.PoolStanding(
            group_id=p[0], used_micros=p[1], limit_micros=p[2], remaining_micros=p[3],
            period=p[4],  # type: ignore[arg-type]
        )  # fmt: skip
        got = _POOL_STANDINGS[p[0]] = (p, msg)
    return got[1]


_TEMPLATES: dict[int, tuple[Limit, Period, policy_pb2.CheckResponse]] = {}


def _template(limit: Limit, period: Period) -> policy_pb2.CheckResponse:
    """The parts of a CheckResponse that follow from the limit and the period alone
    (keyed by the limit's identity, like Limit.shown; the entry keeps both alive)."""
    got = _TEMPLATES.get(id(limit))
    if got is None or got[0] is not limit or got[1] is not period:
        if len(_TEMPLATES) > 10_000:
            _TEMPLATES.clear()
        start, end = period_stamps(period)
        msg = policy_pb2.CheckResponse(
            limit_micros=limit.micros,
            limit_source=limit.source,
            period_start=start,
            period_end=end,
            period=PERIODS[limit.period],
            enforcement=ENFORCEMENTS[limit.enforcement],
        )
        got = _TEMPLATES[id(limit)] = (limit, period, msg)
    return got[2]


_STAMPS: dict[Period, tuple[Timestamp, Timestamp]] = {}


def period_stamps(p: Period) -> tuple[Timestamp, Timestamp]:
    """A period's bounds as protobuf Timestamps, converted once (a conversion costs
    more than the whole decision)."""
    got = _STAMPS.get(p)
    if got is None:
        if len(_STAMPS) > 64:
            _STAMPS.clear()
        got = _STAMPS[p] = (ts(p.start), ts(p.end))
    return got


class Evaluator:
    """Decisions from memory: the snapshot, the totals and the open holds."""

    def __init__(
        self,
        limits: LimitHolder,
        totals: TotalsView,
        holds: HoldsView,
        tz: ZoneInfo,
        warn_percent: int,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.limits = limits
        self.totals = totals
        self.holds = holds
        self.tz = tz
        self.warn_percent = warn_percent
        self.clock = clock
        # kind → the period now, and the totals view's dict of it (user → micros)
        self._periods: dict[PeriodKind, tuple[Period, Mapping[str, int]]] = {}

    def period(self, kind: PeriodKind, now: datetime) -> Period:
        return self._current(kind, now)[0]

    def _current(self, kind: PeriodKind, now: datetime) -> tuple[Period, Mapping[str, int]]:
        got = self._periods.get(kind)
        if got is None or not got[0].contains(now):
            p = period_of(kind, now, self.tz)
            got = self._periods[kind] = (p, self.totals.of_period(p.key))
        return got

    def resolve(self, user_id: str, now: datetime) -> Resolved:
        return self.limits.snapshot.resolve(user_id, now)

    def warm(self, snapshot: Snapshot | None = None) -> int:
        """Prepare a snapshot's resolutions (the current one's by default) and each
        limit's response parts (Snapshot.warm); how many resolutions."""
        now = self.clock()
        resolved = (snapshot or self.limits.snapshot).warm(now)
        for r in resolved:
            _template(r.limit, self.period(r.limit.period, now))
            r.limit.shown  # noqa: B018 - computing it is the point
        return len(resolved)

    def answer(self, user_id: str, model: str, estimated: int) -> policy_pb2.CheckResponse:
        """A Check's answer, from memory, now (NoLimit when no limit applies). Every
        gateway call comes through here."""
        now = self.clock()
        resolved = self.limits.snapshot.resolve(user_id, now)
        return self.verdict(user_id, model, estimated, now, resolved).response()

    def verdict(
        self,
        user_id: str,
        model: str,
        estimated: int,
        now: datetime,
        resolved: Resolved,
        holds: Iterable[store.Hold] | None = None,
    ) -> Verdict:
        """The decision for one call. `holds`: the open holds read from Postgres under
        the reservation lock; None means this replica's in-memory view."""
        settled = self.totals.settled
        limit = resolved.limit
        period, used_in_period = self._current(limit.period, now)
        if holds is not None:
            holds = list(holds)
            mine = open_micros((h for h in holds if h.user_id == user_id), now, settled, period.key)
        else:
            held = self.holds.of_user(user_id)
            mine = open_micros(held, now, settled, period.key) if held else 0
        used = used_in_period.get(user_id, 0) + mine
        decision, reason = decide(used, limit, estimated, self.warn_percent)
        out = Verdict(decision, reason, limit, period, used, mine)
        for g, rule in resolved.pools:
            pp = period if rule.period is limit.period else self.period(rule.period, now)
            if holds is not None:
                pool_held = open_micros((h for h in holds if g in h.pools), now, settled, pp.key)
            else:
                in_pool = self.holds.of_pool(g)
                pool_held = open_micros(in_pool, now, settled, pp.key) if in_pool else 0
            pool_used = self.totals.pool_used(g, pp.key) + pool_held
            d = classify(pool_used, rule.micros, rule.enforcement, estimated, self.warn_percent)
            if d > out.decision:
                pool_limit = Limit(rule.micros, rule.enforcement, f"pool:{g}", rule.period)
                _, why = decide(pool_used, pool_limit, estimated, self.warn_percent)
                out.decision, out.reason = d, f"pooled budget of {g}: {why}"
            out.pools.append(
                (g, pool_used, rule.micros, max(0, rule.micros - pool_used), PERIODS[rule.period])
            )
        models = resolved.models
        if models is not None and model:
            fallback = models.fallback_model
            if models.allowed is not None and model not in models.allowed:
                out.decision = policy_pb2.DECISION_DENY
                out.reason = f"model {model} is not allowed for this user {models.allowed_by}"
                out.suggested_model = fallback
            elif (
                fallback
                and fallback != model
                and models.fallback_at_percent
                and used * 100 >= limit.micros * models.fallback_at_percent
            ):
                out.suggested_model = fallback
        return out


class PolicyServicer(policy_pb2_grpc.PolicyServiceServicer):
    def __init__(
        self, evaluator: Evaluator, pool: asyncpg.Pool, workspace_id: str, default_ttl: float
    ) -> None:
        self._ev = evaluator
        self._pool = pool
        self._workspace_id = workspace_id
        self._default_ttl = default_ttl

    async def _resolve(self, user_id: str, now: datetime, context: Context) -> Resolved:
        try:
            return self._ev.resolve(user_id, now)
        except NoLimit as exc:
            await abort(context, grpc.StatusCode.FAILED_PRECONDITION, str(exc))

    async def Check(
        self,
        request: policy_pb2.CheckRequest,
        context: grpc.aio.ServicerContext[policy_pb2.CheckRequest, policy_pb2.CheckResponse],
    ) -> policy_pb2.CheckResponse:
        user, model, estimated = request.user_id, request.model, request.estimated_micros
        product = request.product
        if not (
            # The common case, told in a few field reads (strip() returns the very
            # string when there is nothing to strip); anything else is looked at
            # field by field.
            0 < len(user) <= MAX_ID_LENGTH
            and 0 < len(model) <= MAX_ID_LENGTH
            and 0 < len(product) <= MAX_ID_LENGTH
            and estimated >= 0
            and not request.reserve
            and not request.reservation_ttl_seconds
            and user.strip() is user
            and model.strip() is model
            and product.strip() is product
        ):
            problems = check_problems(request)
            await refuse(context, problems)
        if request.reserve:
            return await self._reserve(
                request.user_id, request.model, request.estimated_micros, request.request_id,
                request.reservation_ttl_seconds, context,  # type: ignore[arg-type]
            )  # fmt: skip
        try:
            return self._ev.answer(user, model, estimated)
        except NoLimit as exc:
            await abort(context, grpc.StatusCode.FAILED_PRECONDITION, str(exc))

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
            if check.reserve:
                problems.append(f"checks[{i}].reserve: not supported in a batch; use Reserve")
        await refuse(context, problems)
        answer = self._ev.answer
        try:
            results = [answer(c.user_id, c.model, c.estimated_micros) for c in request.checks]
        except NoLimit as exc:
            await abort(context, grpc.StatusCode.FAILED_PRECONDITION, str(exc))
        return policy_pb2.CheckBatchResponse(results=results)

    async def GetBudget(
        self,
        request: policy_pb2.GetBudgetRequest,
        context: grpc.aio.ServicerContext[policy_pb2.GetBudgetRequest, policy_pb2.Budget],
    ) -> policy_pb2.Budget:
        problems = id_problems("user_id", request.user_id)
        await refuse(context, problems)
        now = self._ev.clock()
        resolved = await self._resolve(request.user_id, now, context)  # type: ignore[arg-type]
        v = self._ev.verdict(request.user_id, "", 0, now, resolved)
        return policy_pb2.Budget(
            user_id=request.user_id,
            used_micros=v.used,
            limit_micros=v.limit.micros,
            remaining_micros=max(0, v.limit.micros - v.used),
            limit_source=v.limit.source,
            period_start=period_stamps(v.period)[0],
            period_end=period_stamps(v.period)[1],
            period=PERIODS[v.limit.period],
            enforcement=ENFORCEMENTS[v.limit.enforcement],
            reserved_micros=v.reserved,
            pools=v.pool_standings(),
        )

    # -- reservations --------------------------------------------------------------

    async def Reserve(
        self,
        request: policy_pb2.ReserveRequest,
        context: grpc.aio.ServicerContext[policy_pb2.ReserveRequest, policy_pb2.CheckResponse],
    ) -> policy_pb2.CheckResponse:
        problems = id_problems("user_id", request.user_id)
        problems += id_problems("product", request.product)
        problems += id_problems("model", request.model)
        problems += id_problems("request_id", request.request_id)
        if request.estimated_micros < 0:
            problems.append("estimated_micros: must not be negative")
        problems += _ttl_problems("ttl_seconds", request.ttl_seconds)
        await refuse(context, problems)
        return await self._reserve(
            request.user_id, request.model, request.estimated_micros, request.request_id,
            request.ttl_seconds, context,  # type: ignore[arg-type]
        )  # fmt: skip

    async def _reserve(
        self, user_id: str, model: str, estimated: int, request_id: str, ttl: int,
        context: Context,
    ) -> policy_pb2.CheckResponse:  # fmt: skip
        now = self._ev.clock()
        resolved = await self._resolve(user_id, now, context)
        pools = tuple(g for g, _ in resolved.pools)

        def admit(holds: list[store.Hold]) -> Verdict:
            return self._ev.verdict(user_id, model, estimated, now, resolved, holds)

        verdict, hold, existed = await store.reserve(
            self._pool, self._workspace_id, user_id, pools, request_id,
            estimated, ttl or self._default_ttl, admit,
        )  # fmt: skip
        if hold is None:
            assert verdict is not None
            return verdict.response()
        if existed and hold.user_id != user_id:
            await context.abort(
                grpc.StatusCode.ALREADY_EXISTS,
                f"request_id: {request_id!r} is reserved for another user",
            )
        self._ev.holds.put(hold)
        # The standing with this hold counted (used, reserved, remaining, pools)...
        v = self._ev.verdict(user_id, model, 0, now, resolved)
        if existed:
            v.decision = policy_pb2.DECISION_ALLOW if not hold.released else v.decision
            v.reason = f"already reserved for this request_id: {v.reason}"
        else:  # ...and the decision that admitted it
            assert verdict is not None
            v.decision, v.reason = verdict.decision, verdict.reason
            v.suggested_model = verdict.suggested_model
        return v.response(hold.reservation_id)

    async def Commit(
        self,
        request: policy_pb2.CommitRequest,
        context: grpc.aio.ServicerContext[policy_pb2.CommitRequest, policy_pb2.Reservation],
    ) -> policy_pb2.Reservation:
        problems = id_problems("reservation_id", request.reservation_id)
        if request.actual_micros < 0:
            problems.append("actual_micros: must not be negative")
        await refuse(context, problems)
        return await self._settle(request.reservation_id, request.actual_micros, context)  # type: ignore[arg-type]

    async def Release(
        self,
        request: policy_pb2.ReleaseRequest,
        context: grpc.aio.ServicerContext[policy_pb2.ReleaseRequest, policy_pb2.Reservation],
    ) -> policy_pb2.Reservation:
        problems = id_problems("reservation_id", request.reservation_id)
        await refuse(context, problems)
        return await self._settle(request.reservation_id, None, context)  # type: ignore[arg-type]

    async def _settle(
        self, reservation_id: str, actual: int | None, context: Context
    ) -> policy_pb2.Reservation:
        try:
            hold = await store.settle(
                self._pool, self._workspace_id, reservation_id, actual, self._default_ttl,
            )  # fmt: skip
        except store.NotFound as exc:
            await abort(context, grpc.StatusCode.NOT_FOUND, str(exc))
        except store.Conflict as exc:
            await abort(context, grpc.StatusCode.FAILED_PRECONDITION, str(exc))
        self._ev.holds.put(hold)
        return policy_pb2.Reservation(
            reservation_id=hold.reservation_id,
            user_id=hold.user_id,
            request_id=hold.request_id,
            estimated_micros=hold.estimated_micros,
            actual_micros=hold.micros if hold.committed else 0,
            committed=hold.committed,
            released=hold.released,
            expires_at=ts(hold.expires_at),
        )
