"""A new workspace for a policy test of its own: its id, with a default limit set."""

from __future__ import annotations

import uuid

from quartermaster.db import connect_pool
from services.policy.decide import Enforcement
from services.policy.stores.limits import LimitStore


async def new_workspace(database_url: str, limit_micros: int) -> str:
    """A workspace id no other test uses, its hard workspace default `limit_micros`
    micro-credits, written to the PostgreSQL at `database_url`."""
    workspace = f"ws-{uuid.uuid4().hex[:8]}"
    pool = await connect_pool(database_url)
    try:
        await LimitStore(pool, workspace).set_workspace_default(
            limit_micros, Enforcement.HARD, "tests"
        )
    finally:
        await pool.close()
    return workspace
