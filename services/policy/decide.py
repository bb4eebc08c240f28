"""The decision itself: pure, no I/O, cheap enough to run on every call."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from quartermaster.money import credits
from quartermaster.periods import PeriodKind
from quartermaster.v1 import policy_pb2


class Enforcement(StrEnum):
    HARD = "hard"  # deny once the limit is reached
    SOFT = "soft"  # allow, but warn, past the limit


@dataclass(frozen=True, slots=True)
class Limit:
    micros: int
    enforcement: Enforcement
    source: str  # e.g. "workspace_default", "group:ml", "override:ov-1"
    period: PeriodKind = PeriodKind.MONTH


def decide(used: int, limit: Limit, estimated: int, warn_percent: int) -> tuple[int, str]:
    """(Decision enum value, reason) for a user who has used `used` micros this period.

    Hard limit: DENY when nothing is left or when this call's estimate would pass the
    limit. Soft limit: the same cases answer WARN. WARN too from `warn_percent` % up.
    """
    where = f"{credits(used)} of {credits(limit.micros)} credits used ({limit.source})"
    over = used >= limit.micros or used + estimated > limit.micros
    if over:
        why = (
            "limit reached"
            if used >= limit.micros
            else f"this call (~{credits(estimated)} credits) would pass the limit"
        )
        if limit.enforcement is Enforcement.HARD:
            return policy_pb2.DECISION_DENY, f"{why}: {where}"
        return policy_pb2.DECISION_WARN, f"{why}, allowed by a soft limit: {where}"
    if used * 100 >= limit.micros * warn_percent:
        return policy_pb2.DECISION_WARN, f"{warn_percent}% or more of the budget used: {where}"
    return policy_pb2.DECISION_ALLOW, f"within budget: {where}"
