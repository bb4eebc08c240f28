"""Time in the workflow, as functions of `now` passed in (a controllable clock). Pure.

For a pending request, each step has an SLA: `remind_after` its start the approvers it
waits on are reminded once; `escalate_after` its start it escalates to the next level
of its chain (the manager's manager, the parent group's admins), which joins the step
and restarts its clock. A pending request expires at its `expires_at`; an approved
grant ends at its `ends_at`. The reconciler calls `tick` with the real time for every
request `next_due` says is due, so a deadline that passed while nothing ran (downtime)
is acted on at the next tick, never lost.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import datetime, timedelta

from services.requests.machine import SYSTEM, Outcome, Request, State, transition
from services.requests.routing import eligible


@dataclass(frozen=True)
class Timing:
    """Per-step reminder and escalation delays, and how long a request may stay pending."""

    remind_after: timedelta = timedelta(hours=24)
    escalate_after: timedelta = timedelta(hours=48)
    pending_for: timedelta = timedelta(days=7)

    def __post_init__(self) -> None:
        if not timedelta(0) < self.remind_after <= self.escalate_after:
            raise ValueError("remind_after must be positive and at most escalate_after")
        if self.pending_for <= timedelta(0):
            raise ValueError("pending_for must be positive")


def next_due(req: Request, timing: Timing) -> datetime | None:
    """The earliest time `tick` has something to do for `req`; None when never again."""
    if req.state is State.APPROVED:
        return req.ends_at
    step = req.step
    if step is None:
        return None
    due = [req.expires_at]
    if not step.reminded:
        due.append(step.started_at + timing.remind_after)
    if step.chain:
        due.append(step.started_at + timing.escalate_after)
    return min(due)


def _escalate(req: Request, now: datetime) -> Outcome | None:
    """The step with its next chain level joined (nobody who is the requester, already
    asked in any step, or approved already); None when the chain has nobody left."""
    step = req.step
    assert step is not None
    asked = {p for s in req.steps for p in s.approvers}
    for index, level in enumerate(step.chain):
        joining = eligible(level, req.requester, asked)
        if joining:
            new = replace(step, approvers=(*step.approvers, *joining), started_at=now,
                          reminded=False, escalations=step.escalations + 1,
                          chain=step.chain[index + 1 :])  # fmt: skip
            steps = (*req.steps[: req.current_step], new, *req.steps[req.current_step + 1 :])
            reason = f"step {step.name} unanswered; now also asking {', '.join(joining)}"
            return transition(req, now, SYSTEM, "escalated", reason, steps=steps)
    return None


def tick(req: Request, now: datetime, timing: Timing) -> Outcome | None:
    """What is due for `req` at `now`, one transition at a time (the reconciler calls
    again while `next_due` is past): grant end, pending expiry, escalation, reminder.
    None when nothing is due."""
    if req.state is State.APPROVED:
        if req.ends_at is not None and now >= req.ends_at:
            return transition(req, now, SYSTEM, "ended", "the grant's time ran out",
                              state=State.ENDED)  # fmt: skip
        return None
    step = req.step
    if step is None:
        return None
    if now >= req.expires_at:
        return transition(req, now, SYSTEM, "expired", "nobody decided in time",
                          state=State.EXPIRED, decided_by=SYSTEM, decided_at=now)  # fmt: skip
    if now >= step.started_at + timing.escalate_after and step.chain:
        escalated = _escalate(req, now)
        if escalated is not None:
            return escalated
        # Everyone further up is asked already: nothing to add, and nothing due again.
        steps = list(req.steps)
        steps[req.current_step] = replace(step, chain=())
        return transition(req, now, SYSTEM, "escalated", "nobody further up the chain to ask",
                          steps=tuple(steps))  # fmt: skip
    if not step.reminded and now >= step.started_at + timing.remind_after:
        steps = list(req.steps)
        steps[req.current_step] = replace(step, reminded=True)
        reason = f"step {step.name} waits on {', '.join(step.waiting_on)}"
        return transition(req, now, SYSTEM, "reminded", reason, steps=tuple(steps))
    return None
