"""The credit-request state machine. Pure: every operation takes the request and `now`
(a controllable clock) and returns an `Outcome` (the new request, its timeline entries)
or raises `Refused` saying why; nothing here reads a clock or does I/O.

    PENDING ─▶ APPROVED ─▶ ENDED (its time ran out) | REVOKED (a person ended it early)
        └────▶ DENIED | CANCELLED (by the requester) | EXPIRED (nobody answered in time)

A decision is accepted only from PENDING, only once per person, and only on the version
it was made on: every change bumps `version`, so a stale or replayed decision is
refused, and of concurrent decisions the store lets exactly one apply (the others,
re-run on the new version, are refused naming who decided and when). The requester is
never an approver, on any path, an admin's included. Each entry becomes one event
(`request.<action>`) in the store's outbox.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from enum import StrEnum

from quartermaster.money import credits
from services.requests.routing import PlannedStep
from services.requests.standing import Standing

SYSTEM = "system"
NO_STANDING = Standing()


class State(StrEnum):
    PENDING = "pending"
    APPROVED = "approved"
    DENIED = "denied"
    CANCELLED = "cancelled"
    EXPIRED = "expired"
    ENDED = "ended"
    REVOKED = "revoked"


FINAL = frozenset({State.DENIED, State.CANCELLED, State.EXPIRED, State.ENDED, State.REVOKED})


class Why(StrEnum):
    """Why an operation was refused; the API maps these to status codes."""

    NOT_ALLOWED = "not_allowed"  # PERMISSION_DENIED: the requester, or not an approver
    NOT_PENDING = "not_pending"  # FAILED_PRECONDITION: decided already (says who, when)
    STALE = "stale"  # FAILED_PRECONDITION: made on an older version
    ALREADY_VOTED = "already_voted"  # FAILED_PRECONDITION
    INVALID = "invalid"  # INVALID_ARGUMENT


class Refused(Exception):
    """An operation the request's state or the actor doesn't allow; `why` is its kind.
    `naming_revoker`, when set, gives the whole message from who revoked the grant
    (the request does not keep it: the caller reads it from the timeline)."""

    def __init__(
        self, why: Why, message: str, naming_revoker: Callable[[str], str] | None = None
    ) -> None:
        super().__init__(message)
        self.why = why
        self.message = message
        self.naming_revoker = naming_revoker


@dataclass(frozen=True)
class Step:
    """One approval step: `required` of `approvers` must approve; `chain` holds the
    levels escalation still reaches (nearest first)."""

    name: str
    approvers: tuple[str, ...]
    required: int
    started_at: datetime
    approved_by: tuple[str, ...] = ()
    reminded: bool = False
    escalations: int = 0
    chain: tuple[tuple[str, ...], ...] = ()

    @property
    def waiting_on(self) -> tuple[str, ...]:
        """Approvers who have not approved yet."""
        return tuple(a for a in self.approvers if a not in self.approved_by)


@dataclass(frozen=True)
class Request:
    """A credit request. Amounts in micro-credits, durations in seconds, times UTC.
    `granted_*` start as asked and only go down (an approver may grant less or shorter);
    `ends_at` is set on approval (approval + granted duration) and on revocation."""

    request_id: str
    workspace_id: str
    requester: str
    amount_micros: int
    duration_seconds: int
    justification: str
    created_at: datetime
    expires_at: datetime
    steps: tuple[Step, ...]
    state: State = State.PENDING
    version: int = 1
    links: tuple[str, ...] = ()
    product: str = ""
    project: str = ""
    standing: Standing = NO_STANDING
    current_step: int = 0
    granted_micros: int = 0
    granted_seconds: int = 0
    approved_at: datetime | None = None
    ends_at: datetime | None = None
    decided_by: str = ""
    decided_at: datetime | None = None
    decision_reason: str = ""
    # Whether policy has the grant's override: "installing" → "installed" once approved,
    # "removing" → "removed" once ended or revoked ("" before). Kept by the store from
    # policy's answers (services.requests.confirm); no operation here reads it.
    override_status: str = ""

    @property
    def step(self) -> Step | None:
        """The step awaiting decisions (None once not pending)."""
        if self.state is not State.PENDING or self.current_step >= len(self.steps):
            return None
        return self.steps[self.current_step]

    @property
    def voters(self) -> frozenset[str]:
        """Everyone who approved at any step."""
        return frozenset(p for s in self.steps for p in s.approved_by)

    def awaiting(self) -> tuple[str, ...]:
        """Who may decide now: the current step's approvers yet to approve."""
        step = self.step
        return step.waiting_on if step is not None else ()


@dataclass(frozen=True)
class Entry:
    """One timeline entry (append-only) and the event it publishes: `request.<action>`."""

    at: datetime
    actor: str
    action: str
    from_state: State
    to_state: State
    reason: str
    version: int
    # The trusted service that acted for `actor` ("" when they acted themself).
    via: str = ""


@dataclass(frozen=True)
class Vote:
    """A person's approval or denial at a step, kept apart so the store can hold one
    person to one vote per request."""

    user_id: str
    step: int
    approve: bool


@dataclass(frozen=True)
class Outcome:
    """The request after an operation, with the entries it appends (each an event)."""

    request: Request
    entries: tuple[Entry, ...]
    vote: Vote | None = None


def transition(
    req: Request, now: datetime, actor: str, action: str, reason: str, **changes: object
) -> Outcome:
    """`req` with `changes` applied and its version bumped, and the entry saying so."""
    new = replace(req, version=req.version + 1, **changes)  # type: ignore[arg-type]
    entry = Entry(now, actor, action, req.state, new.state, reason, new.version)
    return Outcome(new, (entry,))


def create(
    *,
    request_id: str,
    workspace_id: str,
    requester: str,
    amount_micros: int,
    duration_seconds: int,
    justification: str,
    steps: Sequence[PlannedStep],
    now: datetime,
    pending_for: timedelta,
    links: Sequence[str] = (),
    product: str = "",
    project: str = "",
    standing: Standing = NO_STANDING,
) -> Outcome:
    """A new PENDING request at version 1 awaiting the first of `steps` (routed by
    services.requests.routing, so the requester is in none), expiring `pending_for`
    after `now`. The ask is validated by services.requests.ask before this."""
    if not steps:
        raise Refused(Why.INVALID, "steps: a request needs at least one approval step")
    if any(requester in s.approvers or any(requester in lv for lv in s.escalations) for s in steps):
        raise Refused(Why.NOT_ALLOWED, f"{requester} can't be an approver of their own request")
    req = Request(
        request_id=request_id, workspace_id=workspace_id, requester=requester,
        amount_micros=amount_micros, duration_seconds=duration_seconds,
        justification=justification, created_at=now, expires_at=now + pending_for,
        steps=tuple(Step(s.name, s.approvers, s.required, now, chain=s.escalations)
                    for s in steps),
        links=tuple(links), product=product, project=project, standing=standing,
        granted_micros=amount_micros, granted_seconds=duration_seconds,
    )  # fmt: skip
    entry = Entry(now, requester, "created", State.PENDING, State.PENDING, justification, 1)
    return Outcome(req, (entry,))


def _at(at: datetime | None) -> str:
    return at.isoformat() if at else "an unknown time"


def decided_text(req: Request, revoked_by: str = "") -> str:
    """ "approved by lee at 2026-…" — who decided and when, for refusals. A grant that
    ended says when, and one revoked by whom (`revoked_by`, "" unknown) and when."""
    who = req.decided_by or SYSTEM
    if req.state is State.REVOKED:
        return (f"the grant was already revoked by {revoked_by or 'someone'} at "
                f"{_at(req.ends_at)} (approved by {who} at {_at(req.decided_at)})")  # fmt: skip
    if req.state is State.ENDED:
        return (f"the grant already ended at {_at(req.ends_at)} (approved by {who} at "
                f"{_at(req.decided_at)})")  # fmt: skip
    return f"the request was already {req.state.value} by {who} at {_at(req.decided_at)}"


def not_pending(req: Request, prefix: str = "") -> Refused:
    """NOT_PENDING for `req`, saying who decided (and revoked) it and when, after
    `prefix`; naming the revoker is left to the caller (Refused.naming_revoker)."""
    if req.state is State.PENDING:
        return Refused(Why.NOT_PENDING, f"{prefix}it is still pending")
    if req.state is State.REVOKED:
        return Refused(Why.NOT_PENDING, prefix + decided_text(req),
                       lambda who: prefix + decided_text(req, who))  # fmt: skip
    return Refused(Why.NOT_PENDING, prefix + decided_text(req))


def _check_version(req: Request, version: int) -> None:
    if version != req.version:
        raise Refused(
            Why.STALE,
            f"version: the decision was made on version {version}, but the request is at "
            f"version {req.version}; read it again and decide on what it says now",
        )


def _offer(req: Request, granted_micros: int, granted_seconds: int) -> tuple[int, int]:
    """What an approval grants (0: as asked); Refused INVALID for more than asked."""
    micros = granted_micros or req.amount_micros
    seconds = granted_seconds or req.duration_seconds
    if not 0 < micros <= req.amount_micros:
        raise Refused(Why.INVALID, f"granted_micros: must be between 1 and the "
                      f"{req.amount_micros} asked")  # fmt: skip
    if not 0 < seconds <= req.duration_seconds:
        raise Refused(Why.INVALID, f"granted_duration_seconds: must be between 1 and the "
                      f"{req.duration_seconds} asked")  # fmt: skip
    return min(micros, req.granted_micros), min(seconds, req.granted_seconds)


def decide(
    req: Request,
    actor: str,
    approve: bool,
    version: int,
    now: datetime,
    reason: str = "",
    *,
    granted_micros: int = 0,
    granted_seconds: int = 0,
    admin: bool = False,
) -> Outcome:
    """`actor` approves or denies at the current step (an `admin` decides the whole
    request at once). One deny ends it; the step's `required`-th approval moves to the
    next step or, at the last, approves with the least grant offered. Refused (in this
    order): the requester (NOT_ALLOWED, admin or not), a request not pending
    (NOT_PENDING, naming who decided and when), a stale version (STALE), someone not
    an approver of this step (NOT_ALLOWED), someone who approved already (ALREADY_VOTED),
    a grant above the ask (INVALID)."""
    if actor == req.requester:
        raise Refused(Why.NOT_ALLOWED, f"{actor} asked for this request and can't decide it")
    step = req.step
    if step is None:
        raise not_pending(req)
    _check_version(req, version)
    if not admin and actor not in step.approvers:
        raise Refused(Why.NOT_ALLOWED, f"{actor} is not an approver of step {step.name} "
                      f"(waiting on {', '.join(step.waiting_on)})")  # fmt: skip
    if actor in req.voters:
        raise Refused(Why.ALREADY_VOTED, f"{actor} approved this request already")
    vote = Vote(actor, req.current_step, approve)
    if not approve:
        out = transition(req, now, actor, "denied", reason, state=State.DENIED,
                         decided_by=actor, decided_at=now, decision_reason=reason)  # fmt: skip
        return replace(out, vote=vote)
    micros, seconds = _offer(req, granted_micros, granted_seconds)
    done = replace(step, approved_by=(*step.approved_by, actor))
    steps = (*req.steps[: req.current_step], done, *req.steps[req.current_step + 1 :])
    note = reason
    if (micros, seconds) != (req.amount_micros, req.duration_seconds):
        note = (f"granted {credits(micros)} of {credits(req.amount_micros)} credits for "
                f"{seconds} of {req.duration_seconds} s; {reason}")  # fmt: skip
    common = {"steps": steps, "granted_micros": micros, "granted_seconds": seconds}
    if admin or len(done.approved_by) >= done.required:
        if not admin and req.current_step + 1 < len(req.steps):
            nxt = req.current_step + 1
            started = replace(req.steps[nxt], started_at=now)
            steps = (*steps[:nxt], started, *steps[nxt + 1 :])
            out = transition(req, now, actor, "voted", note, **{**common, "steps": steps},
                             current_step=nxt)  # fmt: skip
            return replace(out, vote=vote)
        out = transition(
            req, now, actor, "approved", note, **common, state=State.APPROVED,
            approved_at=now, ends_at=now + timedelta(seconds=seconds),
            decided_by=actor, decided_at=now, decision_reason=reason,
        )  # fmt: skip
        return replace(out, vote=vote)
    return replace(transition(req, now, actor, "voted", note, **common), vote=vote)


def cancel(req: Request, actor: str, version: int, now: datetime, reason: str = "") -> Outcome:
    """The requester withdraws a pending request. Refused: anyone else (NOT_ALLOWED),
    a request not pending (NOT_PENDING), a stale version (STALE)."""
    if actor != req.requester:
        raise Refused(Why.NOT_ALLOWED, f"only the requester {req.requester} may cancel it")
    if req.state is not State.PENDING:
        raise not_pending(req)
    _check_version(req, version)
    return transition(req, now, actor, "cancelled", reason, state=State.CANCELLED,
                      decided_by=actor, decided_at=now, decision_reason=reason)  # fmt: skip


def revoke(
    req: Request, actor: str, version: int, now: datetime, reason: str, *, admin: bool = False
) -> Outcome:
    """End an active grant early (policy then removes that one override). Allowed to an
    admin, anyone who approved it, and the requester (giving credits back). Refused:
    anyone else (NOT_ALLOWED), a request not APPROVED (NOT_PENDING), a stale version,
    no reason (INVALID)."""
    if not (admin or actor == req.requester or actor in req.voters):
        raise Refused(Why.NOT_ALLOWED, f"{actor} neither approved this grant nor is an admin")
    if req.state is not State.APPROVED:
        raise not_pending(req, "only an approved grant can be revoked; ")
    _check_version(req, version)
    if not reason.strip():
        raise Refused(Why.INVALID, "reason: say why the grant ends early")
    return transition(req, now, actor, "revoked", reason, state=State.REVOKED, ends_at=now)
