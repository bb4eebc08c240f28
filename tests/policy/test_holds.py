"""Many open reservations (issue 14): one gateway token sending Reserves for one user
made every Reserve read all that user's holds (and their pools') into Python under
the user's lock, quadratic in the holds. Now a Reserve sums them in Postgres (one row
comes back, whatever the holds), and a user has at most QM_POLICY_MAX_OPEN_RESERVATIONS
open ones: past them Reserve is refused with RESOURCE_EXHAUSTED, which PolicyClient
raises (a refusal, never the fail mode)."""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import asyncpg
import grpc
import pytest

from devtools.localinfra.stack import Infra
from quartermaster.db import connect_pool
from quartermaster.policy_client import FailMode, PolicyClient
from quartermaster.v1 import policy_pb2
from services.policy.errors import TooMany
from services.policy.reservations import Held
from services.policy.stores.reservations import SUMS, Periods, ReservationStore
from services.policy.wiring import RunningPolicy
from tests.helpers import SERVED_WITHIN_S, TOKENS, new_user
from tests.policy.inprocess import policy_in_process, refused

HOLDS = 2_000
ESTIMATE = 1
KEY = "2026-11"


class Admit:
    admitted = True

    def __init__(self, held: Held) -> None:
        self.held = held


async def _hold(pool: asyncpg.Pool, ws: str, user: str, n: int, pools: list[str]) -> None:
    """`n` open holds of `user`, written straight to the table (as n Reserves would)."""
    await pool.execute(
        "INSERT INTO policy.reservations (reservation_id, workspace_id, user_id, request_id,"
        " pools, estimated_micros, expires_at) SELECT gen_random_uuid(), $1, $2,"
        " $2 || '-' || i, $4, $5, now() + interval '1 hour' FROM generate_series(1, $3) i",
        ws, user, n, pools, ESTIMATE,
    )  # fmt: skip


def _rows_read(plan: dict[str, Any]) -> int:
    """Rows the plan's nodes on policy.reservations produced (each loop counted)."""
    own = plan["Actual Rows"] * plan["Actual Loops"] if plan.get("Relation Name") else 0
    return own + sum(_rows_read(p) for p in plan.get("Plans", ()))


def _scans(plan: dict[str, Any]) -> Iterator[str]:
    if plan.get("Relation Name") == "reservations":
        yield plan["Node Type"]
    for p in plan.get("Plans", ()):
        yield from _scans(p)


@pytest.fixture
async def pg(infra: Infra) -> AsyncIterator[tuple[asyncpg.Pool, str]]:
    """A pool on the session's database and a workspace of the test's own."""
    pool = await connect_pool(infra.database_url)
    ws = f"ws-{uuid.uuid4().hex[:8]}"
    try:
        yield pool, ws
    finally:
        await pool.execute("DELETE FROM policy.reservations WHERE workspace_id = $1", ws)
        await pool.close()


@pytest.mark.infra
async def test_2000_holds_of_one_user_cost_another_users_reserve_nothing(
    pg: tuple[asyncpg.Pool, str],
) -> None:
    pool, ws = pg
    await _hold(pool, ws, "flood", HOLDS, ["big"])
    await pool.execute("ANALYZE policy.reservations")

    async def plan(user: str, pools: list[str]) -> dict[str, Any]:
        got = await pool.fetchval(
            f"EXPLAIN (ANALYZE, FORMAT JSON) {SUMS}",
            ws, user, KEY, pools, [KEY] * len(pools), [], f"r-{user}",
        )  # fmt: skip
        return dict(json.loads(got)[0]["Plan"])

    # Outside the pool: not one of the holds is read.
    outside = await plan("other", [])
    assert _rows_read(outside) == 0
    # In the pool: Postgres adds them up over the open-pools index; none is a row out.
    member = await plan("member", ["big"])
    assert "Seq Scan" not in set(_scans(member))
    store = ReservationStore(pool, ws)
    periods = Periods(KEY, (KEY,), (), max_open=1_000)
    verdict, made, existed = await store.reserve(
        "member", ("big",), "r-member", 5, 60, Admit, periods
    )
    assert verdict is not None
    assert made is not None
    assert not existed
    assert verdict.held == Held(0, {"big": HOLDS * ESTIMATE}, 0)
    # The flooding user is over the cap: refused, naming the user and the count.
    with pytest.raises(TooMany, match=rf"user_id: 'flood' has {HOLDS} open reservations"):
        await store.reserve("flood", ("big",), "r-flood", 5, 60, Admit, periods)


@pytest.mark.infra
async def test_past_the_cap_reserve_is_refused_and_a_fail_open_client_raises(
    infra: Infra, policy_server: RunningPolicy, workspace_id: str
) -> None:
    """The session's server allows 1,000 open reservations a user (the default)."""
    user, pool = new_user(), await connect_pool(infra.database_url)
    try:
        await _hold(pool, workspace_id, user, 1_000, [])
        async with PolicyClient(
            f"127.0.0.1:{policy_server.port}", fail=FailMode.OPEN,
            deadline_s=SERVED_WITHIN_S, token=TOKENS["gateway"],
        ) as client:  # fmt: skip
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await client.reserve(user, "chat", "gpt-5", 1_000, f"r-{uuid.uuid4()}")
            assert client.degraded == 0
        assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert f"user_id: {user!r} has 1000 open reservations" in (info.value.details() or "")
    finally:
        await pool.execute("DELETE FROM policy.reservations WHERE user_id = $1", user)
        await pool.close()


async def test_the_cap_is_told_from_memory_before_postgres() -> None:
    async with policy_in_process(max_open=2) as p:

        def reserve(i: int) -> Any:
            return p.policy.Reserve(
                policy_pb2.ReserveRequest(user_id="ann", product="chat", model="gpt-5",
                                          estimated_micros=10, request_id=f"r{i}")
            )  # fmt: skip

        first = await reserve(1)
        await reserve(2)
        error = await refused(reserve(3))
        assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "user_id: 'ann' has 2 open reservations" in (error.details() or "")
        again = await reserve(1)  # a retry of a made one still answers it
        assert again.reservation_id == first.reservation_id
        other = await p.policy.Reserve(
            policy_pb2.ReserveRequest(user_id="ben", product="chat", model="gpt-5",
                                      estimated_micros=10, request_id="rb")
        )  # fmt: skip
        assert other.reservation_id
