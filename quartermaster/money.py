"""Money is exact int64 micro-credits everywhere; credits are for people only."""

from __future__ import annotations

MICROS_PER_CREDIT = 1_000_000


def credits(micros: int) -> str:
    """Micros as credits with two decimals, rounded half up (exact integer arithmetic)."""
    sign = "-" if micros < 0 else ""
    cents = (abs(micros) + 5_000) // 10_000
    return f"{sign}{cents // 100}.{cents % 100:02d}"
