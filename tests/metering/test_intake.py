"""The intake between faust's fetcher and the counting loop: a revoked partition's
records never land after its drop (they would follow a hole the counting loop counts
past, losing the dropped records for good)."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from services.metering.intake import Intake

T = "qm.usage.v1"


@dataclass(frozen=True)
class Msg:
    topic: str
    partition: int
    offset: int


def msgs(partition: int, offsets: range) -> list[Msg]:
    return [Msg(T, partition, o) for o in offsets]


async def test_a_fetch_waiting_for_room_when_its_partition_is_dropped_is_left_out() -> None:
    intake = Intake(capacity=10)
    await intake.put(msgs(0, range(0, 10)))  # full
    epoch = intake.epoch
    pending = asyncio.ensure_future(intake.put(msgs(0, range(10, 20)) + msgs(1, range(5)), epoch))
    await asyncio.sleep(0)
    assert not pending.done()  # waiting for room
    assert intake.drop([(T, 0)]) == 10  # the rebalance: 0-9 gone, room made
    left_out = await pending
    assert [m.offset for m in left_out] == list(range(10, 20))
    # only partition 1's records wait: partition 0 resumes from the committed offset
    assert await intake.take(100, 0.0) == msgs(1, range(5))


async def test_a_fetch_that_arrived_before_a_drop_is_left_out_when_put_after_it() -> None:
    intake = Intake(capacity=10)
    epoch = intake.epoch  # the fetch arrived...
    intake.drop([(T, 0)])  # ...its partition was revoked before the fetcher put it
    assert len(await intake.put(msgs(0, range(3)) + msgs(2, range(2)), epoch)) == 3
    assert await intake.take(100, 0.0) == msgs(2, range(2))


async def test_a_fetch_that_arrived_after_the_drop_is_kept() -> None:
    intake = Intake(capacity=10)
    intake.drop([(T, 0)])
    # assigned again, fetched from the committed offset: counted
    assert await intake.put(msgs(0, range(3)), intake.epoch) == []
    assert await intake.put(msgs(0, range(3, 5))) == []
    assert await intake.take(100, 0.0) == msgs(0, range(5))
