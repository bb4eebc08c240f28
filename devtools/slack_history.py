"""conversations.history's paging as Slack does it, for the Slack stand-in
(devtools/slack_standin.py): newest first, between `oldest` and `latest` (Unix seconds
as Slack's ts strings, "1790000000.000100"; each end excluded unless `inclusive`), at
most `limit` (default 100, at most 999) a page, and an opaque `next_cursor` (base64 of
"next_ts:<ts>", as Slack's look) naming where the next page starts."""

from __future__ import annotations

import base64
import time
from collections.abc import Mapping
from decimal import Decimal, InvalidOperation
from typing import Any, Protocol, TypeVar


class _Message(Protocol):
    @property
    def ts(self) -> str: ...


M = TypeVar("M", bound=_Message)


def next_cursor(ts: str) -> str:
    """The cursor of a page starting at `ts`."""
    return base64.b64encode(f"next_ts:{ts}".encode()).decode()


def _ts(value: object, default: str, error: str) -> Decimal:
    try:
        ts = Decimal(str(value or default))
    except InvalidOperation:
        raise ValueError(error) from None
    if not ts.is_finite():
        raise ValueError(error)
    return ts


def history_page(messages: list[M], args: Mapping[str, Any]) -> tuple[list[M], str | None]:
    """One page of conversations.history over `messages` (newest first) and the ts
    the next page starts at (None: this is the last); `args` are the call's
    (oldest, latest, inclusive, limit, cursor). ValueError naming Slack's error
    (invalid_ts_oldest, invalid_ts_latest, invalid_limit, invalid_cursor)."""
    inclusive = str(args.get("inclusive", "")).lower() in ("1", "true")
    oldest = _ts(args.get("oldest"), "0", "invalid_ts_oldest")
    latest = _ts(args.get("latest"), f"{time.time() + 1:.6f}", "invalid_ts_latest")
    try:
        limit = min(max(int(args.get("limit") or 100), 1), 999)
    except ValueError:
        raise ValueError("invalid_limit") from None
    start = latest
    if args.get("cursor"):
        try:
            text = base64.b64decode(str(args["cursor"]), validate=True).decode()
            start = _ts(text.removeprefix("next_ts:"), "", "invalid_cursor")
        except ValueError:
            raise ValueError("invalid_cursor") from None
        inclusive_start = True
    else:
        inclusive_start = inclusive
    inside = [
        m for m in sorted(messages, key=lambda m: Decimal(m.ts), reverse=True)
        if (oldest <= Decimal(m.ts) if inclusive else oldest < Decimal(m.ts))
        and (Decimal(m.ts) <= start if inclusive_start else Decimal(m.ts) < start)
    ]  # fmt: skip
    return inside[:limit], inside[limit].ts if len(inside) > limit else None
