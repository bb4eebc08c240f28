"""The topic watch waits out what is an outage and refuses only a confirmed problem.

A PostgreSQL restart under a worker ended it (exit 70): the watch reads the stored
offsets, and asyncpg's "the database system is starting up" was not among what it
waited out. Every outage class the counting path retries is waited out here too.
"""

from __future__ import annotations

from typing import cast

import asyncpg
import pytest

from services.metering.processor import OUTAGE
from services.metering.topic_check import TopicRefused
from services.metering.topic_guard import TopicGuard, TopicWatch

OUTAGES = [
    ConnectionRefusedError(111, "Connect call failed"),
    TimeoutError(),
    asyncpg.exceptions.CannotConnectNowError("the database system is starting up"),
    asyncpg.exceptions.AdminShutdownError("terminating connection due to administrator command"),
    asyncpg.exceptions.ConnectionDoesNotExistError(
        "connection was closed in the middle of operation"
    ),
    asyncpg.InternalClientError("cannot switch to state 15; another operation (12) is in progress"),
    asyncpg.InterfaceError("pool is closing"),
]


def watching(guard: Guard, refused: list[TopicRefused]) -> TopicWatch:
    """A watch over `guard` (a stand-in for TopicGuard: only `verify` is used)."""
    return TopicWatch(cast(TopicGuard, guard), 0.01, refused.append, confirm=0)


RECREATED = TopicRefused("qm.usage.v1", ["qm.usage.v1 was recreated"])


class Guard:
    """Raises each of `raises` in turn, then returns."""

    def __init__(self, *raises: BaseException) -> None:
        self.raises = list(raises)

    async def verify(self) -> None:
        if self.raises:
            raise self.raises.pop(0)


def test_every_outage_class_of_the_counting_path_is_in_the_list() -> None:
    assert all(isinstance(e, OUTAGE) for e in OUTAGES)


@pytest.mark.parametrize("exc", OUTAGES, ids=lambda e: type(e).__name__)
async def test_an_outage_is_waited_out_and_refuses_nothing(exc: BaseException) -> None:
    refused: list[TopicRefused] = []
    watch = watching(Guard(exc), refused)
    assert await watch.check() is False
    # An outage on the confirming check as well: the next tick decides.
    watch = watching(Guard(RECREATED, exc), refused)
    assert await watch.check() is False
    assert refused == []


async def test_a_confirmed_refusal_is_handed_on() -> None:
    refused: list[TopicRefused] = []
    watch = watching(Guard(RECREATED, RECREATED), refused)
    assert await watch.check() is True
    assert refused == [RECREATED]


async def test_a_bug_is_not_waited_out() -> None:
    watch = watching(Guard(KeyError("partition")), [])
    with pytest.raises(KeyError):
        await watch.check()
