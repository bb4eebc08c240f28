"""A limit change reaches every policy replica at once (NOTIFY), not at the next poll."""

from __future__ import annotations

import asyncio
import json
import uuid

import asyncpg
import pytest

from devtools.localinfra.stack import Infra
from quartermaster.db import connect_pool
from quartermaster.v1 import policy_pb2, policy_pb2_grpc
from services.policy import wiring
from services.policy.decide import Enforcement
from services.policy.settings import PolicySettings
from services.policy.stores.limits import LimitStore
from tests.helpers import channel

pytestmark = pytest.mark.infra


async def test_a_new_default_shows_on_two_replicas_long_before_their_poll(
    infra: Infra, service_env: dict[str, str]
) -> None:
    workspace = f"ws-prop-{uuid.uuid4().hex[:6]}"
    pool = await connect_pool(infra.database_url)
    replicas = []
    try:
        await LimitStore(pool, workspace).set_workspace_default(5_000_000, Enforcement.HARD, "t")
        env = {**service_env, "QM_WORKSPACE_ID": workspace, "QM_POLICY_REFRESH_SECONDS": "60"}
        for _ in range(2):
            r = await wiring.start(PolicySettings.from_env(env), addr="127.0.0.1:0")
            await asyncio.wait_for(r.serving.wait(), 60)
            replicas.append(r)

        async def limits() -> list[int]:
            out = []
            for r in replicas:
                async with channel(f"127.0.0.1:{r.port}", "reader") as ch:
                    stub = policy_pb2_grpc.PolicyServiceStub(ch)
                    b = await stub.GetBudget(policy_pb2.GetBudgetRequest(user_id="x"))
                    out.append(b.limit_micros)
            return out

        assert await limits() == [5_000_000, 5_000_000]
        await LimitStore(pool, workspace).set_workspace_default(
            7_000_000, Enforcement.SOFT, "admin@x"
        )
        deadline = asyncio.get_running_loop().time() + 5  # the poll would take 60 s
        while await limits() != [7_000_000, 7_000_000]:
            assert asyncio.get_running_loop().time() < deadline, await limits()
            await asyncio.sleep(0.01)

        conn = await asyncpg.connect(infra.database_url)
        try:
            rows = await conn.fetch(
                "SELECT actor, action, before, after FROM policy.audit_log"
                " WHERE subject = $1 ORDER BY id",
                f"workspace:{workspace}",
            )
        finally:
            await conn.close()
        assert [(r["actor"], r["action"]) for r in rows] == [
            ("t", "workspace.default_limit.set"),
            ("admin@x", "workspace.default_limit.set"),
        ]
        assert json.loads(rows[1]["before"]) == {
            "default_limit_micros": 5_000_000, "period": "month", "enforcement": "hard"
        }  # fmt: skip
        assert json.loads(rows[1]["after"]) == {
            "default_limit_micros": 7_000_000, "period": "month", "enforcement": "soft"
        }  # fmt: skip
    finally:
        for r in replicas:
            await r.stop(1)
        await pool.close()
