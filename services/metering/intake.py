"""The records between faust's fetcher and the counting loop, a fetch at a time.

faust hands a stream one record at a time: its fetcher awaits `wait_first(callback,
suspend_flow)` per record (four tasks and an `asyncio.wait` each), the conductor
makes an Event, a queue takes it, the stream's iterator, its processors and `take`
each touch it. Measured with py-spy on one-event records, that path let ~250 records
into a 50 ms `take` window: one-event records were counted at ~1,500 events/s while
the same process decodes, prices and sums ~40,000 a second. The fetcher of
`transport` instead puts each fetch (up to `QM_METERING_BATCH_MAX` records, every
partition) here whole, and the counting loop takes everything waiting, up to
`batch_max` records. While a batch is counted the next fetches wait here, so a worker
that is behind counts larger batches (each user's totals are then written once for
more of their events), and one that keeps up counts what came within `batch_within`.

At most `capacity` records wait here; the fetcher waits for room (backpressure: the
broker keeps the rest). Records are acked to faust (`ack`) only after their batch is
committed to Postgres: faust's own offset commit never passes what Postgres holds.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from typing import Any


class Intake:
    """Fetched faust messages waiting to be counted (`put` by the fetcher, `take` by
    the counting loop; both on the worker's event loop)."""

    def __init__(self, capacity: int) -> None:
        if capacity < 1:
            raise ValueError(f"capacity must be at least 1, not {capacity}")
        self.capacity = capacity
        self._waiting: list[Any] = []
        self._arrived = asyncio.Event()
        self._room = asyncio.Event()
        self._room.set()
        # Counts the `drop`s; (topic, partition) → the count at its latest drop.
        self.epoch = 0
        self._dropped_at: dict[tuple[str, int], int] = {}

    def __len__(self) -> int:
        return len(self._waiting)

    async def put(self, messages: list[Any], epoch: int | None = None) -> list[Any]:
        """Add one fetch's messages, once fewer than `capacity` wait (a fetch may take
        the count past it: it is never split, so records of a partition stay in
        offset order across takes), but those of partitions dropped since `epoch` (the
        `epoch` when the fetch arrived; default: now); returns those left out.

        A fetch of a revoked partition must never land after the drop: the dropped
        records before it would be a hole, and the counting loop, which counts any
        offset at or past the stored one, would count past it and lose them for good
        (a fetch waiting here for room when a rebalance dropped the records ahead of
        it, or one the fetcher held across the revocation)."""
        since = self.epoch if epoch is None else epoch
        while len(self._waiting) >= self.capacity:
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
            self._arrived.set()
        return out

    async def take(self, most: int, within: float) -> list[Any]:
        """The oldest waiting messages, at most `most`: at once when `most` wait,
        else once `within` seconds passed since the first arrived (company for a lone
        record); waits for the first."""
        while not self._waiting:
            self._arrived.clear()
            await self._arrived.wait()
        if len(self._waiting) < most:
            loop = asyncio.get_running_loop()
            deadline = loop.time() + within
            while len(self._waiting) < most and (left := deadline - loop.time()) > 0:
                self._arrived.clear()
                try:
                    await asyncio.wait_for(self._arrived.wait(), left)
                except TimeoutError:
                    break
        out, self._waiting = self._waiting[:most], self._waiting[most:]
        if len(self._waiting) < self.capacity:
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
        if len(kept) < self.capacity:
            self._room.set()
        return dropped
