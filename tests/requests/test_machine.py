"""The state machine on a controllable clock: every transition and every refusal."""

from __future__ import annotations

from dataclasses import replace
from datetime import timedelta

import pytest

from quartermaster.money import MICROS_PER_CREDIT as C
from services.requests import machine
from services.requests.machine import Refused, State, Why
from tests.requests.domain import T0, approve, new_request

H = timedelta(hours=1)


def test_create_is_pending_at_version_1_awaiting_the_first_step() -> None:
    req = new_request(20)
    assert (req.state, req.version, req.current_step) == (State.PENDING, 1, 0)
    assert [s.name for s in req.steps] == ["manager"]
    assert req.awaiting() == ("mia",)
    assert req.expires_at == T0 + timedelta(days=7)
    assert (req.granted_micros, req.granted_seconds) == (20 * C, 24 * 3600)


def test_one_approval_of_a_small_request_approves_it_and_the_grant_starts_then() -> None:
    req = new_request(20, hours=2)
    out = approve(req, "mia", T0 + 3 * H)
    new = out.request
    assert (new.state, new.version, new.decided_by) == (State.APPROVED, 2, "mia")
    assert new.approved_at == T0 + 3 * H
    assert new.ends_at == T0 + 5 * H  # the duration counts from approval, not from asking
    assert [(e.action, e.from_state, e.to_state) for e in out.entries] == [
        ("approved", State.PENDING, State.APPROVED)
    ]
    assert out.vote == machine.Vote("mia", 0, True)


def test_a_large_request_goes_through_every_step_in_order() -> None:
    req = new_request(600)
    assert [s.name for s in req.steps] == ["manager", "group_admins", "workspace_admins"]
    out = approve(req, "mia", T0 + H)
    assert (out.request.state, out.request.current_step, out.entries[0].action) == (
        State.PENDING, 1, "voted")  # fmt: skip
    assert out.request.steps[1].started_at == T0 + H
    assert out.request.awaiting() == ("gus", "gia")
    out = approve(out.request, "gia", T0 + 2 * H)
    assert out.request.current_step == 2
    out = approve(out.request, "wen", T0 + 3 * H)
    assert (out.request.state, out.request.version) == (State.APPROVED, 4)


def test_n_of_m_needs_n_approvals_in_the_step() -> None:
    req = new_request(20)
    steps = (replace(req.steps[0], approvers=("a", "b", "c"), required=2),)
    req = replace(req, steps=steps)
    first = approve(req, "b")
    assert first.request.state is State.PENDING
    assert first.request.awaiting() == ("a", "c")
    second = approve(first.request, "c")
    assert second.request.state is State.APPROVED


def test_one_deny_ends_it_at_any_step() -> None:
    req = approve(new_request(600), "mia").request
    out = machine.decide(req, "gus", False, req.version, T0 + H, "not this quarter")
    assert (out.request.state, out.request.decided_by) == (State.DENIED, "gus")
    assert out.request.decision_reason == "not this quarter"
    assert out.entries[0].to_state is State.DENIED


def test_a_decision_on_a_decided_request_is_refused_naming_who_and_when() -> None:
    req = approve(new_request(20), "mia", T0 + H).request
    with pytest.raises(Refused) as exc:
        machine.decide(req, "mia", False, req.version, T0 + 2 * H)
    assert exc.value.why is Why.NOT_PENDING
    assert "already approved by mia at 2026-11-30T10:00:00+00:00" in exc.value.message


def test_a_stale_or_replayed_decision_is_refused() -> None:
    req = new_request(20)
    steps = (replace(req.steps[0], approvers=("a", "b", "c"), required=2),)
    req = replace(req, steps=steps)
    after_a = approve(req, "a").request
    with pytest.raises(Refused) as exc:  # b decided on what it saw at version 1
        machine.decide(after_a, "b", True, req.version, T0)
    assert exc.value.why is Why.STALE
    assert "version 1" in exc.value.message
    assert "version 2" in exc.value.message
    with pytest.raises(Refused) as exc:  # a's own vote replayed on the current version
        approve(after_a, "a")
    assert exc.value.why is Why.ALREADY_VOTED


@pytest.mark.parametrize("admin", [False, True])
def test_the_requester_can_never_decide_their_own_request(admin: bool) -> None:
    req = new_request(20, requester="rae")
    with pytest.raises(Refused) as exc:
        machine.decide(req, "rae", True, req.version, T0, admin=admin)
    assert exc.value.why is Why.NOT_ALLOWED
    # even put on the step by hand (a bug elsewhere), the machine refuses
    forced = replace(req, steps=(replace(req.steps[0], approvers=("rae",)),))
    with pytest.raises(Refused):
        machine.decide(forced, "rae", True, req.version, T0, admin=admin)


def test_a_requester_routed_as_an_approver_is_refused_at_creation() -> None:
    from services.requests.routing import PlannedStep

    with pytest.raises(Refused) as exc:
        machine.create(
            request_id="x", workspace_id="ws", requester="rae", amount_micros=C,
            duration_seconds=60, justification="j", steps=[PlannedStep("m", ("rae",), 1, ())],
            now=T0, pending_for=H,
        )  # fmt: skip
    assert exc.value.why is Why.NOT_ALLOWED


def test_someone_not_on_the_current_step_is_refused_but_an_admin_decides_outright() -> None:
    req = new_request(600)
    with pytest.raises(Refused) as exc:
        approve(req, "gus")  # group admin, but step 0 is the manager's
    assert exc.value.why is Why.NOT_ALLOWED
    assert "waiting on mia" in exc.value.message
    out = machine.decide(req, "wes", True, req.version, T0, "launch", admin=True)
    assert (out.request.state, out.request.decided_by) == (State.APPROVED, "wes")


def test_an_approver_may_grant_less_or_shorter_and_the_least_offer_wins() -> None:
    req = new_request(600, hours=10)
    out = approve(req, "mia", granted_micros=400 * C)
    out = approve(out.request, "gus", granted_seconds=5 * 3600)
    assert "granted 400.00 of 600.00 credits for 18000 of 36000 s" in out.entries[0].reason
    out = approve(out.request, "wes", granted_micros=500 * C)
    new = out.request
    assert (new.state, new.granted_micros, new.granted_seconds) == (
        State.APPROVED, 400 * C, 5 * 3600)  # fmt: skip
    assert new.ends_at == T0 + 5 * H
    assert (new.amount_micros, new.duration_seconds) == (600 * C, 10 * 3600)  # as asked


@pytest.mark.parametrize("kw", [{"granted_micros": 21 * C}, {"granted_seconds": 25 * 3600},
                                {"granted_micros": -1}])  # fmt: skip
def test_granting_more_than_asked_is_refused(kw: dict[str, int]) -> None:
    with pytest.raises(Refused) as exc:
        approve(new_request(20), "mia", T0, **kw)
    assert exc.value.why is Why.INVALID


def test_the_requester_cancels_a_pending_request_and_nobody_else_can() -> None:
    req = new_request(20)
    with pytest.raises(Refused) as exc:
        machine.cancel(req, "mia", req.version, T0)
    assert exc.value.why is Why.NOT_ALLOWED
    out = machine.cancel(req, "rae", req.version, T0 + H, "found budget elsewhere")
    assert (out.request.state, out.entries[0].action) == (State.CANCELLED, "cancelled")
    with pytest.raises(Refused) as exc:
        machine.cancel(out.request, "rae", out.request.version, T0)
    assert exc.value.why is Why.NOT_PENDING
    with pytest.raises(Refused) as exc:
        approve(out.request, "mia")
    assert "already cancelled by rae" in exc.value.message


def test_a_grant_is_revoked_early_by_an_approver_or_admin_with_a_reason() -> None:
    req = approve(new_request(20), "mia", T0).request
    with pytest.raises(Refused) as exc:
        machine.revoke(req, "stranger", req.version, T0 + H, "no")
    assert exc.value.why is Why.NOT_ALLOWED
    with pytest.raises(Refused) as exc:
        machine.revoke(req, "mia", req.version, T0 + H, " ")
    assert exc.value.why is Why.INVALID
    with pytest.raises(Refused) as exc:
        machine.revoke(req, "mia", req.version - 1, T0 + H, "done early")
    assert exc.value.why is Why.STALE
    out = machine.revoke(req, "mia", req.version, T0 + H, "done early")
    assert (out.request.state, out.request.ends_at) == (State.REVOKED, T0 + H)
    admin = machine.revoke(req, "wes", req.version, T0 + H, "abuse", admin=True)
    assert admin.request.state is State.REVOKED
    with pytest.raises(Refused) as exc:
        machine.revoke(out.request, "mia", out.request.version, T0 + 2 * H, "again")
    assert exc.value.why is Why.NOT_PENDING


def test_a_pending_request_cannot_be_revoked() -> None:
    req = new_request(20)
    with pytest.raises(Refused) as exc:
        machine.revoke(req, "rae", req.version, T0, "x")
    assert exc.value.why is Why.NOT_PENDING


def test_a_refused_revocation_says_what_became_of_the_grant_by_whom_and_when() -> None:
    """The loser of a revoke race heard only "it is revoked": now who and when, as a
    decision's loser hears "already approved by X at T"."""
    req = new_request(20)
    with pytest.raises(Refused) as exc:
        machine.revoke(req, "rae", req.version, T0, "x")
    assert exc.value.message == "only an approved grant can be revoked; it is still pending"
    approved = approve(req, "mia", T0).request
    revoked = machine.revoke(approved, "mia", approved.version, T0 + H, "done").request
    with pytest.raises(Refused) as exc:
        machine.revoke(revoked, "rae", approved.version, T0 + 2 * H, "me too")
    said = exc.value
    assert said.why is Why.NOT_PENDING
    assert said.naming_revoker is not None
    assert said.naming_revoker("mia") == (
        "only an approved grant can be revoked; the grant was already revoked by mia at "
        "2026-11-30T10:00:00+00:00 (approved by mia at 2026-11-30T09:00:00+00:00)"
    )
    with pytest.raises(Refused) as exc:  # a decision on it says so too, not "revoked by mia"
        machine.cancel(revoked, "rae", revoked.version, T0 + 2 * H)
    assert exc.value.naming_revoker is not None
    assert exc.value.naming_revoker("wes").startswith("the grant was already revoked by wes at")
    ended = replace(approved, state=State.ENDED, version=3)
    with pytest.raises(Refused) as exc:
        machine.revoke(ended, "mia", 3, T0 + 30 * H, "late")
    assert exc.value.naming_revoker is None
    assert exc.value.message == (
        "only an approved grant can be revoked; the grant already ended at "
        f"{approved.ends_at.isoformat() if approved.ends_at else ''} (approved by mia at "
        "2026-11-30T09:00:00+00:00)"
    )
    denied = machine.decide(new_request(20), "mia", False, 1, T0 + H, "no").request
    with pytest.raises(Refused, match="can be revoked; the request was already denied by mia at"):
        machine.revoke(denied, "rae", denied.version, T0 + 2 * H, "x")
