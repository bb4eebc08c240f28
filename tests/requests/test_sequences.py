"""Any sequence of actions by anyone, at any times, leaves the request legal: only the
allowed transitions, one version step per change, the requester never an approver,
final states final, never more granted than asked. And the ask's validation."""

from __future__ import annotations

from datetime import datetime, timedelta

from hypothesis import event, given, settings
from hypothesis import strategies as st

from quartermaster.money import MICROS_PER_CREDIT as C
from services.requests import machine
from services.requests.ask import MAX_LINKS, Ask
from services.requests.machine import FINAL, Refused, Request, State
from services.requests.timing import Timing, tick
from tests.requests.domain import T0, new_request

EDGES = {
    (State.PENDING, State.PENDING), (State.PENDING, State.APPROVED),
    (State.PENDING, State.DENIED), (State.PENDING, State.CANCELLED),
    (State.PENDING, State.EXPIRED), (State.APPROVED, State.ENDED),
    (State.APPROVED, State.REVOKED),
}  # fmt: skip
PEOPLE = ["rae", "mia", "max", "mona", "gus", "gia", "gil", "wes", "wen", "eve"]
TIMING = Timing(remind_after=timedelta(hours=4), escalate_after=timedelta(hours=8),
                pending_for=timedelta(days=3))  # fmt: skip

ACTION = st.tuples(
    st.sampled_from(["approve", "deny", "cancel", "revoke", "tick"]),
    st.sampled_from(PEOPLE),
    st.sampled_from([0, 0, 0, 0, 1, 3]),  # version skew: 0 = current
    st.booleans(),  # admin
    st.sampled_from([0, 0, 1, 5, 30]),  # hours passing first
    st.integers(0, 700),  # granted credits (0: as asked)
)


def _apply(req: Request, action: tuple[str, str, int, bool, int, int], now: datetime
           ) -> machine.Outcome | None:  # fmt: skip
    kind, actor, skew, admin, _, granted = action
    version = req.version - skew
    if kind in ("approve", "deny"):
        return machine.decide(req, actor, kind == "approve", version, now, "r",
                              granted_micros=granted * C, admin=admin)  # fmt: skip
    if kind == "cancel":
        return machine.cancel(req, actor, version, now)
    if kind == "revoke":
        return machine.revoke(req, actor, version, now, "r", admin=admin)
    return tick(req, now, TIMING)


@settings(max_examples=300, deadline=None)
@given(credits=st.sampled_from([20, 100, 600]), actions=st.lists(ACTION, max_size=25))
def test_any_sequence_of_actions_leaves_a_legal_request(
    credits: int, actions: list[tuple[str, str, int, bool, int, int]]
) -> None:
    req = new_request(credits, pending_for=TIMING.pending_for)
    now = T0
    for action in actions:
        now += timedelta(hours=action[4])
        try:
            out = _apply(req, action, now)
        except Refused:
            continue
        if out is None:
            continue
        new = out.request
        assert (req.state, new.state) in EDGES
        assert req.state not in FINAL
        assert new.version == req.version + 1 == out.entries[-1].version
        assert [(e.from_state, e.to_state) for e in out.entries] == [(req.state, new.state)]
        assert new.requester == "rae"
        assert all("rae" not in s.approvers and "rae" not in s.approved_by for s in new.steps)
        assert 0 < new.granted_micros <= new.amount_micros
        assert 0 < new.granted_seconds <= new.duration_seconds
        voters = [p for s in new.steps for p in s.approved_by]
        assert len(voters) == len(set(voters)), "one person counts once across steps"
        if new.state is State.APPROVED and req.state is State.PENDING:
            assert new.ends_at == now + timedelta(seconds=new.granted_seconds)
            assert new.decided_by != "rae"
        req = new
    event(f"ended {req.state.value}")  # --hypothesis-show-statistics: every state is reached


def test_a_good_ask_has_no_problems() -> None:
    ask = Ask(5 * C, 3600, "eval run", ("https://x.example/doc",), "chat", "launch")
    assert not ask.problems()


def test_a_bad_ask_names_every_bad_field_at_once() -> None:
    ask = Ask(0, -1, "  ", ("ftp://x", "https://ok", "x\x00") + ("https://y",) * MAX_LINKS,
              "p\x00", "q" * 300)  # fmt: skip
    problems = list(ask.problems())
    fields = [p.split(":")[0] for p in problems]
    assert fields == ["amount_micros", "duration_seconds", "justification", "links",
                      "links[0]", "links[2]", "product", "project"]  # fmt: skip
    assert "required" in problems[2]
    too_long = Ask(10**16, 400 * 86_400, "j")
    assert [p.split(":")[0] for p in too_long.problems()] == ["amount_micros", "duration_seconds"]
