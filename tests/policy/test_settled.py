"""A settled reservation is final (issue 14, item 4), on the real policy server.

Release after Commit answered OK and took the committed spend out of the budget until
metering counted it; a second Commit silently overwrote the first. Now every settle
of a reservation that is released, committed or expired is refused with
FAILED_PRECONDITION naming that state, except the very same Commit again (a retry
whose answer was lost), which answers the same.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import grpc
import pytest

from quartermaster.policy_client import FailMode, PolicyClient
from quartermaster.v1 import policy_pb2
from services.policy.wiring import RunningPolicy
from tests.helpers import SERVED_WITHIN_S, TOKENS, new_user, refusal

pytestmark = pytest.mark.infra
FINAL = grpc.StatusCode.FAILED_PRECONDITION


@pytest.fixture
async def client(policy_server: RunningPolicy) -> AsyncIterator[PolicyClient]:
    async with PolicyClient(
        f"127.0.0.1:{policy_server.port}",
        fail=FailMode.CLOSED,
        deadline_s=SERVED_WITHIN_S,
        token=TOKENS["gateway"],
    ) as c:
        yield c


async def _reserved(client: PolicyClient, user: str, ttl: int = 0) -> str:
    made = await client.reserve(user, "chat", "gpt-5", 3_000_000, f"r-{user}", ttl_seconds=ttl)
    assert made.decision == policy_pb2.DECISION_ALLOW
    return made.reservation_id


async def _standing(client: PolicyClient, user: str) -> tuple[int, int]:
    got = await client.check(user, "chat", "gpt-5")
    return got.used_micros, got.reserved_micros


async def test_release_after_commit_is_refused_and_the_spend_stays_counted(
    client: PolicyClient,
) -> None:
    user = new_user()
    rid = await _reserved(client, user)
    await client.commit(rid, 2_000_000)
    release = client._stub.Release(
        policy_pb2.ReleaseRequest(reservation_id=rid), metadata=client._metadata
    )
    assert await refusal(release) == (
        FINAL, f"reservation_id: {rid!r} is already committed (actual_micros=2000000);"
        " a settled reservation is final",
    )  # fmt: skip
    with pytest.raises(grpc.aio.AioRpcError):  # the client does not call it released
        await client.release(rid)
    assert await _standing(client, user) == (2_000_000, 2_000_000)


async def test_a_second_commit_is_refused_and_the_same_one_answers_the_same(
    client: PolicyClient,
) -> None:
    user = new_user()
    rid = await _reserved(client, user)
    first = await client.commit(rid, 2_000_000)
    again = await client.commit(rid, 2_000_000)  # a retry whose answer was lost
    assert again == first
    other = client._stub.Commit(
        policy_pb2.CommitRequest(reservation_id=rid, actual_micros=5), metadata=client._metadata
    )
    assert await refusal(other) == (
        FINAL, f"reservation_id: {rid!r} is already committed (actual_micros=2000000);"
        " a settled reservation is final",
    )  # fmt: skip
    assert await _standing(client, user) == (2_000_000, 2_000_000)


async def test_commit_after_release_and_release_twice_are_refused(client: PolicyClient) -> None:
    user = new_user()
    rid = await _reserved(client, user)
    released = await client.release(rid)
    assert released is not None
    assert released.released
    for call in (
        client._stub.Commit(
            policy_pb2.CommitRequest(reservation_id=rid, actual_micros=1), metadata=client._metadata
        ),
        client._stub.Release(
            policy_pb2.ReleaseRequest(reservation_id=rid), metadata=client._metadata
        ),
    ):
        assert await refusal(call) == (
            FINAL, f"reservation_id: {rid!r} is already released; a settled reservation is final"
        )  # fmt: skip
    assert await client.release(rid) is None, "the client reads a repeated release as done"
    assert await _standing(client, user) == (0, 0)


async def test_an_expired_reservation_is_final_too(client: PolicyClient) -> None:
    user = new_user()
    rid = await _reserved(client, user, ttl=1)
    await asyncio.sleep(1.2)
    code, details = await refusal(
        client._stub.Commit(
            policy_pb2.CommitRequest(reservation_id=rid, actual_micros=1), metadata=client._metadata
        )
    )
    assert code == FINAL
    assert details.startswith(f"reservation_id: {rid!r} is already expired (at ")
    assert await client.release(rid) is None, "nothing is held any more"
    assert await _standing(client, user) == (0, 0)
