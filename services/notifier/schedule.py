"""When a delivery is tried again, and what a day's digest says. Pure: no I/O.

Retries: 5 s after the first failure, doubling, at most an hour apart; a receiver's
own `Retry-After` (Slack's 429) wins when it says longer, but never more than 10 h
(the webhooks' bound, services.notifier.retries.bounded_retry_after). After
`max_attempts` attempts a delivery that only ever failed transiently is failed for
good (a person may replay it).
"""

from __future__ import annotations

import html
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from zoneinfo import ZoneInfo

from services.notifier.audience import Kind
from services.notifier.blocks import MAX_BLOCKS, header, sections
from services.notifier.channel import Message
from services.notifier.retries import bounded_retry_after

FIRST_DELAY_S = 5.0
MAX_DELAY_S = 3600.0


def retry_delay(attempts: int, retry_after_s: float | None = None) -> float:
    """Seconds until the next attempt after `attempts` (>= 1) failed ones: the doubling
    step, or the receiver's `retry_after_s` when longer, at most MAX_RETRY_AFTER (10 h;
    NaN is ignored, infinity is 10 h). ValueError for `attempts` < 1."""
    if attempts < 1:
        raise ValueError("attempts must be >= 1")
    grown = min(FIRST_DELAY_S * 2.0 ** min(attempts - 1, 30), MAX_DELAY_S)
    return max(grown, bounded_retry_after(retry_after_s) or 0.0)


def gives_up(attempts: int, max_attempts: int) -> bool:
    """Whether a delivery that failed transiently `attempts` times is failed for good."""
    return attempts >= max_attempts


@dataclass(frozen=True)
class Queued:
    """One fact waiting for a person's digest (`line`: its one-line summary)."""

    user_id: str
    dedupe_key: str
    kind: str
    subject: str
    line: str


def digest_key(user_id: str, day: date) -> str:
    """The dedupe key of `user_id`'s digest of `day`: one digest a person a day."""
    return f"digest:{user_id}:{day.isoformat()}"


def digests(waiting: Iterable[Queued], day: date) -> dict[str, Message]:
    """user id → their digest of `day`: the facts grouped by kind, anomalies first."""
    by_user: dict[str, list[Queued]] = defaultdict(list)
    for q in waiting:
        by_user[q.user_id].append(q)
    order = {Kind.ANOMALY.value: 0, Kind.THRESHOLD.value: 1}
    out = {}
    for user, items in by_user.items():
        items.sort(key=lambda q: (order.get(q.kind, 2), q.subject))
        subject = f"Your team's AI spend, {day.isoformat()}: {len(items)} notice(s)"
        lines = [f"• {q.subject}: {q.line}" for q in items]
        blocks = [header(subject), *sections(lines, MAX_BLOCKS - 1)]
        payload: dict[str, object] = {
            "type": Kind.DIGEST.value,
            "recipient_user_id": user,
            "day": day.isoformat(),
            "items": [
                {"dedupe_key": q.dedupe_key, "kind": q.kind, "subject": q.subject, "line": q.line}
                for q in items
            ],
        }
        key = digest_key(user, day)
        out[user] = Message(
            dedupe_key=key, kind=Kind.DIGEST.value, subject=subject,
            text="\n".join([subject, *lines]), blocks=tuple(blocks), payload=payload,
            html="<ul>" + "".join(f"<li>{html.escape(x[2:])}</li>" for x in lines) + "</ul>",
        )  # fmt: skip
    return out


def digest_cut(now: datetime, hour: int, tz: ZoneInfo) -> datetime:
    """The latest digest instant at or before `now`: `hour` o'clock in `tz` today,
    else yesterday (aware)."""
    local = now.astimezone(tz)
    cut = local.replace(hour=hour, minute=0, second=0, microsecond=0)
    return cut if cut <= local else cut - timedelta(days=1)
