"""PolicyService in process: validation (every bad field named) and mapping of Check,
CheckBatch, GetBudget and Reserve / Commit / Release.

The real servicer, Evaluator and gRPC transport; the ReservationStore is a fake
(tests/policy/inprocess.py) because what is tested here is the servicer's side of
the store (what it asks, what it maps back), not Postgres: the real store's locking
and SQL are tested against real Postgres in test_reservations.py. No infrastructure.
"""

from __future__ import annotations

from datetime import timedelta

import grpc

from quartermaster.v1 import policy_pb2, usage_pb2
from quartermaster.wire import timestamp
from services.policy.reservations import Reservation
from tests.policy.inprocess import NOW, InProcess, refused

ALLOW, DENY = policy_pb2.DECISION_ALLOW, policy_pb2.DECISION_DENY


def _spend(p: InProcess, user: str, micros: int) -> None:
    p.evaluator.totals.apply(
        usage_pb2.UsageTotal(
            subject_kind=usage_pb2.SUBJECT_KIND_USER, subject_id=user, period_key="2026-11",
            used_micros=micros, updated_at=timestamp(NOW),
        ).SerializeToString()
    )  # fmt: skip


def check(user: str = "ann", **kw: object) -> policy_pb2.CheckRequest:
    fields: dict[str, object] = {"user_id": user, "product": "chat", "model": "gpt-5", **kw}
    return policy_pb2.CheckRequest(**fields)  # type: ignore[arg-type]


async def test_check_maps_the_limit_the_standing_and_the_pools(inproc: InProcess) -> None:
    _spend(inproc, "ann", 3_000_000)
    _spend(inproc, "ben", 4_000_000)
    got = await inproc.policy.Check(check(estimated_micros=1_000))
    assert (got.decision, got.used_micros, got.remaining_micros) == (ALLOW, 3_000_000, 7_000_000)
    assert (got.limit_micros, got.limit_source) == (10_000_000, "workspace_default")
    assert (got.period, got.enforcement) == (policy_pb2.PERIOD_MONTH, policy_pb2.ENFORCEMENT_HARD)
    assert got.period_start.ToDatetime().isoformat() == "2026-11-01T00:00:00"
    assert [(s.group_id, s.used_micros, s.remaining_micros, s.period) for s in got.pools] == [
        ("eng", 7_000_000, 93_000_000, policy_pb2.PERIOD_MONTH)
    ]
    denied = await inproc.policy.Check(check(model="gpt-4"))
    assert denied.decision == DENY
    assert denied.reason.startswith("model gpt-4 is not allowed for this user (group:ml allow")
    # ml allows gpt-5: its dated snapshots and routed ids too (issue 13, item 1), as
    # pricing reads them; they were denied as models nobody allowed.
    for snapshot in ("gpt-5-2025-08-07", "openai/gpt-5", "gpt-5-mini-2025-08-07"):
        assert (await inproc.policy.Check(check(model=snapshot))).decision == ALLOW, snapshot


async def test_check_names_every_bad_field(inproc: InProcess) -> None:
    err = await refused(inproc.policy.Check(
        policy_pb2.CheckRequest(user_id=" ", estimated_micros=-1, reserve=True,
                                reservation_ttl_seconds=90_000)
    ))  # fmt: skip
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert err.details() == (
        "user_id: must not be empty; product: must not be empty; model: must not be empty;"
        " estimated_micros: must not be negative; request_id: must not be empty;"
        " reservation_ttl_seconds: must be between 0 and 86400"
    )


async def test_check_batch_answers_in_order_and_names_fields_by_index(inproc: InProcess) -> None:
    _spend(inproc, "ben", 9_500_000)
    got = await inproc.policy.CheckBatch(
        policy_pb2.CheckBatchRequest(checks=[check("ann"), check("ben", estimated_micros=10**6)])
    )
    assert [r.decision for r in got.results] == [ALLOW, DENY]
    err = await refused(inproc.policy.CheckBatch(
        policy_pb2.CheckBatchRequest(checks=[check(), check(model=""), check(reserve=True,
                                                                             request_id="r")])
    ))  # fmt: skip
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert err.details() == (
        "checks[1].model: must not be empty;"
        " checks[2].reserve: not supported in a batch; use Reserve"
    )
    empty = await refused(inproc.policy.CheckBatch(policy_pb2.CheckBatchRequest()))
    assert empty.details() == "checks: must not be empty"


async def test_get_budget_maps_the_standing(inproc: InProcess) -> None:
    _spend(inproc, "ann", 2_500_000)
    got = await inproc.policy.GetBudget(policy_pb2.GetBudgetRequest(user_id="ann"))
    assert (got.user_id, got.used_micros, got.remaining_micros) == ("ann", 2_500_000, 7_500_000)
    assert [p.group_id for p in got.pools] == ["eng"]
    err = await refused(inproc.policy.GetBudget(policy_pb2.GetBudgetRequest(user_id="u" * 257)))
    assert err.details() == "user_id: longer than 256 characters"


async def test_reserve_commit_release_map_both_ways(inproc: InProcess) -> None:
    reserve = policy_pb2.ReserveRequest(
        user_id="ann", product="chat", model="gpt-5", request_id="req-1",
        estimated_micros=4_000_000,
    )  # fmt: skip
    made = await inproc.policy.Reserve(reserve)
    assert (made.decision, made.reserved_micros, made.used_micros) == (ALLOW, 4_000_000, 4_000_000)
    again = await inproc.policy.Reserve(reserve)
    assert again.reservation_id == made.reservation_id
    assert again.reason.startswith("already reserved for this request_id: ")
    # Check counts it from this replica's view, which the servicer fed.
    assert (await inproc.policy.Check(check())).reserved_micros == 4_000_000

    done = await inproc.policy.Commit(
        policy_pb2.CommitRequest(reservation_id=made.reservation_id, actual_micros=3_000_000)
    )
    assert (done.committed, done.actual_micros, done.estimated_micros) == (
        True, 3_000_000, 4_000_000,
    )  # fmt: skip
    assert done.expires_at.ToDatetime().year == 2026
    # A settled reservation is final: the same Commit again answers the same, any other
    # settle names its state.
    repeat = await inproc.policy.Commit(
        policy_pb2.CommitRequest(reservation_id=made.reservation_id, actual_micros=3_000_000)
    )
    assert repeat == done
    rid = made.reservation_id
    for late in (
        inproc.policy.Release(policy_pb2.ReleaseRequest(reservation_id=rid)),
        inproc.policy.Commit(policy_pb2.CommitRequest(reservation_id=rid, actual_micros=1)),
    ):
        err = await refused(late)
        assert (err.code(), err.details()) == (
            grpc.StatusCode.FAILED_PRECONDITION,
            f"reservation_id: {rid!r} is already committed (actual_micros=3000000);"
            " a settled reservation is final",
        )  # fmt: skip
    other = await inproc.policy.Reserve(
        policy_pb2.ReserveRequest(user_id="ann", product="chat", model="gpt-5",
                                  estimated_micros=1_000, request_id="r-other")
    )  # fmt: skip
    released = await inproc.policy.Release(
        policy_pb2.ReleaseRequest(reservation_id=other.reservation_id)
    )
    assert released.released
    twice = await refused(
        inproc.policy.Release(policy_pb2.ReleaseRequest(reservation_id=other.reservation_id))
    )
    assert twice.code() == grpc.StatusCode.FAILED_PRECONDITION
    unknown = await refused(inproc.policy.Commit(policy_pb2.CommitRequest(reservation_id="x")))
    assert (unknown.code(), unknown.details()) == (
        grpc.StatusCode.NOT_FOUND, "reservation_id: no reservation 'x'",
    )  # fmt: skip


async def test_reserve_names_every_bad_field_and_denies_past_the_limit(inproc: InProcess) -> None:
    err = await refused(inproc.policy.Reserve(
        policy_pb2.ReserveRequest(user_id="ann", estimated_micros=-5, ttl_seconds=-1)
    ))  # fmt: skip
    assert err.details() == (
        "product: must not be empty; model: must not be empty; request_id: must not be empty;"
        " estimated_micros: must not be negative; ttl_seconds: must be between 0 and 86400"
    )
    denied = await inproc.policy.Check(
        check(reserve=True, request_id="big", estimated_micros=11_000_000)
    )
    assert (denied.decision, denied.reservation_id) == (DENY, "")
    assert inproc.reservations.by_id == {}
    commit = await refused(inproc.policy.Commit(policy_pb2.CommitRequest(actual_micros=-1)))
    assert commit.details() == (
        "reservation_id: must not be empty; actual_micros: must not be negative"
    )


async def test_sums_past_int64_are_shown_as_int64_not_an_error(inproc: InProcess) -> None:
    """Issue 14, item 12: a total near int64's end plus a reservation made Check answer
    UNKNOWN "Value out of range" for that user; sums are shown capped instead."""
    top = 2**63 - 1
    _spend(inproc, "ann", top)
    held = Reservation("r-x", "ann", "req-x", ("eng",), 10**15, NOW + timedelta(days=1))
    inproc.evaluator.reservations.put(held)
    got = await inproc.policy.Check(check())
    assert (got.decision, got.used_micros, got.remaining_micros) == (DENY, top, 0)
    budget = await inproc.policy.GetBudget(policy_pb2.GetBudgetRequest(user_id="ann"))
    assert (budget.used_micros, budget.reserved_micros) == (top, 10**15)
    assert [p.used_micros for p in budget.pools] == [top]


async def test_request_id_is_checked_alike_with_or_without_reserve(inproc: InProcess) -> None:
    """Breaker (issue 14): without reserve, request_id b"bo\\x00b" was answered OK,
    with reserve refused; now every path refuses it, naming the field, as it refuses
    one past MAX_ID_LENGTH. An ordinary request_id without reserve still answers."""
    assert (await inproc.policy.Check(check(request_id="r-1"))).decision == ALLOW
    for request_id, problem in (("bo\x00b", "must not contain NUL"), ("r" * 257, "longer than")):
        for reserve in (False, True):
            err = await refused(inproc.policy.Check(check(request_id=request_id, reserve=reserve)))
            assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert (err.details() or "").startswith(f"request_id: {problem}"), err.details()
        err = await refused(inproc.policy.CheckBatch(
            policy_pb2.CheckBatchRequest(checks=[check(), check(request_id=request_id)])
        ))  # fmt: skip
        assert (err.details() or "").startswith(f"checks[1].request_id: {problem}"), err.details()


async def test_find_user_refuses_keys_no_directory_could_hold(inproc: InProcess) -> None:
    for request, field in (
        (policy_pb2.FindUserRequest(email="ann@x.io\x00"), "email"),
        (policy_pb2.FindUserRequest(slack_user_id="U" * 257), "slack_user_id"),
    ):
        err = await refused(inproc.directory.FindUser(request))
        assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert (err.details() or "").startswith(f"{field}: "), err.details()
