"""The retry schedule and Retry-After parsing (pure)."""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta

import pytest

from services.notifier.retries import (
    MAX_ATTEMPTS,
    MAX_RETRY_AFTER,
    STEPS,
    bounded_retry_after,
    next_delay,
    parse_retry_after,
)
from services.notifier.schedule import retry_delay

NOW = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)


def test_the_schedule_grows_over_hours_then_gives_up() -> None:
    delays = [next_delay(n) for n in range(1, MAX_ATTEMPTS + 1)]
    assert delays == [5.0, 300.0, 1_800.0, 7_200.0, 18_000.0, 36_000.0, 36_000.0, None]
    assert sum(STEPS) / 3600 == pytest.approx(27.6, abs=0.1)


def test_retry_after_replaces_the_step_within_bounds_and_still_counts() -> None:
    assert next_delay(1, retry_after=120.0) == 120.0
    assert next_delay(1, retry_after=0.0) == 1.0
    assert next_delay(1, retry_after=10**9) == max(STEPS)
    assert next_delay(MAX_ATTEMPTS, retry_after=5.0) is None


def test_attempts_count_from_one() -> None:
    with pytest.raises(ValueError, match="failed_attempts must be at least 1"):
        next_delay(0)


def test_retry_after_in_seconds_or_as_an_http_date() -> None:
    assert parse_retry_after("120", NOW) == 120.0
    later = NOW + timedelta(minutes=3)
    assert parse_retry_after(later.strftime("%a, %d %b %Y %H:%M:%S GMT"), NOW) == 180.0
    assert parse_retry_after("Mon, 30 Nov 2026 11:00:00 GMT", NOW) == 0.0
    assert parse_retry_after("soon", NOW) is None
    assert parse_retry_after("", NOW) is None
    assert parse_retry_after(None, NOW) is None


def test_every_schedule_bounds_a_receivers_retry_after_to_10_hours() -> None:
    # Slack's 429s go through the core schedule (breaker #9: 1e12 s was believed)
    assert retry_delay(1, 1e12) == MAX_RETRY_AFTER == 36_000.0
    assert retry_delay(1, math.inf) == MAX_RETRY_AFTER
    assert retry_delay(1, 7_200.0) == 7_200.0  # longer than the step: believed
    assert retry_delay(1, math.nan) == retry_delay(1) == 5.0  # unreadable: the step
    assert retry_delay(1, -5.0) == 5.0
    assert next_delay(1, retry_after=math.inf) == max(STEPS)
    assert next_delay(2, retry_after=math.nan) == 300.0
    assert bounded_retry_after(None) is None
    assert bounded_retry_after(0.2) == 1.0
    assert parse_retry_after("١٢٠", NOW) is None  # digits, but not ASCII ones
    assert bounded_retry_after(parse_retry_after("9" * 400, NOW)) == MAX_RETRY_AFTER
