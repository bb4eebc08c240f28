"""The records between faust's fetcher and the counting loop, a fetch at a time.

faust hands a stream one record at a time: its fetcher awaits `wait_first(callback,
suspend_flow)` per record (four tasks and an `asyncio.wait` each), the conductor
makes an Event, a queue takes it, the stream's iterator, its processors and `take`
each touch it. Measured with py-spy on one-event records, that path let ~250 records
into a 50 ms `take` window: one-event records were counted at ~1,500 events/s while
the same process decodes, prices and sums ~40,000 a second. The fetcher of
`transport` instead puts each fetch whole here, and the counting loop takes
everything waiting, up to `QM_METERING_BATCH_MAX` records and
`QM_METERING_BATCH_MAX_BYTES` of record values. While a batch is counted the next
fetches wait here, so a worker that is behind counts larger batches (each user's
totals are then written and published once for more of their events), and one that
keeps up counts what came within `batch_within`.

Batches are bounded by bytes as well as records because records differ 200-fold: a
one-event record is ~75 bytes, a gateway's `UsageBatch` of 200 events ~14 KB. A
record count that suits one kind starves or floods the other (5,000 records: a batch
of 5,000 events when every record is one event, so each user's totals were written
about once per event at 10,000 users; a million events in `UsageBatch` records).
Bytes track events whichever way they are packed (~72 bytes an event either way).

At most `capacity` records and `capacity_bytes` wait here; the fetcher waits for
room (backpressure: the broker keeps the rest). Records are acked to faust (`ack`)
only after their batch is committed to Postgres: faust's own offset commit never
passes what Postgres holds.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from typing import Any


class Intake:
    """Fetched faust messages waiting to be counted (`put` by the fetcher, `take` by
    the counting loop; both on the worker's event loop)."""

    def __init__(self, capacity: int, capacity_bytes: int | None = None) -> None:
        """`capacity`: records; `capacity_bytes`: bytes of their values (None: no
        bound). Raises ValueError for a bound below 1."""
        if capacity < 1:
            raise ValueError(f"capacity must be at least 1, not {capacity}")
        if capacity_bytes is not None and capacity_bytes < 1:
            raise ValueError(f"capacity_bytes must be at least 1, not {capacity_bytes}")
        self.capacity = capacity
        self.capacity_bytes = capacity_bytes
        self._waiting: list[Any] = []
        self._bytes = 0  # of the waiting records' values
        self.taken_bytes = 0  # of the last batch `take` returned
        self.taken_cut = False  # whether records were left waiting after it
        self._arrived = asyncio.Event()
        self._room = asyncio.Event()
        self._room.set()
        # Counts the `drop`s; (topic, partition) → the count at its latest drop.
        self.epoch = 0
        self._dropped_at: dict[tuple[str, int], int] = {}

    def __len__(self) -> int:
        return len(self._waiting)

    @property
    def bytes(self) -> int:
        """Bytes of the waiting records' values."""
        return self._bytes

    def _full(self) -> bool:
        return len(self._waiting) >= self.capacity or (
            self.capacity_bytes is not None and self._bytes >= self.capacity_bytes
        )

    async def put(self, messages: list[Any], epoch: int | None = None) -> list[Any]:
        """Add one fetch's messages, once fewer than `capacity` records and
        `capacity_bytes` wait (a fetch may take them past it: it is never split, so
        records of a partition stay in offset order across takes), but those of
        partitions dropped since `epoch` (the `epoch` when the fetch arrived; default:
        now); returns those left out.

        A fetch of a revoked partition must never land after the drop: the dropped
        records before it would be a hole, and the counting loop, which counts any
        offset at or past the stored one, would count past it and lose them for good
        (a fetch waiting here for room when a rebalance dropped the records ahead of
        it, or one the fetcher held across the revocation)."""
        since = self.epoch if epoch is None else epoch
        while self._full():
            self._room.clear()
            await self._room.wait()
        out: list[Any] = []
        if self.epoch != since:
            dropped_at = self._dropped_at
            kept = []
            for m in messages:
                if dropped_at.get((m.topic, m.partition), -1) > since:
                    out.append(m)
                else:
                    kept.append(m)
            messages = kept
        if messages:
            self._waiting.extend(messages)
            self._bytes += sum(_size(m) for m in messages)
            self._arrived.set()
        return out

    async def take(self, most: int, within: float, most_bytes: int | None = None) -> list[Any]:
        """The oldest waiting messages, at most `most` of them and `most_bytes` of
        values (the first whatever its size): at once when that much waits, else
        once `within` seconds passed since the first arrived (company for a lone
        record); waits for the first. `taken_bytes` is then their values' bytes, and
        `taken_cut` whether a bound cut the batch (records were left waiting: the
        bytes bound stops before the record that would pass it, so a batch it cut
        weighs less than `most_bytes`)."""

        def enough() -> bool:
            return len(self._waiting) >= most or (
                most_bytes is not None and self._bytes >= most_bytes
            )

        while not self._waiting:
            self._arrived.clear()
            await self._arrived.wait()
        if not enough():
            loop = asyncio.get_running_loop()
            deadline = loop.time() + within
            while not enough() and (left := deadline - loop.time()) > 0:
                self._arrived.clear()
                try:
                    await asyncio.wait_for(self._arrived.wait(), left)
                except TimeoutError:
                    break
        n, size = batch_prefix(self._waiting, most, most_bytes)
        out, self._waiting = self._waiting[:n], self._waiting[n:]
        self._bytes -= size
        self.taken_bytes = size
        self.taken_cut = bool(self._waiting)
        if not self._full():
            self._room.set()
        return out

    def drop(self, partitions: Iterable[tuple[str, int]]) -> int:
        """Forget waiting messages of these (topic, partition)s (revoked from this
        worker: faust fetches them again from the committed offset should they come
        back), and any fetch of them `put` later with an older epoch; how many were
        dropped."""
        gone = set(partitions)
        if not gone:
            return 0
        self.epoch += 1
        for tp in gone:
            self._dropped_at[tp] = self.epoch
        kept = [m for m in self._waiting if (m.topic, m.partition) not in gone]
        dropped = len(self._waiting) - len(kept)
        self._waiting = kept
        self._bytes = sum(_size(m) for m in kept)
        if not self._full():
            self._room.set()
        return dropped


def _size(message: Any) -> int:
    """What a record weighs in a batch: its value's bytes."""
    value = message.value
    return len(value) if value else 0


def batch_prefix(waiting: list[Any], most: int, most_bytes: int | None) -> tuple[int, int]:
    """How many of the oldest `waiting` records (anything with a `value`) make a batch
    (at most `most`, within `most_bytes` but at least one), and their bytes."""
    if most_bytes is None:
        n = min(most, len(waiting))
        return n, sum(_size(m) for m in waiting[:n])
    size = n = 0
    for m in waiting[:most]:
        s = _size(m)
        if n and size + s > most_bytes:
            break
        size += s
        n += 1
    return n, size
