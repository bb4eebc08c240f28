"""Limit resolution and decisions, on a clock the test controls (no I/O).

Every rule of the policy: the workspace default, group limits (the largest of
several, the nearest up a nested chain), individual overrides (most specific,
starting and expiring on time, additive ones on top), pooled budgets, periods on
calendar boundaries in the workspace's time zone, hard and soft enforcement, model
policies with a fallback, and reservations counted until their usage arrives.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from quartermaster.money import MICROS_PER_CREDIT as C
from quartermaster.periods import PeriodKind, period_of
from quartermaster.v1 import policy_pb2, usage_pb2
from quartermaster.wire import timestamp
from services.policy.decide import Enforcement
from services.policy.directory import GroupInfo, UserInfo
from services.policy.evaluator import Evaluator
from services.policy.mapping import check_response
from services.policy.model_rules import ModelPolicy
from services.policy.reservations import Reservation, ReservationsView
from services.policy.rules import NoLimit, Override, Rule, Snapshot
from services.policy.totals import TotalsIndex

HARD, SOFT = Enforcement.HARD, Enforcement.SOFT
DAY, WEEK, MONTH = PeriodKind.DAY, PeriodKind.WEEK, PeriodKind.MONTH
NOW = datetime(2026, 11, 23, 12, tzinfo=UTC)
ALLOW, WARN, DENY = policy_pb2.DECISION_ALLOW, policy_pb2.DECISION_WARN, policy_pb2.DECISION_DENY


def org(**kw: object) -> Snapshot:
    """eng (department) > ml (team) > llm-eval (project); eng > web (team); sales."""
    groups = {
        "eng": GroupInfo("eng", "Engineering", "department", admins=("cto",)),
        "ml": GroupInfo("ml", "ML", "team", "eng", admins=("ml-lead",)),
        "llm-eval": GroupInfo("llm-eval", "LLM eval", "project", "ml"),
        "web": GroupInfo("web", "Web", "team", "eng"),
        "sales": GroupInfo("sales", "Sales", "department"),
    }
    base: dict[str, object] = {
        "workspace_id": "ws",
        "default": Rule(10 * C, MONTH, HARD),
        "users": {u: UserInfo(u) for u in ("alice", "bob", "carol", "dave")},
        "groups": groups,
        "memberships": {
            "alice": ("llm-eval",),
            "bob": ("web", "sales"),
            "carol": ("ml",),
        },
    }
    base.update(kw)
    return Snapshot(**base)  # type: ignore[arg-type]


def override(user: str, micros: int, **kw: object) -> Override:
    fields: dict[str, object] = {
        "override_id": f"ov-{user}-{micros}",
        "user_id": user,
        "additive": False,
        "micros": micros,
        "period": MONTH,
        "enforcement": None,
        "granted_by": "admin",
        "reason": "launch week",
        "starts_at": NOW - timedelta(days=1),
        "expires_at": NOW + timedelta(days=1),
        "review_at": None,
    }
    fields.update(kw)
    return Override(**fields)  # type: ignore[arg-type]


# -- which rule sets the limit -----------------------------------------------------


def test_the_workspace_default_applies_to_anyone_without_a_more_specific_rule() -> None:
    r = org().resolve("dave", NOW)
    assert (r.limit.micros, r.limit.source, r.limit.period) == (10 * C, "workspace_default", MONTH)


def test_no_default_and_nothing_else_is_a_clear_error() -> None:
    with pytest.raises(NoLimit, match="no default limit"):
        org(default=None).resolve("dave", NOW)


def test_a_group_limit_reaches_members_of_nested_groups_nearest_first() -> None:
    snap = org(member_limits={"eng": Rule(20 * C, MONTH, HARD), "ml": Rule(50 * C, MONTH, SOFT)})
    alice = snap.resolve("alice", NOW).limit  # llm-eval is inside ml, inside eng
    assert (alice.micros, alice.source, alice.enforcement) == (50 * C, "group:ml", SOFT)
    assert snap.resolve("bob", NOW).limit.source == "group:eng"  # web is inside eng


def test_in_several_limited_groups_the_largest_limit_wins_compared_per_day() -> None:
    snap = org(
        member_limits={
            "eng": Rule(100 * C, MONTH, HARD),  # ~3.33 a day
            "sales": Rule(5 * C, DAY, HARD),  # 5 a day: larger
        }
    )
    limit = snap.resolve("bob", NOW).limit
    assert (limit.micros, limit.period, limit.source) == (5 * C, DAY, "group:sales")


def test_an_override_is_more_specific_than_any_group_even_when_smaller() -> None:
    snap = org(
        member_limits={"ml": Rule(50 * C, MONTH, HARD)},
        overrides={"carol": (override("carol", 3 * C, override_id="ov-1"),)},
    )
    limit = snap.resolve("carol", NOW).limit
    assert (limit.micros, limit.source, limit.enforcement) == (3 * C, "override:ov-1", HARD)


def test_a_resolution_with_overrides_is_reused_until_one_starts_or_ends() -> None:
    # The same object while nothing changes: responses and reasons are prepared per
    # limit object, so a fresh one per call would redo them on every Check.
    swap = override(
        "dave", 40 * C, override_id="ov-w", starts_at=NOW, expires_at=NOW + timedelta(hours=2)
    )
    extra = override(
        "dave", 5 * C, override_id="ov-x", additive=True,
        starts_at=NOW + timedelta(hours=1), expires_at=NOW + timedelta(hours=3),
    )  # fmt: skip
    snap = org(overrides={"dave": (swap, extra)})
    first = snap.resolve("dave", NOW)
    assert snap.resolve("dave", NOW + timedelta(minutes=59)) is first
    later = snap.resolve("dave", NOW + timedelta(hours=1))
    assert later is not first
    assert (first.limit.micros, later.limit.micros) == (40 * C, 45 * C)
    assert snap.resolve("dave", NOW + timedelta(hours=2)).limit.micros == 15 * C  # default + 5
    assert snap.resolve("dave", NOW + timedelta(hours=3)).limit.micros == 10 * C
    assert snap.resolve("dave", NOW - timedelta(seconds=1)).limit.micros == 10 * C  # and back


def test_warming_resolves_each_group_set_and_each_overridden_person_ahead() -> None:
    snap = org(
        member_limits={"ml": Rule(50 * C, MONTH, HARD)},
        overrides={"dave": (override("dave", 3 * C),)},
    )
    warmed = snap.warm(NOW)
    assert len(warmed) == 4  # alice's, bob's and carol's group sets; dave's override
    for user in ("alice", "bob", "carol", "dave"):  # the very objects a Check will get
        assert any(r is snap.resolve(user, NOW) for r in warmed), user
    # nobody to resolve without a default: skipped, not an error
    assert org(default=None).warm(NOW) == []


def test_an_override_applies_from_starts_at_until_expires_at() -> None:
    o = override(
        "dave", 40 * C, override_id="ov-t", starts_at=NOW, expires_at=NOW + timedelta(hours=2)
    )
    snap = org(overrides={"dave": (o,)})
    assert snap.resolve("dave", NOW - timedelta(seconds=1)).limit.micros == 10 * C
    assert snap.resolve("dave", NOW).limit.micros == 40 * C
    assert (
        snap.resolve("dave", NOW + timedelta(hours=2) - timedelta(microseconds=1)).limit.micros
        == 40 * C
    )
    after = snap.resolve("dave", NOW + timedelta(hours=2)).limit
    assert (after.micros, after.source) == (10 * C, "workspace_default")


def test_a_permanent_override_with_a_review_date_does_not_expire() -> None:
    o = override("dave", 25 * C, expires_at=None, review_at=NOW + timedelta(days=90))
    snap = org(overrides={"dave": (o,)})
    assert snap.resolve("dave", NOW + timedelta(days=400)).limit.micros == 25 * C


def test_additive_overrides_add_to_whichever_limit_won_and_end_on_time() -> None:
    extra = override(
        "carol", 15 * C, override_id="req-1", additive=True, period=None,
        expires_at=NOW + timedelta(days=3),
    )  # fmt: skip
    snap = org(member_limits={"ml": Rule(50 * C, WEEK, HARD)}, overrides={"carol": (extra,)})
    limit = snap.resolve("carol", NOW).limit
    assert (limit.micros, limit.period, limit.source) == (65 * C, WEEK, "group:ml+override:req-1")
    assert snap.resolve("carol", NOW + timedelta(days=3)).limit.micros == 50 * C


# -- decisions -----------------------------------------------------------------------


def _evaluator(snap: Snapshot, tz: str = "UTC", clock_at: datetime = NOW) -> Evaluator:
    return Evaluator(
        snap, TotalsIndex(), ReservationsView(), ZoneInfo(tz), 80,
        clock=lambda: clock_at,
    )  # fmt: skip


def spend(
    ev: Evaluator, user: str, micros: int, period_key: str, request_ids: tuple[str, ...] = ()
) -> None:
    """Feed the view a total exactly as metering publishes it."""
    ev.totals.apply(
        usage_pb2.UsageTotal(
            subject_kind=usage_pb2.SUBJECT_KIND_USER, subject_id=user, period_key=period_key,
            used_micros=micros, updated_at=timestamp(datetime.now(UTC)),
            settled_request_ids=list(request_ids),
        ).SerializeToString()
    )  # fmt: skip


def check(ev: Evaluator, user: str, estimated: int = 0, model: str = "gpt-5", at: datetime = NOW):  # type: ignore[no-untyped-def]
    return ev.verdict(user, model, estimated, at, ev.resolve(user, at))


def test_hard_denies_past_the_limit_soft_warns() -> None:
    ev = _evaluator(org(member_limits={"web": Rule(10 * C, MONTH, SOFT)}))
    spend(ev, "dave", 10 * C, "2026-11")
    spend(ev, "bob", 12 * C, "2026-11")
    assert check(ev, "dave").decision == DENY
    soft = check(ev, "bob")
    assert soft.decision == WARN
    assert "soft limit" in soft.reason


def test_spend_counts_only_in_the_period_it_belongs_to() -> None:
    ev = _evaluator(org(default=Rule(10 * C, DAY, HARD)))
    spend(ev, "dave", 10 * C, "2026-11-22")  # yesterday's
    assert check(ev, "dave").decision == ALLOW
    spend(ev, "dave", 10 * C, "2026-11-23")
    assert check(ev, "dave").decision == DENY


def test_the_period_turns_at_local_midnight_in_the_workspace_time_zone() -> None:
    # Los Angeles is UTC-8 in December: Dec 1 07:59 UTC is still Nov 30 there.
    snap = org()
    late_nov = datetime(2026, 12, 1, 7, 59, tzinfo=UTC)
    ev = _evaluator(snap, "America/Los_Angeles", late_nov)
    spend(ev, "dave", 10 * C, "2026-11")
    assert check(ev, "dave", at=late_nov).decision == DENY
    dec = check(ev, "dave", at=late_nov + timedelta(minutes=1))
    assert dec.decision == ALLOW
    assert dec.period.key == "2026-12"
    assert dec.period.start == datetime(2026, 12, 1, 8, tzinfo=UTC)


def test_a_weekly_limit_runs_monday_to_monday_in_the_zone() -> None:
    tokyo = ZoneInfo("Asia/Tokyo")
    sunday_night_utc = datetime(2026, 11, 29, 14, 59, tzinfo=UTC)  # Sunday 23:59 in Tokyo
    assert period_of(WEEK, sunday_night_utc, tokyo).key == "2026-W48"
    assert period_of(WEEK, sunday_night_utc + timedelta(minutes=1), tokyo).key == "2026-W49"


def test_a_pool_denies_when_the_group_has_spent_it_even_if_the_user_has_room() -> None:
    snap = org(
        member_limits={"ml": Rule(50 * C, MONTH, HARD)},
        pool_limits={"eng": Rule(30 * C, MONTH, HARD)},
    )
    ev = _evaluator(snap)
    ev.totals.set_pools(snap.pool_members())
    spend(ev, "bob", 20 * C, "2026-11")  # bob: web, inside eng
    spend(ev, "carol", 5 * C, "2026-11")  # carol: ml, inside eng
    v = check(ev, "alice", estimated=4 * C)  # alice: llm-eval, inside ml, inside eng
    assert v.decision == WARN  # 29 of 30 in the pool: past 80 %
    assert [(p.group_id, p.used_micros, p.remaining_micros) for p in check_response(v).pools] == [
        ("eng", 25 * C, 5 * C)
    ]
    denied = check(ev, "alice", estimated=6 * C)
    assert denied.decision == DENY
    assert denied.reason.startswith("pooled budget of eng: this call")
    assert denied.limit.source == "group:ml"  # her own limit still says 50


def test_pool_sums_follow_membership_changes() -> None:
    snap = org(pool_limits={"ml": Rule(30 * C, MONTH, HARD)})
    ev = _evaluator(snap)
    ev.totals.set_pools(snap.pool_members())
    spend(ev, "alice", 10 * C, "2026-11")
    spend(ev, "dave", 10 * C, "2026-11")  # not in ml
    assert ev.totals.pool_used("ml", "2026-11") == 10 * C
    moved = org(pool_limits=snap.pool_limits, memberships={**snap.memberships, "dave": ("ml",)})
    ev.totals.set_pools(moved.pool_members())
    assert ev.totals.pool_used("ml", "2026-11") == 20 * C
    spend(ev, "dave", 12 * C, "2026-11")  # a newer total: +2
    assert ev.totals.pool_used("ml", "2026-11") == 22 * C


def test_a_model_outside_the_groups_list_is_denied_with_the_fallback_suggested() -> None:
    policy = ModelPolicy("ml", frozenset({"gpt-5", "gpt-5-mini"}), "gpt-5-mini", 75)
    ev = _evaluator(org(model_policies={"ml": policy}))
    v = check(ev, "alice", model="o3-pro")
    assert v.decision == DENY
    assert v.suggested_model == "gpt-5-mini"
    assert v.reason == (
        "model o3-pro is not allowed for this user (group:ml allow gpt-5, gpt-5-mini)"
    )
    assert check(ev, "dave", model="o3-pro").decision == ALLOW  # no policy on dave


def test_the_fallback_is_suggested_once_the_configured_share_is_used() -> None:
    policy = ModelPolicy("ml", frozenset(), "gpt-5-mini", 75)
    ev = _evaluator(org(model_policies={"ml": policy}))
    spend(ev, "carol", 7 * C, "2026-11")
    assert check(ev, "carol").suggested_model == ""
    spend(ev, "carol", int(7.5 * C), "2026-11")
    v = check(ev, "carol")
    assert (v.decision, v.suggested_model) == (ALLOW, "gpt-5-mini")


def test_open_reservations_count_until_their_usage_is_in_the_totals_or_they_expire() -> None:
    ev = _evaluator(org())
    made = Reservation("r1", "dave", "req-1", (), 4 * C, NOW + timedelta(minutes=5), 4 * C)
    ev.reservations.put(made)
    spend(ev, "dave", 5 * C, "2026-11")
    v = check(ev, "dave", estimated=2 * C)
    assert (v.used, v.reserved, v.decision) == (9 * C, 4 * C, DENY)
    assert check(ev, "dave", at=NOW + timedelta(minutes=5)).reserved == 0  # expired
    spend(ev, "dave", 9 * C, "2026-11", request_ids=("req-1",))  # the usage arrived
    v = check(ev, "dave")
    assert (v.used, v.reserved) == (9 * C, 0)


# -- explanations --------------------------------------------------------------------


def test_explain_walks_the_chain_in_words() -> None:
    snap = org(
        member_limits={"eng": Rule(20 * C, MONTH, HARD), "ml": Rule(50 * C, MONTH, HARD)},
        pool_limits={"eng": Rule(500 * C, MONTH, HARD)},
        overrides={
            "alice": (
                override("alice", 5 * C, override_id="old", expires_at=NOW - timedelta(hours=1),
                         starts_at=NOW - timedelta(days=2)),
                override("alice", 8 * C, override_id="req-9", additive=True, period=None),
            )
        },
    )  # fmt: skip
    resolved, steps = snap.explain("alice", NOW)
    assert resolved is not None
    assert resolved.limit.micros == 58 * C
    got = [(s.rule, s.source, s.applies) for s in steps]
    assert got == [
        ("override", "override:old", False),
        ("group_member", "group:ml", True),
        ("workspace", "workspace_default", False),
        ("additive_override", "override:req-9", True),
        ("pool", "group:eng", True),
    ]
    assert "expired" in steps[0].detail
    assert "member of llm-eval, inside ml" in steps[1].detail


def test_a_reservation_settles_per_period_only_once_that_periods_total_has_its_usage() -> None:
    # Metering publishes a batch's day, week and month totals one after another: the
    # day's record naming the request must not settle the reservation against the month.
    ev = _evaluator(org())
    ev.reservations.put(
        Reservation("r1", "dave", "req-1", (), 4 * C, NOW + timedelta(minutes=5), 4 * C)
    )
    spend(ev, "dave", 5 * C, "2026-11")
    spend(ev, "dave", 4 * C, "2026-11-23", request_ids=("req-1",))  # the day's total first
    assert (check(ev, "dave").used, check(ev, "dave").reserved) == (9 * C, 4 * C)
    spend(ev, "dave", 9 * C, "2026-11", request_ids=("req-1",))  # then the month's
    assert (check(ev, "dave").used, check(ev, "dave").reserved) == (9 * C, 0)


def test_syncing_reservations_with_postgres_keeps_those_that_arrived_meanwhile() -> None:
    view = ReservationsView()
    stale = Reservation("r-old", "dave", "req-old", (), C, NOW + timedelta(minutes=5), C)
    view.put(stale)
    before = view.ids()
    fresh = Reservation("r-new", "dave", "req-new", (), C, NOW + timedelta(minutes=5), C)
    view.put(fresh)  # a NOTIFY while Postgres was being asked
    view.sync([], before)  # Postgres: r-old was released (its NOTIFY lost)
    assert view.ids() == {"r-new"}


async def test_a_reservation_notifyed_while_postgres_is_read_is_kept() -> None:
    # The resync after a LISTEN reconnect: the read's snapshot predates a hold whose
    # NOTIFY arrives before the read returns; that hold must stay.
    view = ReservationsView()
    fresh = Reservation("r-new", "dave", "req-new", (), C, NOW + timedelta(minutes=5), C)

    async def read_while_a_notify_arrives() -> list[Reservation]:
        view.put(fresh)
        await asyncio.sleep(0)
        return []

    await view.sync_from(read_while_a_notify_arrives)
    assert view.ids() == {"r-new"}
