"""Limit resolution over one immutable snapshot of a workspace's rules and directory.

For a user, most specific first: an active individual override (the largest, if
several replace the limit), else the limits of their groups (for each direct group,
the nearest limited group up its chain; of those, the largest), else the workspace
default. Active additive overrides (approved requests' extra credits) then add to
whichever won. Separately, every pooled budget on any of the user's group chains
must have room too, and the nearest model policy on each chain says which models
the user may call.

"Largest" compares limits per day (a week counts as 7 days, a month as 30), so a
daily 10-credit limit beats a monthly 100-credit one.

A snapshot is built by the loader and swapped whole; nothing here mutates after
construction except the per-user cache of the parts that don't depend on time.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime

from quartermaster.money import credits
from quartermaster.periods import PeriodKind
from services.policy.decide import Enforcement, Limit
from services.policy.directory import Directory, GroupInfo, UserInfo
from services.policy.model_rules import ModelPolicy, ModelRule, merge_models

PERIOD_DAYS = {PeriodKind.DAY: 1, PeriodKind.WEEK: 7, PeriodKind.MONTH: 30}


@dataclass(frozen=True, slots=True)
class Rule:
    """A limit as configured: micros per period, and what happens past it."""

    micros: int
    period: PeriodKind
    enforcement: Enforcement

    @property
    def per_day(self) -> float:
        return self.micros / PERIOD_DAYS[self.period]

    def describe(self) -> str:
        return f"{credits(self.micros)} credits per {self.period} ({self.enforcement})"


@dataclass(frozen=True, slots=True)
class Override:
    """An individual limit for one user: replacing (their limit) or additive (extra
    credits on whichever limit wins), active from starts_at until expires_at."""

    override_id: str
    user_id: str
    additive: bool
    micros: int
    period: PeriodKind | None  # None for additive: the base limit's period
    enforcement: Enforcement | None  # None: the base limit's enforcement
    granted_by: str
    reason: str
    starts_at: datetime
    expires_at: datetime | None
    review_at: datetime | None
    request_id: str | None = None

    def active(self, now: datetime) -> bool:
        return self.starts_at <= now and (self.expires_at is None or now < self.expires_at)

    def describe(self) -> str:
        until = (
            f"until {self.expires_at:%Y-%m-%d %H:%M} UTC"
            if self.expires_at
            else f"review by {self.review_at:%Y-%m-%d}"
        )
        what = (
            f"+{credits(self.micros)} credits"
            if self.additive
            else f"{credits(self.micros)} credits per {self.period}"
        )
        return f"{what}, granted by {self.granted_by} ({self.reason!r}), {until}"


@dataclass(frozen=True, slots=True)
class Step:
    rule: str
    source: str
    applies: bool
    detail: str


@dataclass(frozen=True, slots=True)
class Resolved:
    """A user's resolution: their limit, the pools they draw on, their model rule."""

    limit: Limit
    pools: tuple[tuple[str, Rule], ...]  # (group_id, pooled rule)
    models: ModelRule | None


@dataclass(frozen=True, slots=True)
class _Static:
    """What doesn't depend on the clock: the group limit, pools, model rule."""

    group_rule: tuple[str, Rule, str] | None  # (group_id, rule, via direct group)
    candidates: tuple[tuple[str, Rule, str], ...]
    pools: tuple[tuple[str, Rule], ...]
    models: ModelRule | None


class NoLimit(Exception):
    """The workspace has no default and nothing more specific applies."""


@dataclass
class Snapshot:
    """One workspace's rules and directory at one config_version, immutable once
    built (but for its caches); resolves limits. Swapped whole on reload."""

    workspace_id: str
    default: Rule | None = None
    users: Mapping[str, UserInfo] = field(default_factory=dict)
    groups: Mapping[str, GroupInfo] = field(default_factory=dict)
    memberships: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    member_limits: Mapping[str, Rule] = field(default_factory=dict)
    pool_limits: Mapping[str, Rule] = field(default_factory=dict)
    overrides: Mapping[str, tuple[Override, ...]] = field(default_factory=dict)
    model_policies: Mapping[str, ModelPolicy] = field(default_factory=dict)
    version: int = 0
    directory_version: int = 0
    # users, groups and memberships again, with their caches (None: made from them)
    _known: Directory | None = field(default=None, repr=False)
    # Keyed by a user's direct groups: everything but overrides follows from them, and
    # a workspace has far fewer distinct group sets than people.
    _static: dict[tuple[str, ...], _Static] = field(default_factory=dict, repr=False)
    _plain: dict[tuple[str, ...], Resolved] = field(default_factory=dict, repr=False)
    # user → (from, until, their resolution): valid while no override starts or ends
    _overridden: dict[str, tuple[datetime | None, datetime | None, Resolved]] = field(
        default_factory=dict, repr=False
    )

    # -- the directory (people, groups, memberships) --------------------------------

    def directory(self) -> Directory:
        """The snapshot's people, groups and memberships, as a reload may keep them."""
        if self._known is None:
            self._known = Directory(self.users, self.groups, self.memberships)
        return self._known

    def chain(self, group_id: str) -> tuple[str, ...]:
        """The group and its ancestors, nearest first (Directory.chain)."""
        return self.directory().chain(group_id)

    def groups_of(self, user_id: str) -> tuple[str, ...]:
        """Every group the user belongs to, directly or through nesting (Directory)."""
        return self.directory().groups_of(user_id)

    def pool_members(self) -> dict[str, tuple[str, ...]]:
        """user_id → the pooled groups whose budget they draw on (users in any pool);
        the same dict while neither the directory nor the set of pools changed."""
        return self.directory().pool_members(frozenset(self.pool_limits))

    # -- resolution ---------------------------------------------------------------

    def _static_of(self, user_id: str) -> _Static:
        direct = self.memberships.get(user_id, ())
        cached = self._static.get(direct)
        if cached is not None:
            return cached
        candidates: list[tuple[str, Rule, str]] = []
        policies: dict[str, ModelPolicy] = {}
        for d in direct:
            chain = self.chain(d)
            limited = next((g for g in chain if g in self.member_limits), None)
            if limited is not None and all(c[0] != limited for c in candidates):
                candidates.append((limited, self.member_limits[limited], d))
            ruled = next((g for g in chain if g in self.model_policies), None)
            if ruled is not None:
                policies.setdefault(ruled, self.model_policies[ruled])
        best = max(candidates, key=lambda c: c[1].per_day, default=None)
        pools = tuple(
            (g, self.pool_limits[g]) for g in self.groups_of(user_id) if g in self.pool_limits
        )
        static = _Static(best, tuple(candidates), pools, merge_models(policies.values()))
        self._static[direct] = static
        return static

    def warm(self, now: datetime) -> list[Resolved]:
        """Resolve every distinct set of direct groups and everyone with overrides now,
        so the first Check of each isn't the one that pays for it (a bench of random
        people found them in its slowest 1 %). The resolutions, for more preparing."""
        out: list[Resolved] = []
        for user_id in (*self.directory().first_of_each_group_set(), *self.overrides):
            try:
                out.append(self.resolve(user_id, now))
            except NoLimit:
                continue
        return out

    def resolve(self, user_id: str, now: datetime, steps: list[Step] | None = None) -> Resolved:
        """The user's limit at `now`; `steps`, when given, receives the reasoning."""
        overrides = self.overrides.get(user_id, ())
        if steps is not None:
            return self._resolve(user_id, now, overrides, steps)
        if not overrides:
            # Most people have no override: their answer doesn't depend on the clock.
            direct = self.memberships.get(user_id, ())
            plain = self._plain.get(direct)
            if plain is None:
                plain = self._plain[direct] = self._resolve(user_id, now, (), None)
            return plain
        # With overrides the answer holds until one of them starts or ends: the same
        # object until then (responses and reasons are prepared per limit object).
        got = self._overridden.get(user_id)
        if (
            got is not None
            and (got[0] is None or got[0] <= now)
            and (got[1] is None or now < got[1])
        ):
            return got[2]
        resolved = self._resolve(user_id, now, overrides, None)
        bounds = [t for o in overrides for t in (o.starts_at, o.expires_at) if t is not None]
        since = max((t for t in bounds if t <= now), default=None)
        until = min((t for t in bounds if t > now), default=None)
        self._overridden[user_id] = (since, until, resolved)
        return resolved

    def _resolve(
        self, user_id: str, now: datetime, overrides: tuple[Override, ...], steps: list[Step] | None
    ) -> Resolved:
        static = self._static_of(user_id)
        replacing = [o for o in overrides if not o.additive and o.active(now)]
        chosen = max(
            replacing,
            key=lambda o: o.micros / PERIOD_DAYS[o.period or PeriodKind.MONTH],
            default=None,
        )
        base: Rule | None
        if chosen is not None:
            assert chosen.period is not None
            base = Rule(
                chosen.micros, chosen.period, chosen.enforcement or self._base_enforcement(static)
            )
            source = f"override:{chosen.override_id}"
        elif static.group_rule is not None:
            base, source = static.group_rule[1], f"group:{static.group_rule[0]}"
        else:
            base, source = self.default, "workspace_default"
        if steps is not None:
            self._explain_base(user_id, now, static, overrides, chosen, steps)
        if base is None:
            raise NoLimit(
                "the workspace has no default limit yet and no group limit or override"
                f" applies to {user_id!r}"
            )
        extra = [o for o in overrides if o.additive and o.active(now)]
        micros = base.micros + sum(o.micros for o in extra)
        if extra:
            source += "+" + "+".join(f"override:{o.override_id}" for o in extra)
        if steps is not None:
            for o in overrides:
                if o.additive:
                    steps.append(
                        Step("additive_override", f"override:{o.override_id}", o.active(now),
                             _when(o, now, o.describe()))
                    )  # fmt: skip
            for g, rule in static.pools:
                steps.append(
                    Step("pool", f"group:{g}", True,
                         f"the members of {g} share {rule.describe()}; a call needs room"
                         " in this pool too")
                )  # fmt: skip
            if static.models is not None:
                allowed = (
                    "every model"
                    if static.models.allowed is None
                    else ", ".join(sorted(static.models.allowed))
                )
                fb = static.models.fallback_model
                suggest = (
                    f"; {fb} is suggested from {static.models.fallback_at_percent}% of the budget"
                    if fb and static.models.fallback_at_percent
                    else (f"; {fb} is suggested instead of a model not allowed" if fb else "")
                )
                steps.append(
                    Step("model", ",".join(static.models.sources), True,
                         f"allowed models: {allowed}{suggest}")
                )  # fmt: skip
        limit = Limit(micros, base.enforcement, source, base.period)
        return Resolved(limit, static.pools, static.models)

    def _base_enforcement(self, static: _Static) -> Enforcement:
        if static.group_rule is not None:
            return static.group_rule[1].enforcement
        return self.default.enforcement if self.default is not None else Enforcement.HARD

    def _explain_base(
        self,
        user_id: str,
        now: datetime,
        static: _Static,
        overrides: Iterable[Override],
        chosen: Override | None,
        steps: list[Step],
    ) -> None:
        for o in overrides:
            if o.additive:
                continue
            won = o is chosen
            detail = _when(o, now, o.describe())
            if not won and o.active(now):
                detail += "; a larger override wins"
            steps.append(Step("override", f"override:{o.override_id}", won, detail))
        for g, rule, via in static.candidates:
            won = chosen is None and static.group_rule is not None and static.group_rule[0] == g
            how = f"member of {via}" if via == g else f"member of {via}, inside {g}"
            detail = f"each member of {g} gets {rule.describe()} ({how})"
            if not won:
                detail += (
                    "; an override is more specific"
                    if chosen is not None
                    else "; a larger group limit wins"
                )
            steps.append(Step("group_member", f"group:{g}", won, detail))
        if not static.candidates and self.memberships.get(user_id):
            groups = ", ".join(self.memberships[user_id])
            steps.append(
                Step("group_member", "", False, f"no group limit on {groups} or their parents")
            )
        won = chosen is None and static.group_rule is None
        if self.default is None:
            steps.append(Step("workspace", "workspace_default", won, "no workspace default set"))
        else:
            detail = (
                f"everyone gets {self.default.describe()} unless something more specific applies"
            )
            steps.append(Step("workspace", "workspace_default", won, detail))

    def explain(self, user_id: str, now: datetime) -> tuple[Resolved | None, list[Step]]:
        steps: list[Step] = []
        try:
            return self.resolve(user_id, now, steps), steps
        except NoLimit:
            return None, steps


def _when(o: Override, now: datetime, detail: str) -> str:
    if o.starts_at > now:
        return f"{detail}; starts {o.starts_at:%Y-%m-%d %H:%M} UTC"
    if not o.active(now):
        return f"{detail}; expired"
    return detail
