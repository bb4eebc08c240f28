"""The directory in Postgres: users, groups, group admins and memberships.

An import upserts what its document states and leaves everything else alone. It
is checked whole before anything is written, in one transaction with the audit
entry and the NOTIFY (stores.changes); a dry run rolls back, so it reports exactly
what a real run would do.
"""

from __future__ import annotations

from typing import Any

import asyncpg

from services.policy.directory import GROUP_FIELDS, USER_FIELDS, GroupInfo, UserInfo
from services.policy.directory_import import (
    DirectoryDoc,
    ImportResult,
    check_groups,
    membership_changes,
)
from services.policy.errors import NotFound
from services.policy.stores.changes import audit, begin_change, changed


class DirectoryStore:
    """One workspace's directory in Postgres. Raises NotFound / Conflict
    (services.policy.errors) for documents that contradict the directory."""

    def __init__(self, pool: asyncpg.Pool, workspace_id: str) -> None:
        self._pool = pool
        self.workspace_id = workspace_id

    async def user_exists(self, user_id: str) -> bool:
        """Whether the directory in Postgres has the user."""
        found = await self._pool.fetchval(
            "SELECT 1 FROM policy.users WHERE workspace_id = $1 AND user_id = $2",
            self.workspace_id,
            user_id,
        )
        return bool(found)

    async def upsert_user(
        self, user: UserInfo, actor: str = "system", groups: list[str] | None = None
    ) -> ImportResult:
        """Create or update one user (and set their direct groups, when given)."""
        memberships = {user.user_id: groups} if groups is not None else {}
        return await self.apply(DirectoryDoc([user], [], memberships), actor, dry_run=False)

    async def apply(self, doc: DirectoryDoc, actor: str, dry_run: bool) -> ImportResult:
        """Upsert the document's users, groups, memberships and group admins; report
        every change. NotFound when a group it names (as a parent or a membership)
        exists nowhere, Conflict when the groups would form a cycle."""
        result = ImportResult()
        ws = self.workspace_id
        async with self._pool.acquire() as conn:
            tx = conn.transaction()
            await tx.start()
            try:
                await begin_change(conn, ws, actor)
                await self._groups(conn, doc, result)
                await self._users(conn, doc, result)
                if doc.memberships:
                    await self._memberships(conn, doc, result)
                if result.changes:
                    after = {"changes": result.changes[:1000], "change_count": len(result.changes)}
                    await audit(conn, ws, actor, "directory.import", f"workspace:{ws}", None, after)
                    await changed(conn, ws, directory=True)
            except BaseException:
                await tx.rollback()
                raise
            if dry_run:
                await tx.rollback()
            else:
                await tx.commit()
        return result

    async def _groups(
        self, conn: asyncpg.Connection, doc: DirectoryDoc, result: ImportResult
    ) -> None:
        ws = self.workspace_id
        old_groups = {
            r["group_id"]: r
            for r in await conn.fetch(
                "SELECT group_id, name, kind, coalesce(parent_id, '') AS parent_id,"
                " coalesce(cost_center, '') AS cost_center FROM policy.groups"
                " WHERE workspace_id = $1",
                ws,
            )
        }
        for g_id in doc.implicit_groups:
            if g_id not in old_groups and all(g.group_id != g_id for g in doc.groups):
                doc.groups.append(GroupInfo(g_id, g_id))
        parents = {g: r["parent_id"] for g, r in old_groups.items()}
        parents.update({g.group_id: g.parent_id for g in doc.groups})
        check_groups(parents)
        missing = sorted({g for gs in doc.memberships.values() for g in gs} - parents.keys())
        if missing:
            raise NotFound(f"groups: not in the directory or the document: {', '.join(missing)}")
        for g in doc.groups:
            new = {f: getattr(g, f) for f in GROUP_FIELDS}
            old = old_groups.get(g.group_id)
            result.compare("group", g.group_id, old, new, GROUP_FIELDS, f"{g.kind} {g.name!r}")
            await conn.execute(
                "INSERT INTO policy.groups (workspace_id, group_id, name, kind, parent_id,"
                " cost_center) VALUES ($1, $2, $3, $4, $5, $6)"
                " ON CONFLICT (workspace_id, group_id) DO UPDATE SET name = EXCLUDED.name,"
                " kind = EXCLUDED.kind, parent_id = EXCLUDED.parent_id,"
                " cost_center = EXCLUDED.cost_center, updated_at = now()",
                ws, g.group_id, g.name, g.kind, g.parent_id or None, g.cost_center or None,
            )  # fmt: skip
            await self._admins(conn, g, known=old is not None, result=result)

    async def _admins(
        self, conn: asyncpg.Connection, g: GroupInfo, known: bool, result: ImportResult
    ) -> None:
        ws = self.workspace_id
        old_admins = {
            r["user_id"]
            for r in await conn.fetch(
                "DELETE FROM policy.group_admins WHERE workspace_id = $1"
                " AND group_id = $2 RETURNING user_id",
                ws,
                g.group_id,
            )
        }
        if old_admins != set(g.admins) and known:
            result.changes.append(
                f"group {g.group_id}: admins {', '.join(sorted(old_admins)) or '(none)'}"
                f" -> {', '.join(sorted(g.admins)) or '(none)'}"
            )
        await conn.executemany(
            "INSERT INTO policy.group_admins (workspace_id, group_id, user_id) VALUES ($1, $2, $3)",
            [(ws, g.group_id, a) for a in sorted(set(g.admins))],
        )

    async def _users(
        self, conn: asyncpg.Connection, doc: DirectoryDoc, result: ImportResult
    ) -> None:
        ws = self.workspace_id
        old_users: dict[str, Any] = {
            r["user_id"]: r
            for r in await conn.fetch(
                "SELECT user_id, coalesce(email, '') AS email,"
                " coalesce(display_name, '') AS display_name,"
                " coalesce(slack_user_id, '') AS slack_user_id,"
                " coalesce(manager_id, '') AS manager_id FROM policy.users"
                " WHERE workspace_id = $1 AND user_id = ANY($2)",
                ws,
                [u.user_id for u in doc.users],
            )
        }
        for u in doc.users:
            new = {f: getattr(u, f) for f in USER_FIELDS}
            created = u.email or "no e-mail"
            result.compare("user", u.user_id, old_users.get(u.user_id), new, USER_FIELDS, created)
        await conn.executemany(
            "INSERT INTO policy.users (workspace_id, user_id, email, display_name,"
            " slack_user_id, manager_id) VALUES ($1, $2, $3, $4, $5, $6)"
            " ON CONFLICT (workspace_id, user_id) DO UPDATE SET email = EXCLUDED.email,"
            " display_name = EXCLUDED.display_name, slack_user_id = EXCLUDED.slack_user_id,"
            " manager_id = EXCLUDED.manager_id, updated_at = now()",
            [
                (ws, u.user_id, u.email or None, u.display_name or None,
                 u.slack_user_id or None, u.manager_id or None)
                for u in doc.users
            ],
        )  # fmt: skip

    async def _memberships(
        self, conn: asyncpg.Connection, doc: DirectoryDoc, result: ImportResult
    ) -> None:
        ws = self.workspace_id
        current: dict[str, set[str]] = {}
        for r in await conn.fetch(
            "SELECT user_id, group_id FROM policy.memberships"
            " WHERE workspace_id = $1 AND user_id = ANY($2)",
            ws,
            list(doc.memberships),
        ):
            current.setdefault(r["user_id"], set()).add(r["group_id"])
        adds, removes = membership_changes(current, doc.memberships, result)
        await conn.executemany(
            "INSERT INTO policy.memberships (workspace_id, user_id, group_id) VALUES ($1, $2, $3)",
            [(ws, u, g) for u, g in adds],
        )
        await conn.executemany(
            "DELETE FROM policy.memberships WHERE workspace_id = $1 AND user_id = $2"
            " AND group_id = $3",
            [(ws, u, g) for u, g in removes],
        )
