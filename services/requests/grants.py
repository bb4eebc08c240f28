"""Grants: what an approved request adds to its requester's budget, and when. Pure.

Grants stack: each approved request is one additive override in policy, keyed by its
request id, starting at approval and ending on its own (at `ends_at`, or when revoked,
which removes that override only). Amounts in micro-credits, times UTC.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime

from services.requests.machine import Request, State


@dataclass(frozen=True)
class Grant:
    """Extra `micros` for `user_id` from `starts_at` until `ends_at` (exclusive)."""

    request_id: str
    user_id: str
    micros: int
    starts_at: datetime
    ends_at: datetime

    def active(self, now: datetime) -> bool:
        return self.starts_at <= now < self.ends_at


def grant_of(req: Request) -> Grant | None:
    """The grant an approved, ended or revoked request made; None if it never made one."""
    if req.approved_at is None or req.ends_at is None:
        return None
    if req.state not in (State.APPROVED, State.ENDED, State.REVOKED):
        return None
    return Grant(req.request_id, req.requester, req.granted_micros, req.approved_at, req.ends_at)


def extra_micros(requests: Iterable[Request], user_id: str, now: datetime) -> int:
    """The sum of `user_id`'s grants active at `now` (stacked approvals add up)."""
    total = 0
    for req in requests:
        grant = grant_of(req)
        if grant is not None and grant.user_id == user_id and grant.active(now):
            total += grant.micros
    return total
