"""The Evaluator: a decision from memory (resolve the limit → a Verdict). Pure, no I/O.

A decision takes the user's resolved limit (rules.Snapshot), their spend this
period (the TotalsIndex) plus their open reservations, and does the same for every
pooled budget they draw on; the worst answer wins. Every Check comes through
`verdict`, so it is written for speed: plain slotted classes, the current period's
totals dict kept at hand, nothing built that the answer does not need.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from zoneinfo import ZoneInfo

from quartermaster.model_ids import allows
from quartermaster.periods import Period, PeriodKind, period_of
from quartermaster.v1 import policy_pb2
from services.policy.decide import Limit, classify, decide
from services.policy.reservations import Held, ReservationsView, open_micros
from services.policy.rules import Resolved, Snapshot
from services.policy.totals import TotalsIndex

# A pool's standing in a Verdict: (group_id, used, limit, remaining, period kind), all
# micros. A tuple, not a class: one is made per pool per Check, and mapping caches the
# message by comparing it whole.
PoolStanding = tuple[str, int, int, int, PeriodKind]


class Verdict:
    """One decision and the standing behind it (a plain slotted class: it is built
    on every Check, and a dataclass costs more). `decision` is a policy_pb2.Decision
    value; `used` is the spend in the totals plus open reservations (micros)."""

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
        self.used = used
        self.reserved = reserved
        self.pools: list[PoolStanding] = []
        self.suggested_model = ""

    @property
    def admitted(self) -> bool:
        return self.decision != policy_pb2.DECISION_DENY


class Evaluator:
    """Decisions from memory: the current snapshot, the totals and the open
    reservations. `prepare(resolved, period)` is called for every resolution `warm`
    makes (the servicer's response templates). `snapshot` is swapped whole by
    `install` (never mutated in place). Touched only from the event loop, except the
    totals, which their feed updates."""

    def __init__(
        self,
        snapshot: Snapshot,
        totals: TotalsIndex,
        reservations: ReservationsView,
        tz: ZoneInfo,
        warn_percent: int,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        prepare: Callable[[Resolved, Period], None] = lambda _r, _p: None,
    ) -> None:
        self.snapshot = snapshot
        self.totals = totals
        self.reservations = reservations
        self.tz = tz
        self.warn_percent = warn_percent
        self.clock = clock
        # kind → the period now, and the totals index's dict of it (user → micros)
        self._periods: dict[PeriodKind, tuple[Period, Mapping[str, int]]] = {}
        # Called with each resolution `warm` prepares (mapping's response templates).
        self._prepare = prepare

    def period(self, kind: PeriodKind, now: datetime) -> Period:
        return self._current(kind, now)[0]

    def _current(self, kind: PeriodKind, now: datetime) -> tuple[Period, Mapping[str, int]]:
        got = self._periods.get(kind)
        if got is None or not got[0].contains(now):
            p = period_of(kind, now, self.tz)
            got = self._periods[kind] = (p, self.totals.of_period(p.key))
        return got

    def resolve(self, user_id: str, now: datetime) -> Resolved:
        """The user's limit now (rules.NoLimit when none applies)."""
        return self.snapshot.resolve(user_id, now)

    def install(self, snapshot: Snapshot) -> None:
        """Warm `snapshot`, then make it the current one (no Check sees it cold)."""
        self.warm(snapshot)
        self.snapshot = snapshot
        self.totals.set_pools(snapshot.pool_members())

    def warm(self, snapshot: Snapshot | None = None) -> int:
        """Prepare a snapshot's resolutions (the current one's by default), each
        limit's reason text and what `prepare` makes of it; how many resolutions."""
        now = self.clock()
        resolved = (snapshot or self.snapshot).warm(now)
        for r in resolved:
            self._prepare(r, self.period(r.limit.period, now))
            r.limit.shown  # noqa: B018 - computing it is the point
        return len(resolved)

    def verdict(
        self,
        user_id: str,
        model: str,
        estimated: int,
        now: datetime,
        resolved: Resolved,
        held: Held | None = None,
    ) -> Verdict:
        """The decision for one call. `held`: what the open reservations hold as
        Postgres summed them under the reservation lock; None means this replica's
        in-memory view."""
        settled = self.totals.settled
        limit = resolved.limit
        period, used_in_period = self._current(limit.period, now)
        if held is not None:
            mine = held.user
        else:
            of_user = self.reservations.of_user(user_id)
            mine = open_micros(of_user, now, settled, period.key) if of_user else 0
        used = used_in_period.get(user_id, 0) + mine
        decision, reason = decide(used, limit, estimated, self.warn_percent)
        out = Verdict(decision, reason, limit, period, used, mine)
        for g, rule in resolved.pools:
            pp = period if rule.period is limit.period else self.period(rule.period, now)
            if held is not None:
                pool_held = held.pools.get(g, 0)
            else:
                in_pool = self.reservations.of_pool(g)
                pool_held = open_micros(in_pool, now, settled, pp.key) if in_pool else 0
            pool_used = self.totals.pool_used(g, pp.key) + pool_held
            d = classify(pool_used, rule.micros, rule.enforcement, estimated, self.warn_percent)
            if d > out.decision:
                pool_limit = Limit(rule.micros, rule.enforcement, f"pool:{g}", rule.period)
                _, why = decide(pool_used, pool_limit, estimated, self.warn_percent)
                out.decision, out.reason = d, f"pooled budget of {g}: {why}"
            out.pools.append(
                (g, pool_used, rule.micros, max(0, rule.micros - pool_used), rule.period)
            )
        models = resolved.models
        if models is not None and model:
            fallback = models.fallback_model
            if models.allowed is not None and not allows(models.allowed, model):
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
