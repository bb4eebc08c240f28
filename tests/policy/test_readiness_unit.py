"""Readiness without infrastructure (issue 14, item 2): what policy knows decides
whether it answers, and a call that can't be answered from what it knows ends
UNAVAILABLE saying what it waits for (so the caller's fail mode decides)."""

from __future__ import annotations

from collections.abc import Awaitable

import grpc

from quartermaster.v1 import policy_pb2
from services.policy.readiness import Readiness
from tests.policy.inprocess import InProcess, refused

DOWN = grpc.StatusCode.UNAVAILABLE


def test_ready_only_once_nothing_is_waited_for_and_nothing_is_broken() -> None:
    flips: list[bool] = []
    r = Readiness(lambda: flips.append(r.ready))
    assert r.ready
    assert r.message() == ""
    read = [1_200]
    r.waiting("totals", lambda: f"{read[0]:,} of 3,400 records read")
    r.waiting("approvals", lambda: "reading qm.requests.v1 to its end")
    assert not r.ready
    read[0] = 3_000  # described when asked, not when it was registered
    assert r.message() == (
        "policy is not ready: totals: 3,000 of 3,400 records read; "
        "approvals: reading qm.requests.v1 to its end"
    )
    r.known("totals")
    r.known("approvals")
    assert r.ready
    r.broken("totals", "topic recreated; restart policy")
    r.known("totals")  # a broken part stays broken until cleared
    assert not r.ready
    assert r.message() == "policy is not ready: totals: topic recreated; restart policy"
    r.clear("totals")
    assert r.ready
    assert flips == [False, True, False, True]


async def test_until_ready_every_call_answering_from_memory_is_unavailable(
    inproc: InProcess,
) -> None:
    inproc.readiness.waiting("totals", lambda: "1,200 of 3,400 records read")
    check = policy_pb2.CheckRequest(user_id="ann", product="chat", model="gpt-5")
    calls: list[Awaitable[object]] = [
        inproc.policy.Check(check),
        inproc.policy.Check(policy_pb2.CheckRequest(
            user_id="ann", product="chat", model="gpt-5", reserve=True, request_id="r1")),
        inproc.policy.CheckBatch(policy_pb2.CheckBatchRequest(checks=[check])),
        inproc.policy.GetBudget(policy_pb2.GetBudgetRequest(user_id="ann")),
        inproc.policy.Reserve(policy_pb2.ReserveRequest(
            user_id="ann", product="chat", model="gpt-5", estimated_micros=1, request_id="r2")),
    ]  # fmt: skip
    for call in calls:
        err = await refused(call)
        assert (err.code(), err.details()) == (
            DOWN,
            "policy is not ready: totals: 1,200 of 3,400 records read",
        )
    assert not inproc.reservations.by_id, "nothing was reserved while not ready"
    inproc.readiness.known("totals")
    assert (await inproc.policy.Check(check)).decision == policy_pb2.DECISION_ALLOW


async def test_settling_a_reservation_needs_no_totals_and_runs_while_not_ready(
    inproc: InProcess,
) -> None:
    made = await inproc.policy.Reserve(
        policy_pb2.ReserveRequest(
            user_id="ann", product="chat", model="gpt-5", estimated_micros=1_000, request_id="r"
        )
    )
    inproc.readiness.broken("totals", "topic recreated")
    done = await inproc.policy.Release(
        policy_pb2.ReleaseRequest(reservation_id=made.reservation_id)
    )
    assert done.released
