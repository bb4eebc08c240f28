"""Rendering: one `Message` per addressee, carrying the numbers that let a person act
(used / limit, what drove it, when it runs out at this rate, how to ask for more), in
every channel's form at once: plain text, Slack Block Kit, e-mail HTML, webhook JSON.

Approve / Deny buttons (action_id "approve" / "deny") carry the request and the
version it was shown at, as JSON in the button's value:
`{"request_id": "r-1", "version": 3}`, so a click on a stale copy is refused by the
requests service rather than deciding something the approver did not see.

Pure: no I/O here.
"""

from __future__ import annotations

import html
import json
from dataclasses import dataclass
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

from quartermaster.money import credits
from quartermaster.periods import PeriodKind, period_of
from services.notifier.audience import (
    ASKING,
    Addressee,
    Intent,
    Kind,
    RequestFact,
    Role,
    Share,
)
from services.notifier.blocks import MAX_BLOCKS, Block, block_id, header, section, sections
from services.notifier.channel import Message

UTC_ZONE = ZoneInfo("UTC")


@dataclass(frozen=True)
class Style:
    """What every message shares: where to ask for more (a URL, or empty: the call to
    make is named) and the workspace's time zone for instants shown."""

    ask_url: str = ""
    tz: ZoneInfo = UTC_ZONE

    def ask(self) -> str:
        if self.ask_url:
            return f"Ask for more credits: {self.ask_url}"
        return (
            "Ask for more credits with the requests CLI "
            "(python -m services.requests.cli create CREDITS --why ...)."
        )

    def when(self, at: datetime) -> str:
        return at.astimezone(self.tz).strftime("%Y-%m-%d %H:%M %Z")


def _int(data: dict[str, str], key: str) -> int:
    try:
        return int(data.get(key, "0"))
    except ValueError:
        return 0


def _kind_of_key(period_key: str) -> PeriodKind | None:
    if "-W" in period_key:
        return PeriodKind.WEEK
    parts = period_key.split("-")
    return {2: PeriodKind.MONTH, 3: PeriodKind.DAY}.get(len(parts))


def period_window(period_key: str, at: datetime, tz: ZoneInfo) -> tuple[datetime, datetime] | None:
    """[start, end) of the period `period_key` ("2026-11", "2026-W48", "2026-11-30", in
    time zone `tz`) when it is the one `at` falls in; None otherwise (an unknown key,
    or a period that is over)."""
    kind = _kind_of_key(period_key)
    if kind is None:
        return None
    period = period_of(kind, at, tz)
    return (period.start, period.end) if period.key == period_key else None


def runs_out_at(
    used: int, limit: int, period_key: str, at: datetime, tz: ZoneInfo
) -> datetime | None:
    """When spend reaches `limit` at the period's average rate so far (micros,
    `at` aware); None when it already has, when nothing was spent, or when it won't
    before the period ends."""
    window = period_window(period_key, at, tz)
    if window is None or used <= 0 or used >= limit:
        return None
    start, end = window
    elapsed = (at - start).total_seconds()
    if elapsed <= 0:
        return None
    out = at + timedelta(seconds=(limit - used) * elapsed / used)
    return out if out < end else None


def _drivers(data: dict[str, str]) -> str:
    parts = []
    for key, label in (("top_product", "product"), ("top_model", "model")):
        if data.get(key):
            micros = _int(data, f"{key}_micros")
            parts.append(f"{label} {data[key]}" + (f" ({credits(micros)} credits)"
                                                   if micros else ""))  # fmt: skip
    return f"Most of it: {', '.join(parts)}." if parts else ""


def _message(
    key: str, kind: Kind, subject: str, lines: list[str], blocks: list[Block],
    payload: dict[str, object], request_id: str = "", edit: bool = False,
) -> Message:  # fmt: skip
    text = "\n".join(line for line in lines if line)
    body = "".join(f"<p>{html.escape(line)}</p>" for line in lines if line)
    return Message(
        dedupe_key=key, kind=kind.value, subject=subject, text=f"{subject}\n{text}",
        html=f"<h3>{html.escape(subject)}</h3>{body}", blocks=tuple(blocks),
        payload=payload, request_id=request_id, edit=edit,
    )  # fmt: skip


def render_intent(intent: Intent, to: Addressee, about: str, style: Style) -> Message:
    """The message of a threshold or anomaly intent for `to`; `about` is the display
    name of the person (or pool) it concerns, for a manager's copy."""
    d = intent.data
    lines: list[str] = []
    if intent.kind is Kind.THRESHOLD:
        used, limit = _int(d, "used_micros"), _int(d, "limit_micros")
        period = d.get("period_key", "")
        lines.append(f"Used {credits(used)} of {credits(limit)} credits in {period} "
                     f"({d.get('percent', '?')} %).")  # fmt: skip
        out = runs_out_at(used, limit, period, intent.created_at, style.tz)
        if out is not None:
            lines.append(f"At this rate it runs out {style.when(out)}.")
    else:
        lines.append(intent.body)
    lines.append(_drivers(d))
    subject = intent.subject
    if to.role is Role.MANAGER and to.user_id != intent.recipient_user_id:
        subject = f"{about}: {subject}"
    if to.role is Role.SELF and intent.kind is Kind.THRESHOLD:
        lines.append(style.ask())
    blocks = [header(subject), *sections(lines, MAX_BLOCKS - 1)]
    payload: dict[str, object] = {
        "type": intent.kind.value, "dedupe_key": intent.dedupe_key,
        "recipient_user_id": to.user_id, "role": to.role.value, "subject": subject,
        "data": dict(d), "created_at": intent.created_at.isoformat(),
    }  # fmt: skip
    return _message(intent.dedupe_key, intent.kind, subject, lines, blocks, payload)


def _shares(label: str, shares: tuple[Share, ...]) -> str:
    top = sorted(shares, key=lambda s: -s.micros)[:3]
    return f"{label}: " + ", ".join(f"{s.name} {credits(s.micros)}" for s in top) if top else ""


def duration(seconds: int) -> str:
    """A grant's length as a person says it: "2 minutes", "1 hour", "1.5 hours", "3 days"."""
    units = (("day", 86_400), ("hour", 3_600))
    unit, size = next(((u, n) for u, n in units if seconds >= n), ("minute", 60))
    amount = round(seconds / size, 1)
    return f"{amount:g} {unit}" + ("" if amount == 1 else "s")


def button_value(request_id: str, version: int) -> str:
    """The JSON a button carries (see the module docstring)."""
    return json.dumps({"request_id": request_id, "version": version})


def _standing(fact: RequestFact, style: Style) -> list[str]:
    lines = []
    if fact.limit_micros:
        lines.append(f"Used {credits(fact.used_micros)} of {credits(fact.limit_micros)} "
                     f"credits this {fact.period or 'period'}.")  # fmt: skip
    lines += [_shares("By product", fact.by_product), _shares("By model", fact.by_model)]
    if fact.limit_micros and fact.used_micros >= fact.limit_micros:
        lines.append("The budget has run out.")
    elif fact.runs_out_at is not None:
        lines.append(f"At this rate it runs out {style.when(fact.runs_out_at)}.")
    return lines


def _request_payload(fact: RequestFact, to: str, role: str) -> dict[str, object]:
    return {
        "type": fact.type, "request_id": fact.request_id, "version": fact.version,
        "requester_user_id": fact.requester, "amount_micros": fact.amount_micros,
        "granted_micros": fact.granted_micros, "actor_user_id": fact.actor,
        "reason": fact.reason, "recipient_user_id": to, "role": role,
        "occurred_at": fact.occurred_at.isoformat(),
    }  # fmt: skip


def render_ask(fact: RequestFact, to: Addressee, requester: str, style: Style) -> Message:
    """An approver's message for a new, reminded or escalated request, with buttons."""
    verb = {"request.reminded": "Reminder: ", "request.escalated": "Escalated: "}.get(fact.type, "")
    subject = f"{verb}{requester} asks for {credits(fact.amount_micros)} credits"
    lines = [f"For {duration(fact.duration_seconds)}: {fact.justification}",
             *_standing(fact, style)]  # fmt: skip
    value = button_value(fact.request_id, fact.version)
    buttons: Block = {"type": "actions", "block_id": block_id("decide", fact.request_id),
                      "elements": [
        {"type": "button", "action_id": "approve", "style": "primary", "value": value,
         "text": {"type": "plain_text", "text": "Approve"}},
        {"type": "button", "action_id": "deny", "style": "danger", "value": value,
         "text": {"type": "plain_text", "text": "Deny"}},
    ]}  # fmt: skip
    blocks = [section(subject, bold=True), *sections(lines, MAX_BLOCKS - 2), buttons]
    payload = _request_payload(fact, to.user_id, to.role.value)
    return _message(fact.event_id, Kind.REQUEST_CREATED, subject, lines, blocks, payload,
                    request_id=fact.request_id)  # fmt: skip


def _outcome(fact: RequestFact, actor: str, style: Style) -> str:
    when = style.when(fact.occurred_at)
    word = fact.type.removeprefix("request.")
    if fact.type == "request.approved":
        return f"Approved by {actor} at {when}: {credits(fact.granted_micros)} credits."
    if fact.type == "request.expired":
        return f"Expired at {when}: nobody decided in time."
    why = f" ({fact.reason})" if fact.reason else ""
    return f"{word.capitalize()} by {actor} at {when}{why}."


def render_decided(fact: RequestFact, actor: str, style: Style) -> Message:
    """The requester's message after a decision or a grant's end."""
    outcome = _outcome(fact, actor, style)
    word = fact.type.removeprefix("request.")
    subject = f"Your request for {credits(fact.amount_micros)} credits: {word}"
    lines = [outcome]
    if fact.type in ("request.denied", "request.expired"):
        lines.append(style.ask())
    blocks = [section(subject, bold=True), section(outcome)]
    payload = _request_payload(fact, fact.requester, Role.REQUESTER.value)
    return _message(fact.event_id, Kind.REQUEST_DECIDED, subject, lines, blocks, payload)


def render_edit(fact: RequestFact, requester: str, actor: str, style: Style) -> Message:
    """What every approver's copy becomes after a decision: who decided, when; no buttons."""
    subject = f"{requester}'s request for {credits(fact.amount_micros)} credits"
    outcome = _outcome(fact, actor, style)
    blocks = [section(subject, bold=True), section(outcome)]
    payload = _request_payload(fact, "", Role.APPROVER.value)
    return _message(f"{fact.event_id}:edit", Kind.REQUEST_DECIDED, subject, [outcome], blocks,
                    payload, request_id=fact.request_id, edit=True)  # fmt: skip


def render_event(fact: RequestFact, requester: str, actor: str, style: Style) -> Message:
    """A request event as a webhook posts it (every event type; `payload` carries the
    facts, no recipient: an endpoint hears of every request)."""
    word = fact.type.removeprefix("request.")
    subject = f"{requester}'s request for {credits(fact.amount_micros)} credits: {word}"
    line = fact.justification if fact.type in ASKING else _outcome(fact, actor, style)
    payload = _request_payload(fact, "", "")
    return _message(fact.event_id, Kind.REQUEST_EVENT, subject, [line], [], payload)
