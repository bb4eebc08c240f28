"""What every change to limits or the directory does in its transaction.

A change runs in one transaction that also appends to the audit log (who, what,
before, after), moves the workspace's config_version and NOTIFYs every replica; so
a change is either everywhere (audited) or nowhere.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from datetime import datetime
from typing import Any

import asyncpg

from services.policy.errors import NotFound

# NOTIFY channel: every replica reloads its snapshot when it hears the workspace's id.
CHANGED_CHANNEL = "qm_policy_limits_changed"


@asynccontextmanager
async def change(
    pool: asyncpg.Pool, workspace_id: str, actor: str
) -> AsyncIterator[asyncpg.Connection]:
    """A connection in a transaction that has begun a change of `workspace_id` by
    `actor` (see begin_change); commits when the block ends, rolls back when it raises."""
    async with pool.acquire() as conn, conn.transaction():
        await begin_change(conn, workspace_id, actor)
        yield conn


async def begin_change(conn: asyncpg.Connection, workspace_id: str, actor: str) -> None:
    """Make sure the workspace exists and serialize changes to it (row lock until
    the transaction ends)."""
    await conn.execute(
        "INSERT INTO policy.workspaces (workspace_id, updated_by) VALUES ($1, $2)"
        " ON CONFLICT (workspace_id) DO NOTHING",
        workspace_id,
        actor,
    )
    await conn.execute(
        "SELECT 1 FROM policy.workspaces WHERE workspace_id = $1 FOR UPDATE", workspace_id
    )


async def audit(
    conn: asyncpg.Connection, workspace_id: str, actor: str, action: str, subject: str,
    before: Mapping[str, Any] | None, after: Mapping[str, Any] | None,
) -> None:  # fmt: skip
    """Append one entry to the audit log (datetimes as ISO strings)."""
    await conn.execute(
        "INSERT INTO policy.audit_log (workspace_id, actor, action, subject, before, after)"
        " VALUES ($1, $2, $3, $4, $5::jsonb, $6::jsonb)",
        workspace_id,
        actor,
        action,
        subject,
        json.dumps(_jsonable(before)) if before is not None else None,
        json.dumps(_jsonable(after)) if after is not None else None,
    )


def _jsonable(d: Mapping[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, datetime):
            v = v.isoformat()
        elif isinstance(v, (list, tuple)):
            v = list(v)
        out[k] = v
    return out


async def changed(conn: asyncpg.Connection, workspace_id: str, directory: bool = False) -> None:
    """Move the workspace's config_version (and directory_version, for a change to
    the directory) and tell every replica (the NOTIFY is delivered at commit)."""
    await conn.execute(
        "UPDATE policy.workspaces SET config_version = config_version + 1,"
        " directory_version = directory_version + $2::int WHERE workspace_id = $1",
        workspace_id,
        int(directory),
    )
    await conn.execute("SELECT pg_notify($1, $2)", CHANGED_CHANNEL, workspace_id)


async def group_exists(conn: asyncpg.Connection, workspace_id: str, group_id: str) -> None:
    """Raises NotFound unless the directory has the group."""
    found = await conn.fetchval(
        "SELECT 1 FROM policy.groups WHERE workspace_id = $1 AND group_id = $2",
        workspace_id,
        group_id,
    )
    if not found:
        raise NotFound(f"group_id: no group {group_id!r} in the directory")
