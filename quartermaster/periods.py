"""Budget periods on calendar boundaries in the workspace's time zone."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from zoneinfo import ZoneInfo


class PeriodKind(StrEnum):
    DAY = "day"
    WEEK = "week"
    MONTH = "month"


@dataclass(frozen=True)
class Period:
    kind: PeriodKind
    # "2026-11-22" (day), "2026-W47" (ISO week), "2026-11" (month)
    key: str
    start: datetime  # aware, UTC
    end: datetime  # aware, UTC, exclusive

    def contains(self, at: datetime) -> bool:
        return self.start <= at < self.end


def period_of(kind: PeriodKind, at: datetime, tz: ZoneInfo) -> Period:
    """The calendar period of `kind` that contains instant `at` (aware) in zone `tz`.

    Boundaries are local midnights; across a DST change a day is 23 or 25 hours long.
    """
    if at.tzinfo is None:
        raise ValueError("period_of needs an aware datetime")
    local = at.astimezone(tz)
    day = local.date()
    if kind is PeriodKind.DAY:
        first, nxt, key = day, day + timedelta(days=1), day.isoformat()
    elif kind is PeriodKind.WEEK:
        first = day - timedelta(days=day.weekday())
        nxt = first + timedelta(days=7)
        iso = first.isocalendar()
        key = f"{iso.year}-W{iso.week:02d}"
    else:
        first = day.replace(day=1)
        nxt = (first + timedelta(days=32)).replace(day=1)
        key = f"{first.year:04d}-{first.month:02d}"
    start = datetime(first.year, first.month, first.day, tzinfo=tz).astimezone(UTC)
    end = datetime(nxt.year, nxt.month, nxt.day, tzinfo=tz).astimezone(UTC)
    return Period(kind, key, start, end)


# Metering's rollups are kept per UTC quarter hour. Every zone's offset (since 2000) is
# a multiple of 15 minutes (+05:30, +05:45, +09:30 included), so a quarter hour is one
# in every zone, and every local hour, day and month is a union of them.
QUARTER_HOUR = timedelta(minutes=15)
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def quarter_floor(at: datetime) -> datetime:
    """The quarter hour (UTC) that `at` (aware) falls in: `at` itself when on one."""
    return (at - (at - _EPOCH) % QUARTER_HOUR).astimezone(UTC)


def quarter_ceil(at: datetime) -> datetime:
    """The first quarter hour (UTC) at or after `at` (aware)."""
    floor = quarter_floor(at)
    return floor if floor == at else floor + QUARTER_HOUR
