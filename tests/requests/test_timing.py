"""Time on a controllable clock: reminders, escalation, pending expiry, grant end,
stacked grants, and the standing shown to the approver."""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime, timedelta

import pytest

from quartermaster.money import MICROS_PER_CREDIT as C
from services.requests import machine
from services.requests.grants import extra_micros, grant_of
from services.requests.machine import SYSTEM, Request, State
from services.requests.standing import runs_out_at
from services.requests.timing import Timing, next_due, tick
from tests.requests.domain import T0, approve, new_request

H = timedelta(hours=1)
TIMING = Timing(remind_after=4 * H, escalate_after=8 * H, pending_for=3 * 24 * H)


def run_until(req: Request, now: datetime) -> tuple[Request, list[str]]:
    """Tick as the reconciler does, until nothing is due at `now`."""
    actions = []
    while (out := tick(req, now, TIMING)) is not None:
        req = out.request
        actions += [e.action for e in out.entries]
    return req, actions


def test_nothing_is_due_before_the_first_reminder() -> None:
    req = new_request(20, pending_for=TIMING.pending_for)
    assert next_due(req, TIMING) == T0 + 4 * H
    assert tick(req, T0 + 4 * H - timedelta(seconds=1), TIMING) is None


def test_a_reminder_once_then_escalation_up_the_chain_which_restarts_the_clock() -> None:
    req = new_request(20, pending_for=TIMING.pending_for)
    out = tick(req, T0 + 4 * H, TIMING)
    assert out is not None
    req = out.request
    assert (out.entries[0].action, out.entries[0].actor) == ("reminded", SYSTEM)
    assert "waits on mia" in out.entries[0].reason
    assert tick(req, T0 + 5 * H, TIMING) is None  # reminded once only
    out = tick(req, T0 + 8 * H, TIMING)
    assert out is not None
    assert out.entries[0].action == "escalated"
    req = out.request
    assert req.awaiting() == ("mia", "max")
    assert (req.steps[0].escalations, req.steps[0].started_at) == (1, T0 + 8 * H)
    assert next_due(req, TIMING) == T0 + 12 * H  # a reminder for the new level
    req, actions = run_until(req, T0 + 12 * H)
    assert actions == ["reminded"]
    req, actions = run_until(req, T0 + 16 * H)
    assert actions == ["escalated"]
    assert req.awaiting() == ("mia", "max", "mona")
    # the manager's manager may now approve
    assert approve(req, "mona", T0 + 17 * H).request.state is State.APPROVED


def test_an_exhausted_chain_escalates_no_further() -> None:
    req = new_request(20, pending_for=TIMING.pending_for)
    for hour in range(40):
        req, _ = run_until(req, T0 + hour * H)
    assert req.awaiting() == ("mia", "max", "mona")
    assert req.steps[0].chain == ()
    assert next_due(req, TIMING) == req.expires_at


def test_a_pending_request_expires_even_when_the_reconciler_was_down_past_it() -> None:
    req = new_request(20, pending_for=TIMING.pending_for)
    req, actions = run_until(req, T0 + 30 * 24 * H)  # one tick after a month of downtime
    assert actions == ["expired"]
    assert (req.state, req.decided_by, req.decided_at) == (State.EXPIRED, SYSTEM, T0 + 720 * H)
    assert next_due(req, TIMING) is None
    with pytest.raises(machine.Refused, match="already expired by system"):
        approve(req, "mia")


def test_a_grant_ends_at_its_end_and_not_before() -> None:
    req = approve(new_request(20, hours=2), "mia", T0 + H).request
    assert next_due(req, TIMING) == T0 + 3 * H
    assert tick(req, T0 + 3 * H - timedelta(microseconds=1), TIMING) is None
    req, actions = run_until(req, T0 + 100 * H)
    assert (actions, req.state) == (["ended"], State.ENDED)
    assert next_due(req, TIMING) is None


def test_grants_stack_and_each_ends_on_its_own() -> None:
    first = approve(new_request(20, hours=2), "mia", T0).request
    second = approve(replace(new_request(30, hours=5), request_id="cr-2"), "mia", T0 + H).request
    revoked = machine.revoke(
        approve(replace(new_request(7, hours=9), request_id="cr-3"), "mia", T0).request,
        "mia", 2, T0 + 4 * H, "done",
    ).request  # fmt: skip
    pending = replace(new_request(100), request_id="cr-4")
    everything = [first, second, revoked, pending]
    assert extra_micros(everything, "rae", T0 + H) == 57 * C
    assert extra_micros(everything, "rae", T0 + 2 * H) == 37 * C  # the first ended
    assert extra_micros(everything, "rae", T0 + 4 * H) == 30 * C  # the third revoked
    assert extra_micros(everything, "rae", T0 + 6 * H) == 0
    assert extra_micros(everything, "someone-else", T0 + H) == 0
    assert grant_of(pending) is None


def test_timing_must_make_sense() -> None:
    with pytest.raises(ValueError, match="remind_after"):
        Timing(remind_after=2 * H, escalate_after=H)
    with pytest.raises(ValueError, match="pending_for"):
        Timing(pending_for=timedelta(0))


def test_when_the_budget_runs_out_at_this_rate() -> None:
    end = T0 + 30 * 24 * H
    # 70 credits over 7 days = 10 a day; 25 left: 2.5 days
    assert runs_out_at(75 * C, 100 * C, 70 * C, T0, end) == T0 + 60 * H
    assert runs_out_at(100 * C, 100 * C, 70 * C, T0, end) == T0
    assert runs_out_at(10 * C, 100 * C, 0, T0, end) is None
    assert runs_out_at(10 * C, 100 * C, 7 * C, T0, T0 + 24 * H) is None  # not this period
