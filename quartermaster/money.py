"""Money is exact: int64 micro-credits on the wire and in answers, exact integer
pico-credits (10^-6 micro-credit) while it is being added up; credits are for people.

A price is micro-credits per million tokens, so a price times a token count is an
exact integer number of pico-credits. Metering sums those and rounds once, half up,
where an amount leaves it (a published total, a Cost API answer): a total is its
exact sum rounded once, never a sum of per-event roundings (which were biased: half
up on every small event adds up, and a one-token event cost nothing).
"""

from __future__ import annotations

from collections.abc import Sequence

MICROS_PER_CREDIT = 1_000_000
PICOS_PER_MICRO = 1_000_000
_HALF = PICOS_PER_MICRO // 2


def credits(micros: int) -> str:
    """Micros as credits with two decimals, rounded half up (exact integer arithmetic)."""
    sign = "-" if micros < 0 else ""
    cents = (abs(micros) + 5_000) // 10_000
    return f"{sign}{cents // 100}.{cents % 100:02d}"


def micros_of_picos(picos: int) -> int:
    """Exact pico-credits rounded once to micro-credits, half up (toward +inf)."""
    return (picos + _HALF) // PICOS_PER_MICRO


def apportion(picos: Sequence[int], total: int | None = None) -> list[int]:
    """Micro-credits for each exact amount of `picos` (pico-credits, >= 0) that add up
    to exactly `total` micros (default: their exact sum rounded once, half up), by the
    largest-remainder method: every part gets its floor, and the micros left over go
    one each to the parts with the largest remainders (ties: the earlier part). Each
    part is then within one micro of its exact value.

    A `total` that floors can't reach that way (it differs from the exact sum by more
    than rounding: a sum of amounts each rounded on its own, say) is shared in
    proportion to the parts (Hamilton's method: quotas part x total / sum, floors,
    then largest remainders). Raises ValueError for a non-zero `total` of nothing."""
    whole = sum(picos)
    want = micros_of_picos(whole) if total is None else total
    floors = [p // PICOS_PER_MICRO for p in picos]
    remainders = [p - f * PICOS_PER_MICRO for p, f in zip(picos, floors, strict=True)]
    extra = want - sum(floors)
    if not 0 <= extra <= len(floors):
        if whole == 0:
            if want:
                raise ValueError(f"can't share {want} micros among parts that are all 0")
            return floors
        floors = [p * want // whole for p in picos]
        remainders = [p * want - f * whole for p, f in zip(picos, floors, strict=True)]
        extra = want - sum(floors)
    if extra:
        order = sorted(range(len(floors)), key=lambda i: (-remainders[i], i))
        for i in order[:extra]:
            floors[i] += 1
    return floors
