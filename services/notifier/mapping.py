"""The one module between the wire (Notification, RequestEvent, directory User) and
the notifier's domain types, and between `Message` and the JSON a delivery row keeps.

Bad input raises ValueError naming every bad field, so the consumer can log the
record and go on with the next.
"""

from __future__ import annotations

import json
from typing import Any

from quartermaster.v1 import notifications_pb2, policy_pb2, requests_pb2
from quartermaster.wire import from_timestamp
from services.notifier.audience import Intent, Kind, Person, RequestFact, Share
from services.notifier.channel import Message

_KINDS = {
    notifications_pb2.NOTIFICATION_KIND_THRESHOLD_CROSSED: Kind.THRESHOLD,
    notifications_pb2.NOTIFICATION_KIND_ANOMALY: Kind.ANOMALY,
}


def intent_of(note: notifications_pb2.Notification) -> Intent:
    """A Notification as an Intent. Request kinds come as RequestEvents instead, so
    an intent of those kinds is refused here (ValueError), as is a missing field."""
    problems = []
    if not note.dedupe_key:
        problems.append("dedupe_key: empty")
    if not note.recipient_user_id:
        problems.append("recipient_user_id: empty")
    kind = _KINDS.get(note.kind)
    if kind is None:
        problems.append(f"kind: {notifications_pb2.NotificationKind.Name(note.kind)} not handled"
                        " (request notices are read from qm.requests.v1)")  # fmt: skip
    if not note.HasField("created_at"):
        problems.append("created_at: missing")
    if problems or kind is None:
        raise ValueError("; ".join(problems))
    return Intent(
        dedupe_key=note.dedupe_key, kind=kind, recipient_user_id=note.recipient_user_id,
        subject=note.subject or note.body[:80], body=note.body, data=dict(note.data),
        created_at=from_timestamp(note.created_at),
    )  # fmt: skip


def _shares(shares: Any) -> tuple[Share, ...]:
    return tuple(Share(s.name, s.micros) for s in shares)


def fact_of(event: requests_pb2.RequestEvent) -> RequestFact:
    """A RequestEvent as a RequestFact; ValueError names what is missing."""
    req = event.request
    problems = [f"{name}: empty" for name, value in (
        ("event_id", event.event_id), ("type", event.type),
        ("request.request_id", req.request_id),
        ("request.requester_user_id", req.requester_user_id),
    ) if not value]  # fmt: skip
    if not event.HasField("occurred_at"):
        problems.append("occurred_at: missing")
    if problems:
        raise ValueError("; ".join(problems))
    st = req.standing
    return RequestFact(
        event_id=event.event_id, type=event.type, request_id=req.request_id,
        version=event.version or req.version, requester=req.requester_user_id,
        amount_micros=req.amount_micros, granted_micros=req.granted_micros or req.amount_micros,
        duration_seconds=req.granted_duration_seconds or req.duration_seconds,
        justification=req.justification, actor=event.actor_user_id or req.approver_user_id,
        reason=event.note or req.decision_reason,
        approvers=tuple(event.current_approver_user_ids),
        occurred_at=from_timestamp(event.occurred_at), used_micros=st.used_micros,
        limit_micros=st.limit_micros, period=st.period, by_product=_shares(st.by_product),
        by_model=_shares(st.by_model),
        runs_out_at=from_timestamp(st.runs_out_at) if st.HasField("runs_out_at") else None,
    )  # fmt: skip


def person_of(user: policy_pb2.User) -> Person:
    """A directory User as a Person."""
    return Person(user.user_id, user.email, user.display_name, user.slack_user_id,
                  user.manager_id)  # fmt: skip


def message_json(message: Message) -> str:
    """`message` as the JSON a delivery row keeps."""
    return json.dumps({
        "dedupe_key": message.dedupe_key, "kind": message.kind, "subject": message.subject,
        "text": message.text, "html": message.html, "blocks": list(message.blocks),
        "payload": dict(message.payload), "request_id": message.request_id,
        "edit": message.edit,
    })  # fmt: skip


def message_of(raw: str | dict[str, Any]) -> Message:
    """A Message from a delivery row's JSON (text or decoded)."""
    d = json.loads(raw) if isinstance(raw, str) else raw
    return Message(
        dedupe_key=d["dedupe_key"], kind=d["kind"], subject=d["subject"], text=d["text"],
        html=d.get("html", ""), blocks=tuple(d.get("blocks", ())),
        payload=d.get("payload", {}), request_id=d.get("request_id", ""),
        edit=bool(d.get("edit", False)),
    )  # fmt: skip
