"""Loading a workspace's snapshot: its rules and its directory, read consistently.

Check answers from the snapshot in memory; this is how it gets there. A load reads
in one repeatable-read transaction (a consistent picture even while an import
runs) and keeps the previous snapshot's directory when it has not changed.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Mapping
from typing import Any

import asyncpg

from quartermaster.periods import PeriodKind
from services.policy.decide import Enforcement
from services.policy.directory import Directory, GroupInfo, UserInfo
from services.policy.model_rules import ModelPolicy
from services.policy.rules import Override, Rule, Snapshot
from services.policy.stores.limits import override_of


class SnapshotStore:
    """Reads one workspace's snapshot and its config_version (asyncpg errors when
    Postgres is away)."""

    def __init__(self, pool: asyncpg.Pool, workspace_id: str) -> None:
        self._pool = pool
        self.workspace_id = workspace_id

    async def config_version(self) -> int | None:
        """The workspace's config_version (None: no such workspace yet)."""
        return await self._pool.fetchval(  # type: ignore[no-any-return]
            "SELECT config_version FROM policy.workspaces WHERE workspace_id = $1",
            self.workspace_id,
        )

    async def load(self, previous: Snapshot | None = None) -> Snapshot:
        """Everything Check needs about the workspace. The directory (people, groups,
        memberships) is taken from `previous` when it has not changed since: a change
        of limits then reads only the rules."""
        return await load_snapshot(self._pool, self.workspace_id, previous)


def _rule(micros: int | None, period: str, enforcement: str) -> Rule | None:
    if micros is None:
        return None
    return Rule(micros, PeriodKind(period), Enforcement(enforcement))


def _limits(rows: Iterable[Mapping[str, Any]], scope: str) -> dict[str, Rule]:
    """group_id → its rule, of the group_limits rows of one scope ("member", "pool")."""
    return {
        r["group_id"]: Rule(
            r["limit_micros"], PeriodKind(r["period"]), Enforcement(r["enforcement"])
        )
        for r in rows
        if r["scope"] == scope
    }


async def load_snapshot(
    pool: asyncpg.Pool, workspace_id: str, previous: Snapshot | None = None
) -> Snapshot:
    """Everything Check needs about one workspace (SnapshotStore.load), read in one
    repeatable-read transaction (a consistent picture even while an import runs). The directory
    (people, groups, memberships) is taken from `previous` when it has not changed
    since: a change of limits then reads only the rules."""
    async with pool.acquire() as conn, conn.transaction(isolation="repeatable_read"):
        ws = await conn.fetchrow(
            "SELECT default_limit_micros, period, enforcement, config_version,"
            " directory_version FROM policy.workspaces WHERE workspace_id = $1",
            workspace_id,
        )
        directory = ws["directory_version"] if ws else 0
        if previous is not None and previous.directory_version == directory:
            known = previous.directory()
        else:
            known = await _load_directory(conn, workspace_id)
        limits = await conn.fetch(
            "SELECT group_id, scope, limit_micros, period, enforcement"
            " FROM policy.group_limits WHERE workspace_id = $1",
            workspace_id,
        )
        overrides = await conn.fetch(
            "SELECT * FROM policy.overrides WHERE workspace_id = $1 AND removed_at IS NULL"
            " AND (expires_at IS NULL OR expires_at > now()) ORDER BY created_at",
            workspace_id,
        )
        models = await conn.fetch(
            "SELECT group_id, allowed_models, fallback_model, fallback_at_percent"
            " FROM policy.model_policies WHERE workspace_id = $1",
            workspace_id,
        )
    by_user: dict[str, list[Override]] = {}
    for r in overrides:
        by_user.setdefault(r["user_id"], []).append(override_of(r))
    return Snapshot(
        workspace_id=workspace_id,
        default=_rule(ws["default_limit_micros"], ws["period"], ws["enforcement"]) if ws else None,
        users=known.users,
        groups=known.groups,
        memberships=known.memberships,
        member_limits=_limits(limits, "member"),
        pool_limits=_limits(limits, "pool"),
        overrides={u: tuple(os_) for u, os_ in by_user.items()},
        model_policies={
            r["group_id"]: ModelPolicy(
                r["group_id"],
                frozenset(r["allowed_models"]),
                r["fallback_model"] or "",
                r["fallback_at_percent"],
            )
            for r in models
        },
        version=ws["config_version"] if ws else 0,
        directory_version=directory,
        _known=known,
    )


async def _load_directory(conn: asyncpg.Connection, workspace_id: str) -> Directory:
    users = await conn.fetch(
        "SELECT user_id, email, display_name, slack_user_id, manager_id"
        " FROM policy.users WHERE workspace_id = $1",
        workspace_id,
    )
    groups = await conn.fetch(
        "SELECT g.group_id, g.name, g.kind, g.parent_id, g.cost_center,"
        " coalesce(array_agg(a.user_id ORDER BY a.user_id)"
        "          FILTER (WHERE a.user_id IS NOT NULL), '{}') AS admins"
        " FROM policy.groups g LEFT JOIN policy.group_admins a"
        "   ON a.workspace_id = g.workspace_id AND a.group_id = g.group_id"
        " WHERE g.workspace_id = $1 GROUP BY g.group_id, g.name, g.kind, g.parent_id,"
        " g.cost_center",
        workspace_id,
    )
    members = await conn.fetch(
        "SELECT user_id, array_agg(group_id ORDER BY group_id) AS groups"
        " FROM policy.memberships WHERE workspace_id = $1 GROUP BY user_id",
        workspace_id,
    )
    # Building 100,000 people's objects takes ~0.2 s of CPU: off the event loop, so
    # Checks keep being answered meanwhile (they share the GIL, in 5 ms turns).
    return await asyncio.to_thread(_directory, users, groups, members)


def _directory(
    users: Iterable[Mapping[str, Any]],
    groups: Iterable[Mapping[str, Any]],
    members: Iterable[Mapping[str, Any]],
) -> Directory:
    return Directory(
        users={
            r["user_id"]: UserInfo(
                r["user_id"],
                r["email"] or "",
                r["display_name"] or "",
                r["slack_user_id"] or "",
                r["manager_id"] or "",
            )
            for r in users
        },
        groups={
            r["group_id"]: GroupInfo(
                r["group_id"],
                r["name"],
                r["kind"],
                r["parent_id"] or "",
                r["cost_center"] or "",
                tuple(r["admins"]),
            )
            for r in groups
        },
        memberships={r["user_id"]: tuple(r["groups"]) for r in members},
    )
