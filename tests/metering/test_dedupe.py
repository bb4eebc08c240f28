"""The dedupe window's packed ids (services/metering/dedupe.py), without I/O."""

from __future__ import annotations

import random
import tracemalloc

from services.metering.dedupe import HOUR, MERGE_EVERY, SeenIds
from services.metering.state import id_hash

T0 = 1_796_000_000.0  # an epoch second


def test_ids_are_found_in_the_hours_of_the_window_and_forgotten_after() -> None:
    seen = SeenIds()
    a, b, c = (id_hash("u", f"e{i}") for i in range(3))
    seen.add([a], T0)
    seen.add([b], T0 + 2 * HOUR)
    assert seen.seen_among([a, b, c], T0 - 1) == {a, b}
    # an hour that ended before the window's start is not looked at, even if still held
    assert seen.seen_among([a, b, c], T0 + 1.5 * HOUR) == {b}
    assert seen.expire(T0 + 1.5 * HOUR) == 1
    assert len(seen) == 1
    assert seen.seen_among([a, b], 0) == {b}


def test_many_ids_across_merges_are_all_found_and_no_other() -> None:
    rng = random.Random(12)
    seen = SeenIds()
    ids = [rng.getrandbits(64) - 2**63 for _ in range(3 * MERGE_EVERY + 17)]
    for i in range(0, len(ids), 1000):
        seen.add(ids[i : i + 1000], T0 + i)  # a few hours' worth of batches
    others = [rng.getrandbits(64) - 2**63 for _ in range(5000)]
    assert seen.seen_among(ids[::7] + others, T0 - HOUR) == set(ids[::7]) - set(others)
    assert seen.seen_among([min(ids), max(ids), -(2**63), 2**63 - 1], T0) >= {min(ids), max(ids)}
    assert len(seen) == len(ids)


def test_an_id_costs_under_ten_bytes_of_memory() -> None:
    rng = random.Random(8)
    hashes = [rng.getrandbits(64) - 2**63 for _ in range(200_000)]
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        seen = SeenIds()
        for i in range(0, len(hashes), 5000):
            seen.add(hashes[i : i + 5000], T0 + i)
        seen.seen_among(hashes[:10], T0)  # merges what is gathered
        per_id = (tracemalloc.get_traced_memory()[0] - before) / len(hashes)
    finally:
        tracemalloc.stop()
    print(f"{per_id:.1f} bytes per remembered id")  # noqa: T201
    assert per_id < 10, per_id
