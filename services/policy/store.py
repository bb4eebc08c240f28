"""policy's Postgres adapter: limits, the directory and the audit log."""

from __future__ import annotations

import json

import asyncpg

from services.policy.decide import Enforcement, Limit

# NOTIFY channel: every replica re-reads limits when it hears it.
CHANGED_CHANNEL = "qm_policy_limits_changed"


async def workspace_limit(pool: asyncpg.Pool, workspace_id: str) -> Limit | None:
    row = await pool.fetchrow(
        "SELECT default_limit_micros, enforcement FROM policy.workspaces WHERE workspace_id = $1",
        workspace_id,
    )
    if row is None:
        return None
    return Limit(row["default_limit_micros"], Enforcement(row["enforcement"]), "workspace_default")


async def set_workspace_default(
    pool: asyncpg.Pool, workspace_id: str, limit_micros: int, enforcement: Enforcement, actor: str
) -> None:
    """Upsert the workspace default and append an audit entry, in one transaction."""
    async with pool.acquire() as conn, conn.transaction():
        before = await conn.fetchrow(
            "SELECT default_limit_micros, enforcement FROM policy.workspaces"
            " WHERE workspace_id = $1 FOR UPDATE",
            workspace_id,
        )
        await conn.execute(
            """
            INSERT INTO policy.workspaces
                (workspace_id, default_limit_micros, enforcement, updated_by)
            VALUES ($1, $2, $3, $4)
            ON CONFLICT (workspace_id) DO UPDATE SET
                default_limit_micros = EXCLUDED.default_limit_micros,
                enforcement = EXCLUDED.enforcement,
                updated_at = now(),
                updated_by = EXCLUDED.updated_by
            """,
            workspace_id,
            limit_micros,
            enforcement.value,
            actor,
        )
        after = {"default_limit_micros": limit_micros, "enforcement": enforcement.value}
        await conn.execute(
            "INSERT INTO policy.audit_log (actor, action, subject, before, after)"
            " VALUES ($1, 'workspace.default_limit.set', $2, $3::jsonb, $4::jsonb)",
            actor,
            f"workspace:{workspace_id}",
            json.dumps(dict(before)) if before is not None else None,
            json.dumps(after),
        )
        # Delivered at commit, to every listening replica.
        await conn.execute("SELECT pg_notify($1, $2)", CHANGED_CHANNEL, workspace_id)


async def upsert_user(
    pool: asyncpg.Pool, workspace_id: str, user_id: str, email: str, display_name: str
) -> None:
    await pool.execute(
        """
        INSERT INTO policy.users (workspace_id, user_id, email, display_name)
        VALUES ($1, $2, $3, $4)
        ON CONFLICT (workspace_id, user_id) DO UPDATE SET
            email = EXCLUDED.email, display_name = EXCLUDED.display_name
        """,
        workspace_id,
        user_id,
        email,
        display_name,
    )
