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
    """Micro-credits for each exact amount of `picos` (pico-credits) that add up to
    exactly `total` micros (default: their exact sum rounded once, half up), by the
    largest-remainder method: every part gets its floor, and the micros left over go
    one each to the parts with the largest remainders (ties: the earlier part).

    So displayed parts always sum to the rounded whole, and each part differs from
    its own exact value by less than one micro when `total` is the default. Raises
    ValueError when `total` can't be reached that way (more than one micro away per
    part from the floors)."""
    floors = [p // PICOS_PER_MICRO for p in picos]
    want = micros_of_picos(sum(picos)) if total is None else total
    extra = want - sum(floors)
    if not 0 <= extra <= len(floors):
        raise ValueError(f"can't apportion {want} micros over {len(floors)} parts")
    if extra:
        order = sorted(
            range(len(floors)), key=lambda i: (-(picos[i] - floors[i] * PICOS_PER_MICRO), i)
        )
        for i in order[:extra]:
            floors[i] += 1
    return floors
