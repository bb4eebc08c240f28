"""Run Python's cyclic garbage collector between calls, not inside them.

grpc.aio leaves a few objects in reference cycles behind every call (measured with
grpcio 1.85: five, from its method-handler lookup), so with the default thresholds a
young-generation collection runs every ~140 calls, wherever an allocation tips the
count: often in the middle of a handler, adding ~0.2 ms to that one call. A server
that must answer in microseconds instead collects from its event loop on a short
timer, between callbacks: the same work, at a moment no call is half done. Automatic
collection stays on, with a high threshold, as a safety net should the loop stall.

Thresholds are process-wide: the first `pace()` in a process sets them and the last
one to stop puts the old ones back (tests run several servers in one process).
"""

from __future__ import annotations

import asyncio
import gc

INTERVAL = 0.05  # seconds between young-generation collections
SAFETY_THRESHOLD = 50_000  # automatic gen-0 collection only past this many objects
MIDDLE_EVERY = 10  # a generation-1 collection every this many ticks
OLD_EVERY = 2_400  # a full collection every this many ticks (2 minutes)

_users = 0
_saved: tuple[int, int, int] | None = None


async def pace(interval: float = INTERVAL) -> None:
    """Collect every `interval` seconds until cancelled."""
    global _users, _saved
    if _users == 0:
        _saved = gc.get_threshold()
        gc.set_threshold(SAFETY_THRESHOLD, _saved[1], _saved[2])
    _users += 1
    try:
        tick = 0
        while True:
            await asyncio.sleep(interval)
            tick += 1
            if tick % OLD_EVERY == 0:
                gc.collect(2)
            elif tick % MIDDLE_EVERY == 0:
                gc.collect(1)
            else:
                gc.collect(0)
    finally:
        _users -= 1
        if _users == 0 and _saved is not None:
            gc.set_threshold(*_saved)


def settle() -> None:
    """After loading long-lived state: collect what is garbage now, then keep the
    collector from walking the rest again (gc.freeze)."""
    gc.collect(1)
    gc.freeze()
