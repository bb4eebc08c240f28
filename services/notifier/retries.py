"""When to try a delivery again: the growing schedule over hours, and `Retry-After`.

The delivery loop asks `next_delay(failed_attempts, retry_after)` after each attempt
that came to `retry` (services.notifier.channel.Outcome): a number of seconds to wait
before the next attempt, or None when the schedule is spent and the delivery is
`failed` for good (a person can replay it). The steps are the Standard Webhooks
spec's suggestion: the first attempt at once, then 5 s, 5 min, 30 min, 2 h, 5 h, 10 h
and 10 h after each failure, so eight attempts over about 27 hours before giving up;
a receiver that is down for a night still gets its messages.

Webhook deliveries need these hours (the spec's receivers expect them); a channel
whose messages lose their point within minutes may use a shorter schedule, which the
loop chooses per channel.

A receiver that says when (`Retry-After`, on a 429 or a 503) is believed, within
bounds: never sooner than 1 s (a `Retry-After: 0` loop would hammer it) and never
later than the longest step (10 h: a hostile or broken header cannot park a delivery
for a year). It still counts as an attempt, so a receiver that answers 429 forever
reaches the end of the schedule like any other failure.

Pure: no I/O; times are seconds, instants are aware UTC datetimes.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime

# Seconds to wait after the 1st, 2nd, ... failed attempt (the spec's suggestion).
STEPS: tuple[float, ...] = (5.0, 300.0, 1_800.0, 7_200.0, 18_000.0, 36_000.0, 36_000.0)
MAX_ATTEMPTS = len(STEPS) + 1
"""Attempts in all, the first included, before a delivery is failed."""
MIN_RETRY_AFTER = 1.0
MAX_RETRY_AFTER = max(STEPS)


def bounded_retry_after(seconds: float | None, longest: float = MAX_RETRY_AFTER) -> float | None:
    """A receiver's `Retry-After` (seconds) as the loop believes it: clamped to
    [MIN_RETRY_AFTER, `longest`]; None for None or NaN (the schedule decides then).
    Every channel's schedule goes through this, so no header parks a delivery for
    longer than `longest` (10 h by default)."""
    if seconds is None or math.isnan(seconds):
        return None
    return min(max(seconds, MIN_RETRY_AFTER), longest)


def next_delay(
    failed_attempts: int, retry_after: float | None = None, steps: tuple[float, ...] = STEPS
) -> float | None:
    """Seconds until the next attempt after `failed_attempts` (≥ 1) attempts failed,
    or None when that was the last one. `retry_after` (seconds, from the receiver)
    replaces the step, clamped to [1 s, the longest step]. ValueError for
    `failed_attempts` < 1."""
    if failed_attempts < 1:
        raise ValueError(f"failed_attempts must be at least 1, got {failed_attempts}")
    if failed_attempts > len(steps):
        return None
    bounded = bounded_retry_after(retry_after, max(steps))
    return steps[failed_attempts - 1] if bounded is None else bounded


def parse_retry_after(value: str | None, now: datetime) -> float | None:
    """Seconds from `now` (aware UTC) that an HTTP `Retry-After` header asks for: its
    delta-seconds form ("120") or its HTTP-date form ("Wed, 21 Oct 2026 07:28:00 GMT").
    None for a missing or unreadable header (the schedule decides then); a date in the
    past is 0."""
    if value is None or not value.strip():
        return None
    text = value.strip()
    if text.isascii() and text.isdigit():
        return float(text)
    try:
        when = parsedate_to_datetime(text)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:  # RFC 9110 dates are GMT; a naive parse means no zone given
        when = when.replace(tzinfo=UTC)
    return max((when - now).total_seconds(), 0.0)
