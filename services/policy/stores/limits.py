"""policy's Postgres adapter: limits, the directory, reservations and the audit log.

Every change to limits or the directory runs in one transaction that also appends
to the audit log (who, what, before, after), moves the workspace's config_version
and NOTIFYs every replica; so a change is either everywhere (audited) or nowhere.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol, TypeVar

import asyncpg

from quartermaster.periods import PeriodKind
from services.policy.decide import Enforcement
from services.policy.rules import (
    Directory,
    GroupInfo,
    ModelPolicy,
    Override,
    Rule,
    Snapshot,
    UserInfo,
)

# NOTIFY channels: every replica reloads its snapshot / holds when it hears them.
CHANGED_CHANNEL = "qm_policy_limits_changed"
HOLDS_CHANNEL = "qm_policy_holds_changed"
GROUP_KINDS = ("department", "team", "project", "cost_center", "group")


class Admission(Protocol):
    @property
    def admitted(self) -> bool: ...


V = TypeVar("V", bound=Admission)


class NotFound(LookupError):
    """The subject of a change does not exist."""


class Conflict(ValueError):
    """The change contradicts the current state (e.g. a group cycle)."""


# -- reading -----------------------------------------------------------------------


async def config_version(pool: asyncpg.Pool, workspace_id: str) -> int | None:
    return await pool.fetchval(  # type: ignore[no-any-return]
        "SELECT config_version FROM policy.workspaces WHERE workspace_id = $1", workspace_id
    )


def _rule(micros: int | None, period: str, enforcement: str) -> Rule | None:
    if micros is None:
        return None
    return Rule(micros, PeriodKind(period), Enforcement(enforcement))


def _override(r: Mapping[str, Any]) -> Override:
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


async def load_snapshot(
    pool: asyncpg.Pool, workspace_id: str, previous: Snapshot | None = None
) -> Snapshot:
    """Everything Check needs about one workspace, read in one repeatable-read
    transaction (a consistent picture even while an import runs). The directory
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
        by_user.setdefault(r["user_id"], []).append(_override(r))
    return Snapshot(
        workspace_id=workspace_id,
        default=_rule(ws["default_limit_micros"], ws["period"], ws["enforcement"]) if ws else None,
        users=known.users,
        groups=known.groups,
        memberships=known.memberships,
        member_limits={
            r["group_id"]: Rule(
                r["limit_micros"], PeriodKind(r["period"]), Enforcement(r["enforcement"])
            )
            for r in limits
            if r["scope"] == "member"
        },
        pool_limits={
            r["group_id"]: Rule(
                r["limit_micros"], PeriodKind(r["period"]), Enforcement(r["enforcement"])
            )
            for r in limits
            if r["scope"] == "pool"
        },
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


# -- changing ------------------------------------------------------------------------


async def _begin_change(conn: asyncpg.Connection, workspace_id: str, actor: str) -> None:
    """Make sure the workspace exists and serialize changes to it."""
    await conn.execute(
        "INSERT INTO policy.workspaces (workspace_id, updated_by) VALUES ($1, $2)"
        " ON CONFLICT (workspace_id) DO NOTHING",
        workspace_id,
        actor,
    )
    await conn.execute(
        "SELECT 1 FROM policy.workspaces WHERE workspace_id = $1 FOR UPDATE", workspace_id
    )


async def _audit(
    conn: asyncpg.Connection, workspace_id: str, actor: str, action: str, subject: str,
    before: Mapping[str, Any] | None, after: Mapping[str, Any] | None,
) -> None:  # fmt: skip
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


async def _changed(conn: asyncpg.Connection, workspace_id: str, directory: bool = False) -> None:
    """Move the workspace's config_version (and directory_version, for a change to
    the directory) and tell every replica."""
    await conn.execute(
        "UPDATE policy.workspaces SET config_version = config_version + 1,"
        " directory_version = directory_version + $2::int WHERE workspace_id = $1",
        workspace_id,
        int(directory),
    )
    # Delivered at commit, to every listening replica.
    await conn.execute("SELECT pg_notify($1, $2)", CHANGED_CHANNEL, workspace_id)


async def set_workspace_default(
    pool: asyncpg.Pool, workspace_id: str, limit_micros: int, enforcement: Enforcement,
    actor: str, period: PeriodKind = PeriodKind.MONTH,
) -> dict[str, Any]:  # fmt: skip
    """Set the workspace default; returns the new rule (with updated_at/updated_by)."""
    async with pool.acquire() as conn, conn.transaction():
        await _begin_change(conn, workspace_id, actor)
        before = await conn.fetchrow(
            "SELECT default_limit_micros, period, enforcement FROM policy.workspaces"
            " WHERE workspace_id = $1",
            workspace_id,
        )
        row = await conn.fetchrow(
            "UPDATE policy.workspaces SET default_limit_micros = $2, period = $3,"
            " enforcement = $4, updated_at = now(), updated_by = $5 WHERE workspace_id = $1"
            " RETURNING default_limit_micros, period, enforcement, updated_at, updated_by",
            workspace_id,
            limit_micros,
            period.value,
            enforcement.value,
            actor,
        )
        after = {"default_limit_micros": limit_micros, "period": period.value,
                 "enforcement": enforcement.value}  # fmt: skip
        had = before is not None and before["default_limit_micros"] is not None
        await _audit(
            conn, workspace_id, actor, "workspace.default_limit.set",
            f"workspace:{workspace_id}", dict(before) if had else None, after,
        )  # fmt: skip
        await _changed(conn, workspace_id)
        return dict(row)


async def _group_exists(conn: asyncpg.Connection, workspace_id: str, group_id: str) -> None:
    found = await conn.fetchval(
        "SELECT 1 FROM policy.groups WHERE workspace_id = $1 AND group_id = $2",
        workspace_id,
        group_id,
    )
    if not found:
        raise NotFound(f"group_id: no group {group_id!r} in the directory")


_LIMIT_COLS = "limit_micros, period, enforcement, updated_at, updated_by"


async def set_group_limit(
    pool: asyncpg.Pool, workspace_id: str, group_id: str, scope: str, rule: Rule, actor: str
) -> dict[str, Any]:
    async with pool.acquire() as conn, conn.transaction():
        await _begin_change(conn, workspace_id, actor)
        await _group_exists(conn, workspace_id, group_id)
        before = await conn.fetchrow(
            f"SELECT {_LIMIT_COLS} FROM policy.group_limits"
            " WHERE workspace_id = $1 AND group_id = $2 AND scope = $3",
            workspace_id, group_id, scope,
        )  # fmt: skip
        row = await conn.fetchrow(
            "INSERT INTO policy.group_limits"
            " (workspace_id, group_id, scope, limit_micros, period, enforcement, updated_by)"
            " VALUES ($1, $2, $3, $4, $5, $6, $7)"
            " ON CONFLICT (workspace_id, group_id, scope) DO UPDATE SET"
            " limit_micros = EXCLUDED.limit_micros, period = EXCLUDED.period,"
            " enforcement = EXCLUDED.enforcement, updated_at = now(),"
            f" updated_by = EXCLUDED.updated_by RETURNING {_LIMIT_COLS}",
            workspace_id, group_id, scope, rule.micros, rule.period.value,
            rule.enforcement.value, actor,
        )  # fmt: skip
        after = {"limit_micros": rule.micros, "period": rule.period.value,
                 "enforcement": rule.enforcement.value}  # fmt: skip
        await _audit(
            conn, workspace_id, actor, f"group.{scope}_limit.set", f"group:{group_id}",
            _limit_fields(before), after,
        )  # fmt: skip
        await _changed(conn, workspace_id)
        return dict(row)


def _limit_fields(row: asyncpg.Record | None) -> dict[str, Any] | None:
    if row is None:
        return None
    return {k: row[k] for k in ("limit_micros", "period", "enforcement")}


async def remove_group_limit(
    pool: asyncpg.Pool, workspace_id: str, group_id: str, scope: str, actor: str
) -> dict[str, Any]:
    async with pool.acquire() as conn, conn.transaction():
        await _begin_change(conn, workspace_id, actor)
        before = await conn.fetchrow(
            f"DELETE FROM policy.group_limits WHERE workspace_id = $1 AND group_id = $2"
            f" AND scope = $3 RETURNING {_LIMIT_COLS}",
            workspace_id, group_id, scope,
        )  # fmt: skip
        if before is None:
            raise NotFound(f"group_id: {group_id!r} has no {scope} limit")
        await _audit(
            conn, workspace_id, actor, f"group.{scope}_limit.remove", f"group:{group_id}",
            _limit_fields(before), None,
        )  # fmt: skip
        await _changed(conn, workspace_id)
        return dict(before)


_OVERRIDE_AUDIT = ("user_id", "additive", "limit_micros", "period", "enforcement",
                   "reason", "starts_at", "expires_at", "review_at", "request_id")  # fmt: skip


async def set_override(
    pool: asyncpg.Pool, workspace_id: str, o: Override, actor: str
) -> tuple[dict[str, Any], bool]:
    """Create or replace an override; (its row, created). An override carrying a
    request_id that already installed one is returned unchanged (created False)."""
    async with pool.acquire() as conn, conn.transaction():
        await _begin_change(conn, workspace_id, actor)
        if o.request_id:
            same = await conn.fetchrow(
                "SELECT * FROM policy.overrides WHERE workspace_id = $1 AND request_id = $2",
                workspace_id,
                o.request_id,
            )
            if same is not None:
                return dict(same), False
        override_id = o.override_id or f"ov-{uuid.uuid4().hex[:12]}"
        before = await conn.fetchrow(
            "SELECT * FROM policy.overrides WHERE workspace_id = $1 AND override_id = $2",
            workspace_id,
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
            workspace_id, override_id, o.user_id, o.additive, o.micros,
            o.period.value if o.period else None,
            o.enforcement.value if o.enforcement else None,
            o.granted_by, o.reason, o.starts_at, o.expires_at, o.review_at,
            o.request_id or None,
        )  # fmt: skip
        assert row is not None
        action = "override.set" if o.request_id is None else "override.approved_request"
        await _audit(
            conn, workspace_id, actor, action, f"override:{override_id}",
            {k: before[k] for k in _OVERRIDE_AUDIT} if before is not None else None,
            {k: row[k] for k in _OVERRIDE_AUDIT},
        )  # fmt: skip
        await _changed(conn, workspace_id)
        return dict(row), True


async def remove_override(
    pool: asyncpg.Pool, workspace_id: str, override_id: str, reason: str, actor: str
) -> dict[str, Any]:
    async with pool.acquire() as conn, conn.transaction():
        await _begin_change(conn, workspace_id, actor)
        row = await conn.fetchrow(
            "UPDATE policy.overrides SET removed_at = now(), removed_by = $3"
            " WHERE workspace_id = $1 AND override_id = $2 AND removed_at IS NULL RETURNING *",
            workspace_id,
            override_id,
            actor,
        )
        if row is None:
            raise NotFound(f"override_id: no active override {override_id!r}")
        await _audit(
            conn, workspace_id, actor, "override.remove", f"override:{override_id}",
            {k: row[k] for k in _OVERRIDE_AUDIT}, {"removed": True, "reason": reason},
        )  # fmt: skip
        await _changed(conn, workspace_id)
        return dict(row)


async def set_model_policy(
    pool: asyncpg.Pool, workspace_id: str, policy: ModelPolicy | None, group_id: str, actor: str
) -> None:
    """Set the group's model policy, or remove it (policy None)."""
    async with pool.acquire() as conn, conn.transaction():
        await _begin_change(conn, workspace_id, actor)
        await _group_exists(conn, workspace_id, group_id)
        before = await conn.fetchrow(
            "DELETE FROM policy.model_policies WHERE workspace_id = $1 AND group_id = $2"
            " RETURNING allowed_models, fallback_model, fallback_at_percent",
            workspace_id,
            group_id,
        )
        after = None
        if policy is not None:
            allowed = sorted(policy.allowed)
            await conn.execute(
                "INSERT INTO policy.model_policies (workspace_id, group_id, allowed_models,"
                " fallback_model, fallback_at_percent, updated_by)"
                " VALUES ($1, $2, $3, $4, $5, $6)",
                workspace_id, group_id, allowed, policy.fallback_model or None,
                policy.fallback_at_percent, actor,
            )  # fmt: skip
            after = {"allowed_models": allowed, "fallback_model": policy.fallback_model,
                     "fallback_at_percent": policy.fallback_at_percent}  # fmt: skip
        elif before is None:
            raise NotFound(f"group_id: {group_id!r} has no model policy")
        await _audit(
            conn, workspace_id, actor,
            "group.model_policy.set" if policy is not None else "group.model_policy.remove",
            f"group:{group_id}", dict(before) if before is not None else None, after,
        )  # fmt: skip
        await _changed(conn, workspace_id)


# -- the directory -----------------------------------------------------------------


@dataclass
class DirectoryDoc:
    """A directory document (import or single upserts): what to make true."""

    users: list[UserInfo]
    groups: list[GroupInfo]
    # user_id → direct groups (only for users whose groups the document states)
    memberships: dict[str, list[str]]
    # Groups named only by memberships (a CSV): created when missing.
    implicit_groups: list[str] = field(default_factory=list)


@dataclass
class ImportResult:
    users_created: int = 0
    users_updated: int = 0
    users_unchanged: int = 0
    groups_created: int = 0
    groups_updated: int = 0
    groups_unchanged: int = 0
    memberships_added: int = 0
    memberships_removed: int = 0
    changes: list[str] | None = None

    def count(self, what: str) -> None:
        setattr(self, what, getattr(self, what) + 1)


_USER_FIELDS = ("email", "display_name", "slack_user_id", "manager_id")
USER_FIELDS_ALL = ("user_id", *_USER_FIELDS)
_GROUP_FIELDS = ("name", "kind", "parent_id", "cost_center")


def _diff(kind: str, ident: str, old: Mapping[str, Any], new: Mapping[str, Any],
          fields: Iterable[str]) -> list[str]:  # fmt: skip
    return [
        f"{kind} {ident}: {f} {old[f] or '(none)'!s} -> {new[f] or '(none)'!s}"
        for f in fields
        if (old[f] or "") != (new[f] or "")
    ]


def _compare(
    kind: str, ident: str, old: Mapping[str, Any] | None, new: Mapping[str, Any],
    fields: Iterable[str], created: str, changes: list[str],
) -> str:  # fmt: skip
    """ "created", "updated" or "unchanged"; the lines saying what changed go to `changes`."""
    if old is None:
        changes.append(f"{kind} {ident}: created ({created})")
        return "created"
    lines = _diff(kind, ident, old, new, fields)
    changes.extend(lines)
    return "updated" if lines else "unchanged"


async def apply_directory(
    pool: asyncpg.Pool, workspace_id: str, doc: DirectoryDoc, actor: str, dry_run: bool
) -> ImportResult:
    """Upsert users, groups, memberships and group admins; report every change.

    Users and groups the document does not mention are left alone. Everything is
    checked before anything is written (one transaction; a dry run rolls back)."""
    result = ImportResult(changes=[])
    changes = result.changes
    assert changes is not None
    async with pool.acquire() as conn:
        tx = conn.transaction()
        await tx.start()
        try:
            await _begin_change(conn, workspace_id, actor)
            old_groups = {
                r["group_id"]: r
                for r in await conn.fetch(
                    "SELECT group_id, name, kind, coalesce(parent_id, '') AS parent_id,"
                    " coalesce(cost_center, '') AS cost_center FROM policy.groups"
                    " WHERE workspace_id = $1",
                    workspace_id,
                )
            }
            for g_id in doc.implicit_groups:
                if g_id not in old_groups and all(g.group_id != g_id for g in doc.groups):
                    doc.groups.append(GroupInfo(g_id, g_id))
            parents = {g: r["parent_id"] for g, r in old_groups.items()}
            parents.update({g.group_id: g.parent_id for g in doc.groups})
            _check_groups(parents)
            missing = sorted({g for gs in doc.memberships.values() for g in gs} - parents.keys())
            if missing:
                raise NotFound(
                    f"groups: not in the directory or the document: {', '.join(missing)}"
                )
            for g in doc.groups:
                new = {"name": g.name, "kind": g.kind, "parent_id": g.parent_id,
                       "cost_center": g.cost_center}  # fmt: skip
                old = old_groups.get(g.group_id)
                outcome = _compare("group", g.group_id, old, new, _GROUP_FIELDS,
                                   f"{g.kind} {g.name!r}", changes)  # fmt: skip
                result.count(f"groups_{outcome}")
                await conn.execute(
                    "INSERT INTO policy.groups (workspace_id, group_id, name, kind, parent_id,"
                    " cost_center) VALUES ($1, $2, $3, $4, $5, $6)"
                    " ON CONFLICT (workspace_id, group_id) DO UPDATE SET name = EXCLUDED.name,"
                    " kind = EXCLUDED.kind, parent_id = EXCLUDED.parent_id,"
                    " cost_center = EXCLUDED.cost_center, updated_at = now()",
                    workspace_id, g.group_id, g.name, g.kind, g.parent_id or None,
                    g.cost_center or None,
                )  # fmt: skip
                old_admins = {
                    r["user_id"]
                    for r in await conn.fetch(
                        "DELETE FROM policy.group_admins WHERE workspace_id = $1"
                        " AND group_id = $2 RETURNING user_id",
                        workspace_id,
                        g.group_id,
                    )
                }
                if old_admins != set(g.admins) and old is not None:
                    changes.append(
                        f"group {g.group_id}: admins {', '.join(sorted(old_admins)) or '(none)'}"
                        f" -> {', '.join(sorted(g.admins)) or '(none)'}"
                    )
                await conn.executemany(
                    "INSERT INTO policy.group_admins (workspace_id, group_id, user_id)"
                    " VALUES ($1, $2, $3)",
                    [(workspace_id, g.group_id, a) for a in sorted(set(g.admins))],
                )
            old_users = {
                r["user_id"]: r
                for r in await conn.fetch(
                    "SELECT user_id, coalesce(email, '') AS email,"
                    " coalesce(display_name, '') AS display_name,"
                    " coalesce(slack_user_id, '') AS slack_user_id,"
                    " coalesce(manager_id, '') AS manager_id FROM policy.users"
                    " WHERE workspace_id = $1 AND user_id = ANY($2)",
                    workspace_id,
                    [u.user_id for u in doc.users],
                )
            }
            for u in doc.users:
                new = {f: getattr(u, f) for f in _USER_FIELDS}
                outcome = _compare("user", u.user_id, old_users.get(u.user_id), new,
                                   _USER_FIELDS, u.email or "no e-mail", changes)  # fmt: skip
                result.count(f"users_{outcome}")
            await conn.executemany(
                "INSERT INTO policy.users (workspace_id, user_id, email, display_name,"
                " slack_user_id, manager_id) VALUES ($1, $2, $3, $4, $5, $6)"
                " ON CONFLICT (workspace_id, user_id) DO UPDATE SET email = EXCLUDED.email,"
                " display_name = EXCLUDED.display_name, slack_user_id = EXCLUDED.slack_user_id,"
                " manager_id = EXCLUDED.manager_id, updated_at = now()",
                [
                    (
                        workspace_id,
                        u.user_id,
                        u.email or None,
                        u.display_name or None,
                        u.slack_user_id or None,
                        u.manager_id or None,
                    )
                    for u in doc.users
                ],
            )
            if doc.memberships:
                current: dict[str, set[str]] = {}
                for r in await conn.fetch(
                    "SELECT user_id, group_id FROM policy.memberships"
                    " WHERE workspace_id = $1 AND user_id = ANY($2)",
                    workspace_id,
                    list(doc.memberships),
                ):
                    current.setdefault(r["user_id"], set()).add(r["group_id"])
                adds, removes = [], []
                for user_id, groups in doc.memberships.items():
                    have, want = current.get(user_id, set()), set(groups)
                    for gid in sorted(want - have):
                        adds.append((workspace_id, user_id, gid))
                        changes.append(f"user {user_id}: joined {gid}")
                    for gid in sorted(have - want):
                        removes.append((workspace_id, user_id, gid))
                        changes.append(f"user {user_id}: left {gid}")
                await conn.executemany(
                    "INSERT INTO policy.memberships (workspace_id, user_id, group_id)"
                    " VALUES ($1, $2, $3)",
                    adds,
                )
                await conn.executemany(
                    "DELETE FROM policy.memberships WHERE workspace_id = $1 AND user_id = $2"
                    " AND group_id = $3",
                    removes,
                )
                result.memberships_added, result.memberships_removed = len(adds), len(removes)
            if changes:
                await _audit(
                    conn, workspace_id, actor, "directory.import", f"workspace:{workspace_id}",
                    None, {"changes": changes[:1000], "change_count": len(changes)},
                )  # fmt: skip
                await _changed(conn, workspace_id, directory=True)
        except BaseException:
            await tx.rollback()
            raise
        if dry_run:
            await tx.rollback()
        else:
            await tx.commit()
    return result


def _check_groups(parents: Mapping[str, str]) -> None:
    """Every parent exists and no group is its own ancestor."""
    for g, p in parents.items():
        if p and p not in parents:
            raise NotFound(f"group {g}: parent {p!r} is not in the directory or the document")
    for g in parents:
        seen = {g}
        p = parents[g]
        while p:
            if p in seen:
                raise Conflict(f"group {g}: its parents form a cycle through {p!r}")
            seen.add(p)
            p = parents.get(p, "")


async def upsert_user(
    pool: asyncpg.Pool, workspace_id: str, user_id: str, email: str, display_name: str,
    actor: str = "system", slack_user_id: str = "", manager_id: str = "",
) -> ImportResult:  # fmt: skip
    user = UserInfo(user_id, email, display_name, slack_user_id, manager_id)
    return await apply_directory(pool, workspace_id, DirectoryDoc([user], [], {}), actor, False)


# -- reservations ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Hold:
    reservation_id: str
    user_id: str
    request_id: str
    pools: tuple[str, ...]
    micros: int  # actual when committed, else the estimate
    expires_at: datetime
    estimated_micros: int = 0
    committed: bool = False
    released: bool = False
    # period keys whose total already includes this call (recorded in Postgres)
    settled_in: tuple[str, ...] = ()


def _hold(r: Mapping[str, Any]) -> Hold:
    actual = r["actual_micros"]
    return Hold(
        str(r["reservation_id"]), r["user_id"], r["request_id"], tuple(r["pools"]),
        actual if actual is not None else r["estimated_micros"], r["expires_at"],
        r["estimated_micros"], actual is not None, r["released_at"] is not None,
        tuple(r["settled_periods"]),
    )  # fmt: skip


def hold_payload(workspace_id: str, h: Hold) -> str:
    return json.dumps(
        {
            "w": workspace_id,
            "id": h.reservation_id,
            "u": h.user_id,
            "r": h.request_id,
            "p": list(h.pools),
            "m": h.micros,
            "x": h.expires_at.isoformat(),
            "gone": h.released,
            "s": list(h.settled_in),
        }
    )


def hold_from_payload(payload: str) -> tuple[str, Hold]:
    d = json.loads(payload)
    return d["w"], Hold(d["id"], d["u"], d["r"], tuple(d["p"]), d["m"],
                datetime.fromisoformat(d["x"]), released=d["gone"],
                settled_in=tuple(d.get("s", ())))  # fmt: skip


async def mark_settled(
    pool: asyncpg.Pool, workspace_id: str, period_key: str, request_ids: list[str]
) -> int:
    """Record that the total of `period_key` includes these requests' usage, on their
    holds (most requests have none); how many holds learnt it now."""
    result = await pool.execute(
        "UPDATE policy.reservations SET settled_periods = array_append(settled_periods, $3)"
        " WHERE workspace_id = $1 AND request_id = ANY($2::text[])"
        " AND NOT ($3 = ANY(settled_periods))",
        workspace_id,
        request_ids,
        period_key,
    )
    return int(result.split()[-1])


async def open_holds(pool: asyncpg.Pool, workspace_id: str) -> list[Hold]:
    rows = await pool.fetch(
        "SELECT * FROM policy.reservations WHERE workspace_id = $1 AND released_at IS NULL"
        " AND expires_at > now()",
        workspace_id,
    )
    return [_hold(r) for r in rows]


async def reserve(
    pool: asyncpg.Pool,
    workspace_id: str,
    user_id: str,
    pools: tuple[str, ...],
    request_id: str,
    estimated: int,
    ttl_seconds: float,
    admit: Callable[[list[Hold]], V],
) -> tuple[V | None, Hold | None, bool]:
    """Under locks on the user and each of their pools (taken in one order on every
    replica), read the open holds and ask `admit(holds)` for a verdict; when it says
    yes (`verdict.admitted`), write the hold. Returns (verdict, hold, existed): a
    request_id that already holds returns that hold unchanged."""
    keys = sorted([f"{workspace_id}\x1fuser\x1f{user_id}"]
                  + [f"{workspace_id}\x1fpool\x1f{g}" for g in pools])  # fmt: skip
    async with pool.acquire() as conn, conn.transaction():
        for k in keys:
            await conn.execute("SELECT pg_advisory_xact_lock(hashtextextended($1, 0))", k)
        same = await conn.fetchrow(
            "SELECT * FROM policy.reservations WHERE workspace_id = $1 AND request_id = $2",
            workspace_id,
            request_id,
        )
        if same is not None:
            return None, _hold(same), True
        rows = await conn.fetch(
            "SELECT * FROM policy.reservations WHERE workspace_id = $1"
            " AND released_at IS NULL AND expires_at > now()"
            " AND (user_id = $2 OR pools && $3::text[])",
            workspace_id,
            user_id,
            list(pools),
        )
        verdict = admit([_hold(r) for r in rows])
        if not verdict.admitted:
            return verdict, None, False
        row = await conn.fetchrow(
            "INSERT INTO policy.reservations (reservation_id, workspace_id, user_id,"
            " request_id, pools, estimated_micros, expires_at)"
            " VALUES ($1, $2, $3, $4, $5, $6, now() + make_interval(secs => $7)) RETURNING *",
            uuid.uuid4(), workspace_id, user_id, request_id, list(pools), estimated,
            float(ttl_seconds),
        )  # fmt: skip
        hold = _hold(row)
        await conn.execute(
            "SELECT pg_notify($1, $2)", HOLDS_CHANNEL, hold_payload(workspace_id, hold)
        )
        return verdict, hold, False


async def settle(
    pool: asyncpg.Pool, workspace_id: str, reservation_id: str, actual: int | None,
    keep_seconds: float,
) -> Hold:  # fmt: skip
    """Commit (actual given: the hold becomes the actual cost, kept `keep_seconds`
    for the usage to reach the totals) or release (actual None) a reservation."""
    try:
        rid = uuid.UUID(reservation_id)
    except ValueError:
        raise NotFound(f"reservation_id: {reservation_id!r} is not a reservation id") from None
    async with pool.acquire() as conn, conn.transaction():
        row = await conn.fetchrow(
            "SELECT * FROM policy.reservations WHERE reservation_id = $1 AND workspace_id = $2"
            " FOR UPDATE",
            rid,
            workspace_id,
        )
        if row is None:
            raise NotFound(f"reservation_id: no reservation {reservation_id!r}")
        if row["released_at"] is not None:
            raise Conflict(f"reservation_id: {reservation_id!r} was already released")
        if actual is None:
            row = await conn.fetchrow(
                "UPDATE policy.reservations SET released_at = now()"
                " WHERE reservation_id = $1 RETURNING *",
                rid,
            )
        else:
            row = await conn.fetchrow(
                "UPDATE policy.reservations SET actual_micros = $2,"
                " expires_at = greatest(expires_at, now() + make_interval(secs => $3))"
                " WHERE reservation_id = $1 RETURNING *",
                rid,
                actual,
                float(keep_seconds),
            )
        hold = _hold(row)
        await conn.execute(
            "SELECT pg_notify($1, $2)", HOLDS_CHANNEL, hold_payload(workspace_id, hold)
        )
        return hold


async def forget_old_holds(pool: asyncpg.Pool, older_than_seconds: float) -> int:
    status: str = await pool.execute(
        "DELETE FROM policy.reservations"
        " WHERE coalesce(released_at, expires_at) < now() - make_interval(secs => $1)",
        float(older_than_seconds),
    )
    return int(status.split()[-1])


# -- threshold notices -------------------------------------------------------------


async def claim_notice(
    pool: asyncpg.Pool, workspace_id: str, subject: str, period_key: str, percent: int
) -> bool:
    """True for exactly one caller (across replicas) per subject, period and percent."""
    got = await pool.fetchval(
        "INSERT INTO policy.threshold_notices (workspace_id, subject, period_key, percent)"
        " VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING RETURNING 1",
        workspace_id,
        subject,
        period_key,
        percent,
    )
    return got is not None
