from __future__ import annotations

from datetime import UTC, datetime
from zoneinfo import ZoneInfo

import pytest

from quartermaster.periods import PeriodKind, period_of

UTC_ZONE = ZoneInfo("UTC")


def test_month_in_utc() -> None:
    p = period_of(PeriodKind.MONTH, datetime(2026, 11, 22, 10, tzinfo=UTC), UTC_ZONE)
    assert p.key == "2026-11"
    assert p.start == datetime(2026, 11, 1, tzinfo=UTC)
    assert p.end == datetime(2026, 12, 1, tzinfo=UTC)


def test_december_rolls_into_next_year() -> None:
    p = period_of(PeriodKind.MONTH, datetime(2026, 12, 31, 23, 59, tzinfo=UTC), UTC_ZONE)
    assert (p.key, p.end) == ("2026-12", datetime(2027, 1, 1, tzinfo=UTC))


def test_month_boundary_follows_the_workspace_time_zone() -> None:
    tokyo = ZoneInfo("Asia/Tokyo")  # UTC+9: Nov 30 16:00 UTC is Dec 1 01:00 in Tokyo
    p = period_of(PeriodKind.MONTH, datetime(2026, 11, 30, 16, tzinfo=UTC), tokyo)
    assert p.key == "2026-12"
    assert p.start == datetime(2026, 11, 30, 15, tzinfo=UTC)
    assert p.contains(datetime(2026, 11, 30, 15, tzinfo=UTC))
    assert not p.contains(datetime(2026, 11, 30, 14, 59, 59, tzinfo=UTC))


def test_day_across_a_dst_change_is_23_hours() -> None:
    berlin = ZoneInfo("Europe/Berlin")  # clocks go forward on 2026-03-29
    p = period_of(PeriodKind.DAY, datetime(2026, 3, 29, 12, tzinfo=UTC), berlin)
    assert p.key == "2026-03-29"
    assert (p.end - p.start).total_seconds() == 23 * 3600


def test_week_starts_on_monday_with_iso_key() -> None:
    p = period_of(PeriodKind.WEEK, datetime(2026, 11, 22, 12, tzinfo=UTC), UTC_ZONE)  # a Sunday
    assert p.key == "2026-W47"
    assert p.start == datetime(2026, 11, 16, tzinfo=UTC)


def test_naive_datetimes_are_refused() -> None:
    with pytest.raises(ValueError, match="aware"):
        period_of(PeriodKind.DAY, datetime(2026, 1, 1), UTC_ZONE)
