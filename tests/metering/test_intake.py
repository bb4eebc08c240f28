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
    value: bytes = b""


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


@dataclass(frozen=True)
class Sized:
    topic: str
    partition: int
    offset: int
    value: bytes


def sized(partition: int, offsets: range, size: int) -> list[Sized]:
    return [Sized(T, partition, o, b"x" * size) for o in offsets]


async def test_a_batch_is_bounded_by_bytes_as_well_as_records() -> None:
    """One-event records (~75 bytes) and gateways' 200-event batches (~14 KB) in one
    bound: a take stops at whichever of records and bytes comes first."""
    intake = Intake(capacity=1000)
    await intake.put(sized(0, range(10), 100) + sized(1, range(3), 10_000))
    assert intake.bytes == 10 * 100 + 3 * 10_000
    # 100-byte records: 5 of them make 500 bytes
    assert [m.offset for m in await intake.take(1000, 0.0, most_bytes=500)] == list(range(5))
    # the rest of partition 0 (500 bytes) and not the 10 KB record after them
    assert len(await intake.take(1000, 0.0, most_bytes=5000)) == 5
    # a record larger than the bound is taken alone, not stuck
    assert len(await intake.take(1000, 0.0, most_bytes=500)) == 1
    assert len(await intake.take(1, 0.0, most_bytes=10**9)) == 1  # records bound too
    assert intake.bytes == 10_000
    assert intake.drop([(T, 1)]) == 1
    assert intake.bytes == 0


async def test_the_fetcher_waits_while_the_intake_holds_its_bytes() -> None:
    intake = Intake(capacity=1000, capacity_bytes=1000)
    await intake.put(sized(0, range(10), 100))  # 1000 bytes: full
    pending = asyncio.ensure_future(intake.put(sized(0, range(10, 12), 100)))
    await asyncio.sleep(0)
    assert not pending.done()  # backpressure: the broker keeps the rest
    await intake.take(1000, 0.0, most_bytes=100)  # room for more
    assert await pending == []
    assert len(intake) == 11
    assert intake.bytes == 1100


async def test_a_take_waits_within_for_company_unless_the_bytes_are_there() -> None:
    intake = Intake(capacity=1000)
    await intake.put(sized(0, range(2), 600))
    # enough bytes wait: taken at once, not after the hour
    assert len(await asyncio.wait_for(intake.take(1000, 3600.0, most_bytes=1000), 30)) == 1
