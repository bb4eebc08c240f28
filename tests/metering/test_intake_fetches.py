"""Breaker's check of the intake fed fetches smaller than a batch (worker.FETCH_RECORDS
under QM_METERING_BATCH_MAX) and taken in random bounds concurrently: every record
taken once, in offset order per partition, and never more than capacity + one fetch
- 1 records waiting (without a bytes bound)."""

from __future__ import annotations

import asyncio
import random
from dataclasses import dataclass

import pytest

from services.metering.intake import Intake


@dataclass(frozen=True)
class M:
    topic: str
    partition: int
    offset: int
    value: bytes


async def _run(seed: int) -> None:
    rng = random.Random(seed)
    capacity = rng.choice([1, 5, 50, 500])
    fetch = rng.choice([1, 3, 10, 1000])
    bytes_bound = rng.choice([None, 64, 5000])
    intake = Intake(capacity, bytes_bound)
    nxt = [0, 0, 0, 0]
    peak = 0

    async def fetcher() -> int:
        nonlocal peak
        sent = 0
        while sent < 2000:
            n = rng.randint(1, fetch)
            batch = []
            for _ in range(n):
                p = rng.randrange(4)
                batch.append(M("t", p, nxt[p], b"x" * rng.choice([0, 10, 100])))
                nxt[p] += 1
            sent += n
            await intake.put(batch)
            peak = max(peak, len(intake))
            if rng.random() < 0.3:
                await asyncio.sleep(0)
        await intake.put([M("t", 99, 0, b"")])  # the end
        return sent

    got: list[M] = []

    async def counter() -> None:
        while not got or got[-1].partition != 99:
            most = rng.randint(1, capacity)
            most_bytes = rng.choice([None, 50, 1000])
            batch = await intake.take(most, rng.choice([0.0, 0.001]), most_bytes)
            assert 1 <= len(batch) <= most
            if most_bytes is not None and len(batch) > 1:
                assert sum(len(m.value) for m in batch) <= most_bytes
            got.extend(batch)
            if rng.random() < 0.5:
                await asyncio.sleep(0)

    counting = asyncio.ensure_future(counter())
    sent = await fetcher()
    await asyncio.wait_for(counting, 10)
    got.pop()
    assert len(got) == sent
    per: dict[int, list[int]] = {}
    for m in got:
        per.setdefault(m.partition, []).append(m.offset)
    for offsets in per.values():
        assert offsets == list(range(len(offsets)))
    if bytes_bound is None:
        assert peak <= capacity + fetch - 1, (capacity, fetch, peak)


@pytest.mark.parametrize("seed", range(12))
def test_fetches_of_any_size_are_taken_whole_in_order(seed: int) -> None:
    asyncio.run(_run(seed))
