"""Limits: the workspace default, group limits, overrides and model policies.

Every change runs through stores.changes (audited, config_version moved, every
replica told) in one transaction; a change is either everywhere or nowhere.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from typing import Any

import asyncpg

from quartermaster.periods import PeriodKind
from services.policy.decide import Enforcement
from services.policy.errors import Conflict, NotFound
from services.policy.model_rules import ModelPolicy
from services.policy.rules import Override, Rule
from services.policy.stores.changes import audit, change, changed, group_exists

_LIMIT_COLS = "limit_micros, period, enforcement, updated_at, updated_by"
_OVERRIDE_AUDIT = ("user_id", "additive", "limit_micros", "period", "enforcement",
                   "reason", "starts_at", "expires_at", "review_at", "request_id")  # fmt: skip


def override_of(r: Mapping[str, Any]) -> Override:
    """The Override of a policy.overrides row."""
    return Override(
        override_id=r["override_id"],
        user_id=r["user_id"],
        additive=r["additive"],
        micros=r["limit_micros"],
        period=PeriodKind(r["period"]) if r["period"] else None,
        enforcement=Enforcement(r["enforcement"]) if r["enforcement"] else None,
        granted_by=r["granted_by"],
        reason=r["reason"],
        starts_at=r["starts_at"],
        expires_at=r["expires_at"],
        review_at=r["review_at"],
        request_id=r["request_id"],
    )


def _limit_fields(row: asyncpg.Record | None) -> dict[str, Any] | None:
    if row is None:
        return None
    return {k: row[k] for k in ("limit_micros", "period", "enforcement")}


class LimitStore:
    """The limits of one workspace in Postgres. Rows come back as dicts of the
    table's columns (mapping turns them into messages). Raises NotFound / Conflict
    (services.policy.errors) and asyncpg errors when Postgres is away."""

    def __init__(self, pool: asyncpg.Pool, workspace_id: str) -> None:
        self._pool = pool
        self.workspace_id = workspace_id

    async def set_workspace_default(
        self, limit_micros: int, enforcement: Enforcement,
        actor: str, period: PeriodKind = PeriodKind.MONTH,
    ) -> dict[str, Any]:  # fmt: skip
        """Set the workspace default; returns the new rule (with updated_at/updated_by)."""
        async with change(self._pool, self.workspace_id, actor) as conn:
            before = await conn.fetchrow(
                "SELECT default_limit_micros, period, enforcement FROM policy.workspaces"
                " WHERE workspace_id = $1",
                self.workspace_id,
            )
            row = await conn.fetchrow(
                "UPDATE policy.workspaces SET default_limit_micros = $2, period = $3,"
                " enforcement = $4, updated_at = now(), updated_by = $5 WHERE workspace_id = $1"
                " RETURNING default_limit_micros, period, enforcement, updated_at, updated_by",
                self.workspace_id,
                limit_micros,
                period.value,
                enforcement.value,
                actor,
            )
            after = {"default_limit_micros": limit_micros, "period": period.value,
                     "enforcement": enforcement.value}  # fmt: skip
            had = before is not None and before["default_limit_micros"] is not None
            await audit(
                conn, self.workspace_id, actor, "workspace.default_limit.set",
                f"workspace:{self.workspace_id}", dict(before) if had else None, after,
            )  # fmt: skip
            await changed(conn, self.workspace_id)
            return dict(row)

    async def set_group_limit(
        self, group_id: str, scope: str, rule: Rule, actor: str
    ) -> dict[str, Any]:
        """Set a group's limit for each member (scope "member") or for all of them
        together (scope "pool"); its new row. NotFound when the group does not exist."""
        async with change(self._pool, self.workspace_id, actor) as conn:
            await group_exists(conn, self.workspace_id, group_id)
            before = await conn.fetchrow(
                f"SELECT {_LIMIT_COLS} FROM policy.group_limits"
                " WHERE workspace_id = $1 AND group_id = $2 AND scope = $3",
                self.workspace_id, group_id, scope,
            )  # fmt: skip
            row = await conn.fetchrow(
                "INSERT INTO policy.group_limits"
                " (workspace_id, group_id, scope, limit_micros, period, enforcement, updated_by)"
                " VALUES ($1, $2, $3, $4, $5, $6, $7)"
                " ON CONFLICT (workspace_id, group_id, scope) DO UPDATE SET"
                " limit_micros = EXCLUDED.limit_micros, period = EXCLUDED.period,"
                " enforcement = EXCLUDED.enforcement, updated_at = now(),"
                f" updated_by = EXCLUDED.updated_by RETURNING {_LIMIT_COLS}",
                self.workspace_id, group_id, scope, rule.micros, rule.period.value,
                rule.enforcement.value, actor,
            )  # fmt: skip
            after = {"limit_micros": rule.micros, "period": rule.period.value,
                     "enforcement": rule.enforcement.value}  # fmt: skip
            await audit(
                conn, self.workspace_id, actor, f"group.{scope}_limit.set", f"group:{group_id}",
                _limit_fields(before), after,
            )  # fmt: skip
            await changed(conn, self.workspace_id)
            return dict(row)

    async def remove_group_limit(self, group_id: str, scope: str, actor: str) -> dict[str, Any]:
        """Remove a group's member or pool limit; the removed row (NotFound: none)."""
        async with change(self._pool, self.workspace_id, actor) as conn:
            before = await conn.fetchrow(
                f"DELETE FROM policy.group_limits WHERE workspace_id = $1 AND group_id = $2"
                f" AND scope = $3 RETURNING {_LIMIT_COLS}",
                self.workspace_id, group_id, scope,
            )  # fmt: skip
            if before is None:
                raise NotFound(f"group_id: {group_id!r} has no {scope} limit")
            await audit(
                conn, self.workspace_id, actor, f"group.{scope}_limit.remove", f"group:{group_id}",
                _limit_fields(before), None,
            )  # fmt: skip
            await changed(conn, self.workspace_id)
            return dict(before)

    async def set_override(self, o: Override, actor: str) -> tuple[Override, bool]:
        """Create or replace an override; (its row, created). An override carrying a
        request_id that already installed one is returned unchanged (created False)."""
        async with change(self._pool, self.workspace_id, actor) as conn:
            if o.request_id:
                same = await conn.fetchrow(
                    "SELECT * FROM policy.overrides WHERE workspace_id = $1 AND request_id = $2",
                    self.workspace_id,
                    o.request_id,
                )
                if same is not None:
                    return override_of(same), False
            override_id = o.override_id or f"ov-{uuid.uuid4().hex[:12]}"
            before = await conn.fetchrow(
                "SELECT * FROM policy.overrides WHERE workspace_id = $1 AND override_id = $2",
                self.workspace_id,
                override_id,
            )
            if before is not None and before["user_id"] != o.user_id:
                raise Conflict(
                    f"override_id: {override_id!r} belongs to user {before['user_id']!r}, "
                    f"not {o.user_id!r}"
                )
            row = await conn.fetchrow(
                """
                INSERT INTO policy.overrides
                    (workspace_id, override_id, user_id, additive, limit_micros, period,
                     enforcement, granted_by, reason, starts_at, expires_at, review_at, request_id)
                VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)
                ON CONFLICT (workspace_id, override_id) DO UPDATE SET
                    additive = EXCLUDED.additive, limit_micros = EXCLUDED.limit_micros,
                    period = EXCLUDED.period, enforcement = EXCLUDED.enforcement,
                    granted_by = EXCLUDED.granted_by, reason = EXCLUDED.reason,
                    starts_at = EXCLUDED.starts_at, expires_at = EXCLUDED.expires_at,
                    review_at = EXCLUDED.review_at, removed_at = NULL, removed_by = NULL
                RETURNING *
                """,
                self.workspace_id, override_id, o.user_id, o.additive, o.micros,
                o.period.value if o.period else None,
                o.enforcement.value if o.enforcement else None,
                o.granted_by, o.reason, o.starts_at, o.expires_at, o.review_at,
                o.request_id or None,
            )  # fmt: skip
            assert row is not None
            action = "override.set" if o.request_id is None else "override.approved_request"
            await audit(
                conn, self.workspace_id, actor, action, f"override:{override_id}",
                {k: before[k] for k in _OVERRIDE_AUDIT} if before is not None else None,
                {k: row[k] for k in _OVERRIDE_AUDIT},
            )  # fmt: skip
            await changed(conn, self.workspace_id)
            return override_of(row), True

    async def remove_override(self, override_id: str, reason: str, actor: str) -> Override:
        """End an active override (kept, marked removed); its row (NotFound: none)."""
        async with change(self._pool, self.workspace_id, actor) as conn:
            row = await conn.fetchrow(
                "UPDATE policy.overrides SET removed_at = now(), removed_by = $3"
                " WHERE workspace_id = $1 AND override_id = $2 AND removed_at IS NULL RETURNING *",
                self.workspace_id,
                override_id,
                actor,
            )
            if row is None:
                raise NotFound(f"override_id: no active override {override_id!r}")
            await audit(
                conn, self.workspace_id, actor, "override.remove", f"override:{override_id}",
                {k: row[k] for k in _OVERRIDE_AUDIT}, {"removed": True, "reason": reason},
            )  # fmt: skip
            await changed(conn, self.workspace_id)
            return override_of(row)

    async def set_model_policy(self, policy: ModelPolicy | None, group_id: str, actor: str) -> None:
        """Set the group's model policy, or remove it (policy None)."""
        async with change(self._pool, self.workspace_id, actor) as conn:
            await group_exists(conn, self.workspace_id, group_id)
            before = await conn.fetchrow(
                "DELETE FROM policy.model_policies WHERE workspace_id = $1 AND group_id = $2"
                " RETURNING allowed_models, fallback_model, fallback_at_percent",
                self.workspace_id,
                group_id,
            )
            after = None
            if policy is not None:
                allowed = sorted(policy.allowed)
                await conn.execute(
                    "INSERT INTO policy.model_policies (workspace_id, group_id, allowed_models,"
                    " fallback_model, fallback_at_percent, updated_by)"
                    " VALUES ($1, $2, $3, $4, $5, $6)",
                    self.workspace_id, group_id, allowed, policy.fallback_model or None,
                    policy.fallback_at_percent, actor,
                )  # fmt: skip
                after = {"allowed_models": allowed, "fallback_model": policy.fallback_model,
                         "fallback_at_percent": policy.fallback_at_percent}  # fmt: skip
            elif before is None:
                raise NotFound(f"group_id: {group_id!r} has no model policy")
            await audit(
                conn, self.workspace_id, actor,
                "group.model_policy.set" if policy is not None else "group.model_policy.remove",
                f"group:{group_id}", dict(before) if before is not None else None, after,
            )  # fmt: skip
            await changed(conn, self.workspace_id)

    async def has_override_for(self, request_id: str) -> bool:
        """Whether an override installed for this credit request exists already."""
        found = await self._pool.fetchval(
            "SELECT 1 FROM policy.overrides WHERE workspace_id = $1 AND request_id = $2",
            self.workspace_id,
            request_id,
        )
        return bool(found)

    async def listing(
        self,
    ) -> tuple[dict[str, Any] | None, list[dict[str, Any]], list[Override]]:
        """(the workspace default's row or None when unset, the group limits' rows by
        group and scope, the active overrides by user and age)."""
        async with self._pool.acquire() as conn, conn.transaction(isolation="repeatable_read"):
            ws = await conn.fetchrow(
                "SELECT default_limit_micros, period, enforcement, updated_by, updated_at"
                " FROM policy.workspaces WHERE workspace_id = $1",
                self.workspace_id,
            )
            groups = await conn.fetch(
                "SELECT * FROM policy.group_limits WHERE workspace_id = $1"
                " ORDER BY group_id, scope",
                self.workspace_id,
            )
            overrides = await conn.fetch(
                "SELECT * FROM policy.overrides WHERE workspace_id = $1 AND removed_at IS NULL"
                " AND (expires_at IS NULL OR expires_at > now()) ORDER BY user_id, created_at",
                self.workspace_id,
            )
        default = dict(ws) if ws is not None and ws["default_limit_micros"] is not None else None
        return default, [dict(r) for r in groups], [override_of(r) for r in overrides]
