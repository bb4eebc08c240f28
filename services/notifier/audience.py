"""Who hears what: the people a notification intent or a request event goes to, and
in which role (the issue's "who hears what").

- a person hears of their own threshold crossings and anomalies (`SELF`);
- managers and group admins hear of pools (policy addresses pool crossings to the
  pool's admins) and of their people's anomalies (`MANAGER`: the person's manager);
- the approvers of the current step hear of a new, reminded or escalated request
  (`APPROVER`, with Approve/Deny buttons);
- the requester hears of every decision (`REQUESTER`), never of reminders;
- after a decision every approver's copy is edited to show it (`updates`).

Pure: the directory's answers come in as `Person` values; no I/O here.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum


class Role(StrEnum):
    SELF = "self"
    MANAGER = "manager"
    APPROVER = "approver"
    REQUESTER = "requester"


class Kind(StrEnum):
    """What a message is about (`Message.kind`)."""

    THRESHOLD = "threshold_crossed"
    ANOMALY = "anomaly"
    REQUEST_CREATED = "request.created"
    REQUEST_DECIDED = "request.decided"
    # Any request event, as a webhook endpoint hears of it (its payload's type says which).
    REQUEST_EVENT = "request.event"
    DIGEST = "digest"


@dataclass(frozen=True)
class Person:
    """A directory user: `slack_user_id` and `email` may be empty (unknown)."""

    user_id: str
    email: str = ""
    display_name: str = ""
    slack_user_id: str = ""
    manager_id: str = ""

    @property
    def name(self) -> str:
        return self.display_name or self.user_id


@dataclass(frozen=True)
class Intent:
    """A `Notification` from qm.notifications.v1 in domain terms. `data` holds the
    kind's facts as strings (used_micros, limit_micros, percent, period_key, subject,
    rate_per_hour_micros, top_product, top_model, ...); `created_at` is aware UTC."""

    dedupe_key: str
    kind: Kind
    recipient_user_id: str
    subject: str
    body: str
    data: dict[str, str]
    created_at: datetime


@dataclass(frozen=True)
class Share:
    """One share of spend (by product or model), micro-credits."""

    name: str
    micros: int


@dataclass(frozen=True)
class RequestFact:
    """A `RequestEvent` from qm.requests.v1 in domain terms. Money in micro-credits,
    instants aware UTC; `approvers` are the current step's remaining approvers."""

    event_id: str
    type: str
    request_id: str
    version: int
    requester: str
    amount_micros: int
    granted_micros: int
    duration_seconds: int
    justification: str
    actor: str
    reason: str
    approvers: tuple[str, ...]
    occurred_at: datetime
    used_micros: int = 0
    limit_micros: int = 0
    period: str = ""
    by_product: tuple[Share, ...] = ()
    by_model: tuple[Share, ...] = ()
    runs_out_at: datetime | None = None


@dataclass(frozen=True)
class Addressee:
    user_id: str
    role: Role


# Events that ask the current approvers to decide.
ASKING = frozenset({"request.created", "request.reminded", "request.escalated"})
# Events that end the asking: the requester is told (except on their own cancel) and
# every approver's copy is edited.
DECIDED = frozenset({"request.approved", "request.denied", "request.expired", "request.cancelled"})
# Later changes to a grant the requester hears of.
GRANT_CHANGES = frozenset({"request.revoked", "request.ended"})


def intent_audience(intent: Intent, person: Person | None) -> list[Addressee]:
    """The addressees of an intent. `person` is the directory's entry for its
    recipient (None when unknown: they are still told, by what their preference or
    the workspace default says). A pool crossing is addressed by policy to each
    admin, so its recipient hears it as MANAGER; a person's anomaly is told to them
    and to their manager."""
    subject = intent.data.get("subject", "")
    own = not subject or subject == f"user:{intent.recipient_user_id}"
    out = [Addressee(intent.recipient_user_id, Role.SELF if own else Role.MANAGER)]
    manager = person.manager_id if person is not None else ""
    if intent.kind is Kind.ANOMALY and manager and manager != intent.recipient_user_id:
        out.append(Addressee(manager, Role.MANAGER))
    return out


def request_audience(fact: RequestFact) -> list[Addressee]:
    """Who gets a new message for a request event (copies to edit: `to_update`)."""
    if fact.type in ASKING:
        return [Addressee(a, Role.APPROVER) for a in dict.fromkeys(fact.approvers)
                if a != fact.requester]  # fmt: skip
    if fact.type in DECIDED and not (
        fact.type == "request.cancelled" and fact.actor == fact.requester
    ):
        return [Addressee(fact.requester, Role.REQUESTER)]
    if fact.type in GRANT_CHANGES:
        return [Addressee(fact.requester, Role.REQUESTER)]
    return []


def to_update(fact: RequestFact) -> bool:
    """Whether the approvers' Slack copies of the request are edited after `fact`."""
    return fact.type in DECIDED
