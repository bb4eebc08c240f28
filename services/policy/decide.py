"""The decision itself: pure, no I/O, cheap enough to run on every call."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from quartermaster.money import credits
from quartermaster.periods import PeriodKind
from quartermaster.v1 import policy_pb2


class Enforcement(StrEnum):
    """What happens past a limit."""

    HARD = "hard"  # deny once the limit is reached
    SOFT = "soft"  # allow, but warn, past the limit


@dataclass(frozen=True, slots=True)
class Limit:
    """The limit a decision is made against (micros per period) and where it came from."""

    micros: int
    enforcement: Enforcement
    source: str  # e.g. "workspace_default", "group:ml", "override:ov-1"
    period: PeriodKind = PeriodKind.MONTH

    @property
    def shown(self) -> str:
        """ "10.00 credits used (group:ml)": the part of every reason that doesn't
        change between calls, formatted once per limit."""
        # Keyed by identity (hashing the dataclass costs more than the rest); the entry
        # holds the limit, so its id can't be reused while the entry lives.
        got = _SHOWN.get(id(self))
        if got is None or got[0] is not self:
            if len(_SHOWN) > 100_000:
                _SHOWN.clear()
            got = _SHOWN[id(self)] = (self, f"{credits(self.micros)} credits used ({self.source})")
        return got[1]


_SHOWN: dict[int, tuple[Limit, str]] = {}


def classify(
    used: int, limit_micros: int, enforcement: Enforcement, estimated: int, warn_percent: int
) -> int:
    """decide()'s Decision alone, without building the reason (the fast path)."""
    if used >= limit_micros or used + estimated > limit_micros:
        return (
            policy_pb2.DECISION_DENY
            if enforcement is Enforcement.HARD
            else policy_pb2.DECISION_WARN
        )
    if used * 100 >= limit_micros * warn_percent:
        return policy_pb2.DECISION_WARN
    return policy_pb2.DECISION_ALLOW


def decide(used: int, limit: Limit, estimated: int, warn_percent: int) -> tuple[int, str]:
    """(Decision enum value, reason) for a user who has used `used` micros this period.

    Hard limit: DENY when nothing is left or when this call's estimate would pass the
    limit. Soft limit: the same cases answer WARN. WARN too from `warn_percent` % up.
    """
    where = f"{credits(used)} of {limit.shown}"
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
