"""The one module between the requests domain and its wire messages
(quartermaster.v1.requests_pb2): a request as a `CreditRequest`, each timeline entry
as a `RequestEvent` for qm.requests.v1, and the RequestService's messages to the
servicer's inputs. So a field rename touches one place.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import datetime

from quartermaster.v1 import requests_pb2
from quartermaster.validation import Problems
from quartermaster.wire import timestamp
from services.requests.ask import Ask
from services.requests.machine import Entry, Request, State, Step
from services.requests.standing import Standing

SCHEMA_VERSION = 1  # RequestEvent.schema_version this service writes
_STATES = {
    State.PENDING: requests_pb2.REQUEST_STATE_PENDING,
    State.APPROVED: requests_pb2.REQUEST_STATE_APPROVED,
    State.DENIED: requests_pb2.REQUEST_STATE_DENIED,
    State.CANCELLED: requests_pb2.REQUEST_STATE_CANCELLED,
    State.EXPIRED: requests_pb2.REQUEST_STATE_EXPIRED,
    State.ENDED: requests_pb2.REQUEST_STATE_ENDED,
    State.REVOKED: requests_pb2.REQUEST_STATE_REVOKED,
}


# By value: a State is its value (StrEnum), so one lookup serves both without making a
# State of a stored string (Enum's call was a tenth of a list page's mapping).
_STATE_VALUES = {s.value: pb for s, pb in _STATES.items()}


def state_pb(state: State | str) -> requests_pb2.RequestState.ValueType:
    """The wire enum of a State (or its value). KeyError for another string."""
    return _STATE_VALUES[state]


def standing_pb(s: Standing) -> requests_pb2.Standing:
    out = requests_pb2.Standing(
        used_micros=s.used_micros, limit_micros=s.limit_micros, period=s.period,
        by_product=[requests_pb2.SpendShare(name=n, micros=m) for n, m in s.by_product],
        by_model=[requests_pb2.SpendShare(name=n, micros=m) for n, m in s.by_model],
        burn_7d_micros=s.burn_7d_micros, unavailable=s.unavailable,
        history=[requests_pb2.PastRequest(request_id=h.request_id, amount_micros=h.amount_micros,
                                          state=state_pb(h.state), granted_micros=h.granted_micros,
                                          created_at=timestamp(h.created_at))
                 for h in s.history],
    )  # fmt: skip
    if s.runs_out_at is not None:
        out.runs_out_at.CopyFrom(timestamp(s.runs_out_at))
    return out


def _step_pb(s: Step) -> requests_pb2.ApprovalStep:
    return requests_pb2.ApprovalStep(
        name=s.name, approver_user_ids=s.approvers, required=s.required,
        approved_by=s.approved_by, started_at=timestamp(s.started_at), reminded=s.reminded,
        escalations=s.escalations,
    )  # fmt: skip


def entry_pb(e: Entry) -> requests_pb2.TimelineEntry:
    return requests_pb2.TimelineEntry(
        at=timestamp(e.at), actor_user_id=e.actor, action=e.action,
        from_state=state_pb(e.from_state), to_state=state_pb(e.to_state), reason=e.reason,
        version=e.version, via=e.via,
    )  # fmt: skip


def credit_request_pb(req: Request, timeline: Sequence[Entry] = ()) -> requests_pb2.CreditRequest:
    """`req` on the wire; `approver_user_id` is who decided it (empty while pending)."""
    out = requests_pb2.CreditRequest(
        request_id=req.request_id, workspace_id=req.workspace_id,
        requester_user_id=req.requester, amount_micros=req.amount_micros,
        duration_seconds=req.duration_seconds, justification=req.justification,
        approver_user_id=req.decided_by, state=state_pb(req.state),
        created_at=timestamp(req.created_at), expires_at=timestamp(req.expires_at),
        version=req.version, links=req.links, product=req.product, project=req.project,
        standing=standing_pb(req.standing), granted_micros=req.granted_micros,
        granted_duration_seconds=req.granted_seconds,
        steps=[_step_pb(s) for s in req.steps], current_step=req.current_step,
        timeline=[entry_pb(e) for e in timeline], decision_reason=req.decision_reason,
        override_status=req.override_status,
    )  # fmt: skip
    for field, at in (("approved_at", req.approved_at), ("ends_at", req.ends_at),
                      ("decided_at", req.decided_at)):  # fmt: skip
        if at is not None:
            getattr(out, field).CopyFrom(timestamp(at))
    return out


def event_id(request_id: str, version: int, action: str) -> str:
    """Deterministic, so the same change always announces itself with the same id."""
    return f"{request_id}:{version}:request.{action}"


def event_pb(req: Request, entry: Entry) -> requests_pb2.RequestEvent:
    """The qm.requests.v1 event announcing `entry`, with `req` as it is after it. A
    grant's override window (approval to end, or to revocation) rides on approved,
    ended and revoked events, as policy installs and removes the override from them."""
    event = requests_pb2.RequestEvent(
        event_id=event_id(req.request_id, entry.version, entry.action),
        type=f"request.{entry.action}", request=credit_request_pb(req), actor_user_id=entry.actor,
        note=entry.reason, occurred_at=timestamp(entry.at), schema_version=SCHEMA_VERSION,
        version=entry.version, current_approver_user_ids=req.awaiting(), actor_via=entry.via,
    )  # fmt: skip
    if req.approved_at is not None and req.ends_at is not None:
        event.override_starts_at.CopyFrom(timestamp(req.approved_at))
        event.override_expires_at.CopyFrom(timestamp(req.ends_at))
    return event


_FROM_PB = {v: k for k, v in _STATES.items()}


def ask_of(msg: requests_pb2.CreateCreditRequest) -> Ask:
    """What a CreateCreditRequest asks (validated by Ask.problems)."""
    return Ask(msg.amount_micros, msg.duration_seconds, msg.justification, tuple(msg.links),
               msg.product, msg.project)  # fmt: skip


def states_of(msg: requests_pb2.ListCreditRequests, problems: Problems) -> list[str]:
    """The states a list asks for, as State values; an unknown one is a problem."""
    out: list[str] = []
    problems.require_list("states", len(msg.states), len(_STATES))
    if len(msg.states) > len(_STATES):
        return out
    for i, s in enumerate(msg.states):
        if s not in _FROM_PB:
            problems.add(f"states[{i}]", f"{s} is not a request state")
        else:
            out.append(_FROM_PB[s].value)
    return out


def listed_pb(req: Request) -> requests_pb2.CreditRequest:
    """`req` as the lists show it: without its timeline or its standing's history (Get
    has both)."""
    if req.standing.history:
        req = replace(req, standing=replace(req.standing, history=()))
    return credit_request_pb(req)


@dataclass(frozen=True)
class Listed:
    """A request as a list reads it: its position (created_at UTC, request_id), its
    override_status, and `wire`, listed_pb of it serialized when it last changed (the
    store keeps it: parsing bytes is C's work, building a message field by field
    Python's, five times slower); b"" for a row stored before, then `request` has it."""

    created_at: datetime
    request_id: str
    override_status: str
    wire: bytes
    request: Request | None = None


def listed_of(req: Request) -> Listed:
    """`req` as a list reads it (for stores that keep no wire form)."""
    return Listed(req.created_at, req.request_id, req.override_status,
                  listed_pb(req).SerializeToString())  # fmt: skip


def fitting(found: Sequence[Listed], max_bytes: int) -> int:
    """How many of `found`, from the first, fit a page of at most `max_bytes` bytes
    serialized (each request counted with its field's tag and length, up to 6 bytes);
    at least one, so a page always moves on."""
    total = 0
    for n, x in enumerate(found):
        size = len(x.wire) if x.wire else listed_pb(x.request).ByteSize() if x.request else 0
        total += size + 6
        if total > max_bytes:
            return max(n, 1)
    return len(found)


def page_pb(found: Sequence[Listed], next_token: str) -> requests_pb2.ListCreditRequestsResponse:
    """A page of listed requests (without timelines or the standing's history)."""
    page = requests_pb2.ListCreditRequestsResponse(next_page_token=next_token)
    for x in found:
        if x.wire:
            one = page.requests.add()
            one.MergeFromString(x.wire)
            one.override_status = x.override_status  # changes without a new wire form
        else:
            assert x.request is not None, x.request_id
            page.requests.append(listed_pb(x.request))
    return page
