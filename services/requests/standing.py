"""The requester's standing, shown to the approver with the request. Pure.

Gathered by the caller when the request is made (spend from metering's Cost API, the
limit from policy, past requests from this service's store) and kept with the request
as it was then: the approver decides on what the requester saw when asking.
Amounts are micro-credits; times are aware UTC datetimes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta

BURN_WINDOW = timedelta(days=7)


@dataclass(frozen=True)
class PastRequest:
    """One earlier request of the requester and how it ended (state is a State value)."""

    request_id: str
    amount_micros: int
    state: str
    created_at: datetime
    granted_micros: int = 0


@dataclass(frozen=True)
class Standing:
    """Used / limit this period, spend by product and by model (name, micros), the last
    7 days' spend, when at that rate the budget runs out (None: not this period), past
    requests, and what could not be gathered (`unavailable`)."""

    used_micros: int = 0
    limit_micros: int = 0
    period: str = "month"
    by_product: tuple[tuple[str, int], ...] = ()
    by_model: tuple[tuple[str, int], ...] = ()
    burn_7d_micros: int = 0
    runs_out_at: datetime | None = None
    history: tuple[PastRequest, ...] = field(default_factory=tuple)
    # Why part of it could not be gathered (policy or metering away); "" when complete.
    unavailable: str = ""


def runs_out_at(
    used_micros: int, limit_micros: int, burn_7d_micros: int, now: datetime, period_end: datetime
) -> datetime | None:
    """When, spending at the last 7 days' average rate, `used` reaches `limit`: `now`
    when it already has; None when it won't before `period_end` (or nothing is spent)."""
    if used_micros >= limit_micros:
        return now
    if burn_7d_micros <= 0:
        return None
    per_second = burn_7d_micros / BURN_WINDOW.total_seconds()
    at = now + timedelta(seconds=(limit_micros - used_micros) / per_second)
    return at if at < period_end else None
