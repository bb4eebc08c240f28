"""Between proto messages (quartermaster.v1.policy_pb2) and policy's domain types, for
every policy servicer: a field rename touches this file alone.

Check's response is made by copying a prepared message and setting what changed
(half the cost of building one from keywords): the parts that follow from the limit
and the period alone are kept per limit object (`prepare_response` fills them when a
snapshot is warmed), pool standings per pool, period bounds per period.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

from google.protobuf.timestamp_pb2 import Timestamp

from quartermaster.money import credits
from quartermaster.periods import Period, PeriodKind
from quartermaster.v1 import policy_pb2
from quartermaster.wire import timestamp
from services.policy.decide import Enforcement, Limit
from services.policy.directory import GroupInfo, UserInfo
from services.policy.directory_import import ImportResult
from services.policy.evaluator import PoolStanding, Verdict
from services.policy.model_rules import ModelPolicy
from services.policy.reservations import Reservation
from services.policy.rules import Override, Resolved, Snapshot

PERIODS = {
    PeriodKind.DAY: policy_pb2.PERIOD_DAY,
    PeriodKind.WEEK: policy_pb2.PERIOD_WEEK,
    PeriodKind.MONTH: policy_pb2.PERIOD_MONTH,
}
ENFORCEMENTS = {
    Enforcement.HARD: policy_pb2.ENFORCEMENT_HARD,
    Enforcement.SOFT: policy_pb2.ENFORCEMENT_SOFT,
}
KINDS = {v: k for k, v in PERIODS.items()}
ENFORCEMENT_OF = {v: k for k, v in ENFORCEMENTS.items()}
INT64_MAX = 2**63 - 1


def int64(micros: int) -> int:
    """An amount as an int64 wire field holds it: at most INT64_MAX (a sum past it
    is shown as INT64_MAX, not refused by protobuf mid-answer)."""
    return micros if micros < INT64_MAX else INT64_MAX


# -- Check, GetBudget, reservations -------------------------------------------------


def check_response(v: Verdict, reservation_id: str = "") -> policy_pb2.CheckResponse:
    """A Check's answer. Runs on every Check: a copy of the limit's template with
    what changed set."""
    out = policy_pb2.CheckResponse()
    out.CopyFrom(_template(v.limit, v.period))
    out.decision = v.decision  # type: ignore[assignment]
    used = v.used
    # Sums (totals plus reservations, pooled totals, stacked overrides) are Python
    # ints that may pass int64 with enough large entries; the wire field would raise.
    out.used_micros = used if used < INT64_MAX else INT64_MAX
    remaining = v.limit.micros - used
    out.remaining_micros = 0 if remaining < 0 else remaining if remaining < INT64_MAX else INT64_MAX
    out.reason = v.reason
    for p in v.pools:
        out.pools.append(_pool_standing(p))
    if v.reserved:
        out.reserved_micros = int64(v.reserved)
    if reservation_id:
        out.reservation_id = reservation_id
    if v.suggested_model:
        out.suggested_model = v.suggested_model
    return out


_POOL_STANDINGS: dict[str, tuple[PoolStanding, policy_pb2.PoolStanding]] = {}


def _pool_standing(p: PoolStanding) -> policy_pb2.PoolStanding:
    """A pool's standing as a message, made again only when it changed: every member
    of the pool shows the same one, and copying a message costs less than building it."""
    got = _POOL_STANDINGS.get(p[0])
    if got is None or got[0] != p:
        if len(_POOL_STANDINGS) > 10_000:
            _POOL_STANDINGS.clear()
        msg = policy_pb2.PoolStanding(
            group_id=p[0], used_micros=int64(p[1]), limit_micros=int64(p[2]),
            remaining_micros=int64(p[3]),
            period=PERIODS[p[4]],
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
            limit_micros=int64(limit.micros),
            limit_source=limit.source,
            period_start=start,
            period_end=end,
            period=PERIODS[limit.period],
            enforcement=ENFORCEMENTS[limit.enforcement],
        )
        got = _TEMPLATES[id(limit)] = (limit, period, msg)
    return got[2]


def prepare_response(resolved: Resolved, period: Period) -> None:
    """Make the response template of a resolution before any Check needs it."""
    _template(resolved.limit, period)


_STAMPS: dict[Period, tuple[Timestamp, Timestamp]] = {}


def period_stamps(p: Period) -> tuple[Timestamp, Timestamp]:
    """A period's bounds as protobuf Timestamps, converted once (a conversion costs
    more than the whole decision)."""
    got = _STAMPS.get(p)
    if got is None:
        if len(_STAMPS) > 64:
            _STAMPS.clear()
        got = _STAMPS[p] = (timestamp(p.start), timestamp(p.end))
    return got


def budget(user_id: str, v: Verdict) -> policy_pb2.Budget:
    """GetBudget's answer: the standing of a verdict on a call of nothing."""
    start, end = period_stamps(v.period)
    return policy_pb2.Budget(
        user_id=user_id,
        used_micros=int64(v.used),
        limit_micros=int64(v.limit.micros),
        remaining_micros=int64(max(0, v.limit.micros - v.used)),
        limit_source=v.limit.source,
        period_start=start,
        period_end=end,
        period=PERIODS[v.limit.period],
        enforcement=ENFORCEMENTS[v.limit.enforcement],
        reserved_micros=int64(v.reserved),
        pools=[_pool_standing(p) for p in v.pools],
    )


def reservation_msg(r: Reservation) -> policy_pb2.Reservation:
    """Commit's and Release's answer."""
    return policy_pb2.Reservation(
        reservation_id=r.reservation_id,
        user_id=r.user_id,
        request_id=r.request_id,
        estimated_micros=r.estimated_micros,
        actual_micros=r.micros if r.committed else 0,
        committed=r.committed,
        released=r.released,
        expires_at=timestamp(r.expires_at),
    )


# -- limits (rows of stores.limits) ------------------------------------------------


def limit_rule(
    scope: str, group_id: str, row: Mapping[str, Any], micros_key: str = "limit_micros"
) -> policy_pb2.LimitRule:
    """A LimitRule of a limit's row (limit_micros or `micros_key`, period,
    enforcement, updated_by, updated_at)."""
    return policy_pb2.LimitRule(
        scope=scope,
        group_id=group_id,
        limit_micros=row[micros_key],
        period=PERIODS[PeriodKind(row["period"])],
        enforcement=ENFORCEMENTS[Enforcement(row["enforcement"])],
        updated_by=row["updated_by"],
        updated_at=timestamp(row["updated_at"]),
    )


def override_msg(o: Override, removed: bool = False) -> policy_pb2.Override:
    """An override as a message (`removed`: it was just ended)."""
    out = policy_pb2.Override(
        override_id=o.override_id,
        user_id=o.user_id,
        additive=o.additive,
        limit_micros=o.micros,
        granted_by=o.granted_by,
        reason=o.reason,
        starts_at=timestamp(o.starts_at),
        request_id=o.request_id or "",
        removed=removed,
    )
    if o.period is not None:
        out.period = PERIODS[o.period]
    if o.enforcement is not None:
        out.enforcement = ENFORCEMENTS[o.enforcement]
    if o.expires_at is not None:
        out.expires_at.CopyFrom(timestamp(o.expires_at))
    if o.review_at is not None:
        out.review_at.CopyFrom(timestamp(o.review_at))
    return out


def model_policy_msg(p: ModelPolicy) -> policy_pb2.ModelPolicy:
    """A model policy as a message (allowed models sorted)."""
    return policy_pb2.ModelPolicy(
        group_id=p.group_id,
        allowed_models=sorted(p.allowed),
        fallback_model=p.fallback_model,
        fallback_at_percent=p.fallback_at_percent,
    )


def explanation(snap: Snapshot, user_id: str, now: datetime) -> policy_pb2.Explanation:
    """ExplainLimit's answer: every rule looked at, and a summary in words."""
    resolved, steps = snap.explain(user_id, now)
    out = policy_pb2.Explanation(
        user_id=user_id,
        steps=[
            policy_pb2.ExplainStep(rule=s.rule, source=s.source, applies=s.applies, detail=s.detail)
            for s in steps
        ],
    )
    lines = [("✔ " if s.applies else "· ") + s.detail for s in steps]
    if resolved is None:
        lines.append(f"{user_id} has no limit: Check refuses until a default is set.")
    else:
        lim = resolved.limit
        out.limit_micros = int64(lim.micros)
        out.period = PERIODS[lim.period]
        out.enforcement = ENFORCEMENTS[lim.enforcement]
        out.limit_source = lim.source
        lines.append(
            f"So {user_id} may spend {credits(lim.micros)} credits per {lim.period}"
            f" ({lim.enforcement}, from {lim.source})."
        )
    out.summary = "\n".join(lines)
    return out


# -- the directory -----------------------------------------------------------------


def user_msg(snap: Snapshot, u: UserInfo) -> policy_pb2.User:
    """A user as a message, with their direct groups from the snapshot."""
    return policy_pb2.User(
        user_id=u.user_id,
        email=u.email,
        display_name=u.display_name,
        slack_user_id=u.slack_user_id,
        manager_id=u.manager_id,
        group_ids=list(snap.memberships.get(u.user_id, ())),
    )


def group_msg(g: GroupInfo) -> policy_pb2.Group:
    """A group as a message."""
    return policy_pb2.Group(
        group_id=g.group_id, name=g.name, kind=g.kind, parent_id=g.parent_id,
        cost_center=g.cost_center, admin_user_ids=list(g.admins),
    )  # fmt: skip


# Change lines an ImportReport lists, and their characters (the counts cover them
# all): a document near gRPC's 4 MB limit could otherwise make an answer past the
# client's 4 MB limit (each line quotes old and new values).
MAX_CHANGE_LINES = 1000
MAX_CHANGE_CHARS = 500_000


def import_report(r: ImportResult, dry_run: bool) -> policy_pb2.ImportReport:
    """ImportDirectory's answer: the counts, and the first changes (at most
    MAX_CHANGE_LINES lines and MAX_CHANGE_CHARS characters; then a line saying how
    many more)."""
    changes: list[str] = []
    size = 0
    for line in r.changes[:MAX_CHANGE_LINES]:
        size += len(line)
        if size > MAX_CHANGE_CHARS:
            break
        changes.append(line)
    if len(changes) < len(r.changes):
        changes.append(f"... and {len(r.changes) - len(changes)} more changes")
    return policy_pb2.ImportReport(
        users_created=r.users_created, users_updated=r.users_updated,
        users_unchanged=r.users_unchanged, groups_created=r.groups_created,
        groups_updated=r.groups_updated, groups_unchanged=r.groups_unchanged,
        memberships_added=r.memberships_added, memberships_removed=r.memberships_removed,
        changes=changes, dry_run=dry_run,
    )  # fmt: skip
