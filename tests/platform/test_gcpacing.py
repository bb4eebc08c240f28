"""The collector paced from the event loop (quartermaster.gcpacing): cyclic garbage
is still collected, by the timer, and the process's thresholds come back afterwards."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import weakref

from quartermaster import gcpacing


class Node:
    def __init__(self) -> None:
        self.me = self  # a reference cycle: only the collector frees it


async def _stop(task: asyncio.Task[None]) -> None:
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


async def test_paced_collection_frees_cycles_and_restores_the_thresholds() -> None:
    before = gc.get_threshold()
    first = asyncio.create_task(gcpacing.pace(0.01))
    second = asyncio.create_task(gcpacing.pace(0.01))  # another server in this process
    try:
        await asyncio.sleep(0.03)
        assert gc.get_threshold()[0] == gcpacing.SAFETY_THRESHOLD
        node = Node()
        gone = weakref.ref(node)
        del node
        for _ in range(200):  # far fewer allocations than the safety threshold
            if gone() is None:
                break
            await asyncio.sleep(0.01)
        assert gone() is None, "the paced collection never freed the cycle"
        await _stop(first)
        assert gc.get_threshold()[0] == gcpacing.SAFETY_THRESHOLD, "still one pacer"
    finally:
        await _stop(first)
        await _stop(second)
    assert gc.get_threshold() == before
