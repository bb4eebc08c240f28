"""How much the counting loop takes in one batch: about what it counts in `target`
seconds, within the settings' bounds (QM_METERING_BATCH_MAX records,
QM_METERING_BATCH_MAX_BYTES of values).

Why a time bound as well: a batch is counted whole before anything else happens.
A rebalance waits for the batch in hand (its partitions are committed, then
revoked), so the whole group stands still while one worker finishes a long batch;
totals are committed and published once a batch, so while a worker catches up
budgets see its counting in steps of a batch.
Bounded by size alone, a worker behind took the whole 16 MiB at once: 200,000
batched events in one 6.3 s batch, one-event records in 3 s batches, on an idle
2-core machine (`make bench-metering`); three times that on a busy one. Bigger
batches count faster (each user's totals written once a batch: figures in
docs/benchmarks.md), so batches start at the bounds, shrink when one takes over
`target` and grow back while they take under it. The first batch after a start is
bounded by size alone.

Pure: no I/O.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

GROWTH = 2.0  # a batch at most doubles from one to the next ...
SHRINK = 0.5  # ... and at least halves when it ran long
LEAST_RECORDS = 100
LEAST_BYTES = 64 * 1024


@dataclass
class Pacer:
    """The next batch's bounds (`records`, `bytes`), from how long the last ones took.

    `target` in seconds; `most_records` and `most_bytes` the bounds a batch never
    exceeds (a record larger than `bytes` is still taken alone: `batch_prefix`).
    After each batch, `counted(records, size, seconds, cut)`: a full batch (one that
    reached a bound, or that a bound cut: records were left waiting) scales both
    bounds by the square root of target / seconds, within GROWTH and SHRINK (a
    batch four times too long halves them, one four times too short doubles them);
    a batch that was not full only shrinks them, when it ran long (a slow
    PostgreSQL, a starved host), since its size says nothing of how much more fits.
    """

    target: float
    most_records: int
    most_bytes: int
    records: int = field(init=False)
    bytes: int = field(init=False)

    def __post_init__(self) -> None:
        if not 0 < self.target < math.inf or self.most_records < 1 or self.most_bytes < 1:
            raise ValueError(
                f"target {self.target} s, {self.most_records} records and "
                f"{self.most_bytes} bytes: each must be positive (and the target finite)"
            )
        # The first batch takes the bounds: smaller ones would cost a worker that is a
        # few seconds behind a batch each time (each user's totals written again).
        self.records, self.bytes = self.most_records, self.most_bytes

    def counted(self, records: int, size: int, seconds: float, cut: bool = False) -> None:
        """Adjust the bounds after a batch of `records` records and `size` bytes of
        values that took `seconds` to count; `cut`: records were left waiting. A batch
        the bytes bound cut weighs less than the bound (`batch_prefix` stops before
        the record that would pass it): without `cut` it
        would not count as full, and bounds a stall shrank would never grow back."""
        full = cut or records >= self.records or size >= self.bytes
        # no time (or NaN) says nothing of how long a batch takes
        if not seconds > 0 or (not full and seconds <= self.target):
            return
        # Damped (the square root): scaling by target / seconds itself overshoots
        # whenever a batch's time grows faster than its size squared (memory pressure,
        # say), and sizes flip-flopped for good between twice and half the target.
        factor = min(GROWTH, max(SHRINK, math.sqrt(self.target / seconds)))
        if not full and factor > 1:
            return
        self.records = _within(
            round(self.records * factor), min(LEAST_RECORDS, self.most_records), self.most_records
        )
        self.bytes = _within(
            round(self.bytes * factor), min(LEAST_BYTES, self.most_bytes), self.most_bytes
        )


def _within(value: int, least: int, most: int) -> int:
    return min(most, max(least, value))


class Sized(Protocol):
    """A record as a batch weighs it: by its value's bytes."""

    @property
    def value(self) -> bytes | None: ...


def batch_prefix(waiting: Sequence[Sized], most: int, most_bytes: int) -> tuple[int, int]:
    """How many of the oldest `waiting` records make a batch: at most `most`, within
    `most_bytes` of values but at least one (a record larger than the bound is taken
    alone, never stuck); and their bytes.

    Batches are bounded by bytes as well as records because records differ 200-fold: a
    one-event record is ~75 bytes, a gateway's `UsageBatch` of 200 events ~14 KB. A
    record count that suits one kind starves or floods the other (5,000 records: a
    batch of 5,000 events when every record is one event, each user's totals written
    about once an event at 10,000 users; a million events in `UsageBatch` records).
    Bytes track events whichever way they are packed (~72 bytes an event either way)."""
    size = n = 0
    for r in waiting[:most]:
        value = r.value
        s = len(value) if value else 0
        if n and size + s > most_bytes:
            break
        size += s
        n += 1
    return n, size
