"""How the metering CLI reads `--from` and `--to` (`usage`, `top`).

A time with an offset (`2026-12-01T08:30:00+05:30`, `...Z`) is that instant. A bare
date (`2026-12-01`) or a time without an offset (`2026-12-01T08:30`) is that wall time
in the workspace's time zone, as budgets and the Cost API's day and month buckets are,
and so are the words `today`, `yesterday`, `tomorrow` (their midnight), `this-month`,
`last-month`, `next-month` (their first midnight), each optionally moved by whole
days (`today-30d`, `this-month+14d`). The workspace's zone is the Cost API's (its
answers name it); the CLI reads with its own QM_WORKSPACE_TIMEZONE first and asks
again in the server's when the two differ (`cli.py`).

Either end must be on a quarter hour: the rollups are 15-minute buckets. Every local
midnight is one, so dates and words always are; `off_quarter` says what a time that is
not should be instead, in the terms it was written in.
"""

from __future__ import annotations

import argparse
import re
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from zoneinfo import ZoneInfo

from quartermaster.periods import QUARTER_HOUR, quarter_floor

WORDS = ("today", "yesterday", "tomorrow", "this-month", "last-month", "next-month")
_WORD = re.compile(rf"({'|'.join(WORDS)})(?:([+-])(\d{{1,4}})d)?")
# digits of a fraction of a second: past the sixth, datetime drops them silently
_FRACTION = re.compile(r"T[\d:]+[.,](\d+)")


@dataclass(frozen=True)
class Moment:
    """A `--from` or `--to` as written: an instant (`at`, aware), a wall time in the
    workspace's zone (`local`, naive), or a word moved by `days`. `lost`: it had
    digits past the microsecond that are not all zero (so it is off a quarter hour)."""

    text: str
    at: datetime | None = None
    local: datetime | None = None
    word: str = ""
    days: int = 0
    lost: bool = False

    @property
    def zoned(self) -> bool:
        """Read in the workspace's time zone (a bare date, a time without offset, a word)."""
        return self.at is None

    def instant(self, tz: ZoneInfo, now: datetime) -> datetime:
        """The instant meant, with the workspace in `tz` and the clock at `now`."""
        if self.at is not None:
            return self.at
        if self.local is not None:
            wall = self.local
        else:
            wall = datetime.combine(
                _word_day(self.word, now.astimezone(tz).date()), datetime.min.time()
            )
            wall += timedelta(days=self.days)
        # as quartermaster.periods makes a period's start from its local midnight
        return wall.replace(tzinfo=tz).astimezone(UTC)

    def off_quarter(self, option: str) -> str | None:
        """Why this may not bound a range, with the two nearest quarter hours written
        as it was (with its offset, or as a wall time in the workspace's zone); None
        when it is on one."""
        if self.word:
            return None
        if self.at is not None:
            floor = quarter_floor(self.at).astimezone(self.at.tzinfo)
            if floor == self.at and not self.lost:
                return None
            low, high, where = floor.isoformat(), (floor + QUARTER_HOUR).isoformat(), ""
        else:
            assert self.local is not None
            v = self.local
            floor = v.replace(minute=v.minute - v.minute % 15, second=0, microsecond=0)
            if floor == v and not self.lost:
                return None
            low, high = floor.isoformat(), (floor + QUARTER_HOUR).isoformat()
            where = " (in the workspace's time zone)"
        return (
            f"{option} {self.text} is not on a quarter hour (usage is kept in 15-minute "
            f"buckets: a range starts and ends on :00, :15, :30 or :45): use {low} or "
            f"{high}{where}"
        )


def _word_day(word: str, today: date) -> date:
    if word == "yesterday":
        return today - timedelta(days=1)
    if word == "tomorrow":
        return today + timedelta(days=1)
    first = today.replace(day=1)
    if word == "this-month":
        return first
    if word == "last-month":
        return (first - timedelta(days=1)).replace(day=1)
    if word == "next-month":
        return (first + timedelta(days=32)).replace(day=1)
    return today


def moment(text: str) -> Moment:
    """`text` read as a Moment (the argparse type of --from and --to)."""
    word = _WORD.fullmatch(text.strip())
    if word:
        days = int(word.group(3) or 0) * (-1 if word.group(2) == "-" else 1)
        return Moment(text, word=word.group(1), days=days)
    try:
        value = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"not an ISO-8601 date or time, nor one of {', '.join(WORDS)} (+/-Nd): {text!r}"
        ) from None
    fraction = _FRACTION.search(text)
    lost = bool(fraction and fraction.group(1)[6:].strip("0"))
    if value.tzinfo is None:
        return Moment(text, local=value, lost=lost)
    return Moment(text, at=value, lost=lost)
