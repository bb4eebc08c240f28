"""Whether the totals topic is the incarnation policy served from (pure:
services.policy.topic_mark), and the per-user turns Reserve takes on a replica."""

from __future__ import annotations

import asyncio

import pytest

from services.policy.policy_servicer import UserLocks
from services.policy.topic_mark import ACCEPT_COMMAND, TopicMark, mismatch

T = "qm.usage.totals.v1"
OLD = TopicMark("b2xk", 3)


@pytest.mark.parametrize(
    ("stored", "now", "same"),
    [
        (None, TopicMark("bmV3", 4), True),  # nothing recorded yet: record it
        (OLD, TopicMark("b2xk", 3), True),
        (OLD, TopicMark("bmV3", 3), False),  # recreated with the same size
        (OLD, TopicMark("b2xk", 4), False),  # (ids unknown or equal) resized
        (TopicMark("", 3), TopicMark("bmV3", 3), True),  # no id to compare: size only
        (TopicMark("", 3), TopicMark("", 4), False),
    ],
)
def test_a_topic_is_the_one_served_from_or_named_with_what_to_do(
    stored: TopicMark | None, now: TopicMark, same: bool
) -> None:
    problem = mismatch(T, stored, now)
    if same:
        assert problem is None
    else:
        assert problem is not None
        assert f"({now}; was {stored})" in problem
        assert ACCEPT_COMMAND in problem


async def test_one_reserve_of_a_user_at_a_time_and_no_lock_kept() -> None:
    locks, inside, most = UserLocks(), 0, 0

    async def reserve(user: str) -> None:
        nonlocal inside, most
        async with locks.hold(user):
            inside += 1
            most = max(most, inside)
            await asyncio.sleep(0)
            inside -= 1

    waiter = asyncio.create_task(reserve("ann"))
    await asyncio.gather(*(reserve("ann") for _ in range(20)))
    await waiter
    assert most == 1
    assert len(locks) == 0
    # A caller cancelled while waiting (its deadline passed) leaves nothing behind.
    async with locks.hold("bob"):
        late = asyncio.create_task(reserve("bob"))
        await asyncio.sleep(0)
        late.cancel()
    with pytest.raises(asyncio.CancelledError):
        await late
    assert len(locks) == 0
