"""PolicyAdminService (limits, overrides, model policies, the directory) and
DirectoryService (read-only look-ups for the other services).

Admin calls need `authorization: Bearer <token>` naming one of QM_POLICY_ADMIN_TOKENS;
the token's name is the actor in the audit log. Reads of the directory answer from
the replica's snapshot; writes go to Postgres, which tells every replica.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from datetime import UTC, datetime
from typing import Any, TypeVar

import asyncpg
import grpc
from google.protobuf.timestamp_pb2 import Timestamp

from quartermaster.credentials import Credentials
from quartermaster.grpcserver import abort
from quartermaster.money import credits
from quartermaster.periods import PeriodKind
from quartermaster.v1 import policy_pb2, policy_pb2_grpc
from services.policy import store
from services.policy.decide import Enforcement
from services.policy.directory import DirectoryError, group_of, parse, user_of
from services.policy.rules import ModelPolicy, Override, Rule, Snapshot, UserInfo
from services.policy.service import (
    ENFORCEMENTS,
    PERIODS,
    Context,
    LimitHolder,
    id_problems,
    refuse,
    ts,
)

KINDS = {v: k for k, v in PERIODS.items()}
ENFORCEMENT_OF = {v: k for k, v in ENFORCEMENTS.items()}
MAX_MICROS = 10**15  # a billion credits: larger is a typo, not a budget
MAX_REASON = 2000
MAX_DOCUMENT = 32 * 1024 * 1024
T = TypeVar("T")


def _opt_ts(t: Timestamp, has: bool) -> datetime | None:
    return t.ToDatetime(tzinfo=UTC) if has else None


def _period_problems(name: str, value: int, required: bool = True) -> list[str]:
    if value in KINDS or (value == policy_pb2.PERIOD_UNSPECIFIED and not required):
        return []
    return [f"{name}: required, one of PERIOD_DAY, PERIOD_WEEK, PERIOD_MONTH"]


def _enforcement_problems(name: str, value: int, required: bool = True) -> list[str]:
    if value in ENFORCEMENT_OF or (value == policy_pb2.ENFORCEMENT_UNSPECIFIED and not required):
        return []
    return [f"{name}: required, ENFORCEMENT_HARD or ENFORCEMENT_SOFT"]


def _micros_problems(name: str, value: int) -> list[str]:
    if not 0 <= value <= MAX_MICROS:
        return [f"{name}: must be between 0 and {MAX_MICROS}"]
    return []


def limit_rule(
    scope: str, group_id: str, row: Mapping[str, Any], micros_key: str = "limit_micros"
) -> policy_pb2.LimitRule:
    return policy_pb2.LimitRule(
        scope=scope,
        group_id=group_id,
        limit_micros=row[micros_key],
        period=PERIODS[PeriodKind(row["period"])],
        enforcement=ENFORCEMENTS[Enforcement(row["enforcement"])],
        updated_by=row["updated_by"],
        updated_at=ts(row["updated_at"]),
    )


def override_msg(r: Mapping[str, Any]) -> policy_pb2.Override:
    out = policy_pb2.Override(
        override_id=r["override_id"],
        user_id=r["user_id"],
        additive=r["additive"],
        limit_micros=r["limit_micros"],
        granted_by=r["granted_by"],
        reason=r["reason"],
        starts_at=ts(r["starts_at"]),
        request_id=r["request_id"] or "",
        removed=r["removed_at"] is not None,
    )
    if r["period"]:
        out.period = PERIODS[PeriodKind(r["period"])]
    if r["enforcement"]:
        out.enforcement = ENFORCEMENTS[Enforcement(r["enforcement"])]
    if r["expires_at"]:
        out.expires_at.CopyFrom(ts(r["expires_at"]))
    if r["review_at"]:
        out.review_at.CopyFrom(ts(r["review_at"]))
    return out


def model_policy_msg(p: ModelPolicy) -> policy_pb2.ModelPolicy:
    return policy_pb2.ModelPolicy(
        group_id=p.group_id,
        allowed_models=sorted(p.allowed),
        fallback_model=p.fallback_model,
        fallback_at_percent=p.fallback_at_percent,
    )


def user_msg(snap: Snapshot, u: UserInfo) -> policy_pb2.User:
    return policy_pb2.User(
        user_id=u.user_id,
        email=u.email,
        display_name=u.display_name,
        slack_user_id=u.slack_user_id,
        manager_id=u.manager_id,
        group_ids=list(snap.memberships.get(u.user_id, ())),
    )


class PolicyAdminServicer(policy_pb2_grpc.PolicyAdminServiceServicer):
    def __init__(
        self,
        pool: asyncpg.Pool,
        workspace_id: str,
        limits: LimitHolder,
        credentials: Credentials,
        reload: Callable[[], Awaitable[None]],
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self._pool = pool
        self._ws = workspace_id
        self._limits = limits
        self._credentials = credentials
        self._reload = reload
        self._clock = clock

    async def _run(
        self, context: Context, problems: list[str], change: Callable[[str], Awaitable[T]]
    ) -> T:
        """Authenticate, refuse bad input (every problem named), run the change and
        reload this replica's snapshot before answering (read-your-writes)."""
        who = await self._credentials.require(context)
        await refuse(context, problems)
        try:
            out = await change(who)
        except store.NotFound as exc:
            await abort(context, grpc.StatusCode.NOT_FOUND, str(exc))
        except (store.Conflict, DirectoryError) as exc:
            code = (
                grpc.StatusCode.INVALID_ARGUMENT
                if isinstance(exc, DirectoryError)
                else grpc.StatusCode.FAILED_PRECONDITION
            )
            await abort(context, code, str(exc))
        await self._reload()
        return out

    async def SetDefaultLimit(
        self, request: policy_pb2.SetDefaultLimitRequest, context: Context
    ) -> policy_pb2.LimitRule:
        problems = _micros_problems("limit_micros", request.limit_micros)
        problems += _period_problems("period", request.period)
        problems += _enforcement_problems("enforcement", request.enforcement)

        async def change(actor: str) -> policy_pb2.LimitRule:
            row = await store.set_workspace_default(
                self._pool, self._ws, request.limit_micros,
                ENFORCEMENT_OF[request.enforcement], actor, KINDS[request.period],
            )  # fmt: skip
            return limit_rule("workspace", "", row, "default_limit_micros")

        return await self._run(context, problems, change)

    async def SetGroupLimit(
        self, request: policy_pb2.SetGroupLimitRequest, context: Context
    ) -> policy_pb2.LimitRule:
        problems = id_problems("group_id", request.group_id)
        problems += _micros_problems("limit_micros", request.limit_micros)
        problems += _period_problems("period", request.period)
        problems += _enforcement_problems("enforcement", request.enforcement)
        scope = "pool" if request.pooled else "member"

        async def change(actor: str) -> policy_pb2.LimitRule:
            rule = Rule(
                request.limit_micros, KINDS[request.period], ENFORCEMENT_OF[request.enforcement]
            )
            row = await store.set_group_limit(
                self._pool, self._ws, request.group_id, scope, rule, actor
            )
            return limit_rule(f"group_{scope}", request.group_id, row)

        return await self._run(context, problems, change)

    async def RemoveGroupLimit(
        self, request: policy_pb2.RemoveGroupLimitRequest, context: Context
    ) -> policy_pb2.LimitRule:
        scope = "pool" if request.pooled else "member"

        async def change(actor: str) -> policy_pb2.LimitRule:
            row = await store.remove_group_limit(
                self._pool, self._ws, request.group_id, scope, actor
            )
            return limit_rule(f"group_{scope}", request.group_id, row)

        return await self._run(context, id_problems("group_id", request.group_id), change)

    async def SetOverride(
        self, request: policy_pb2.SetOverrideRequest, context: Context
    ) -> policy_pb2.Override:
        o = request.override
        problems = id_problems("override.user_id", o.user_id)
        if o.override_id:
            problems += id_problems("override.override_id", o.override_id)
        problems += _micros_problems("override.limit_micros", o.limit_micros)
        if o.additive and o.limit_micros == 0:
            problems.append("override.limit_micros: an additive override must add something")
        problems += _period_problems("override.period", o.period, required=not o.additive)
        if o.additive and o.period:
            problems.append("override.period: an additive override takes the base limit's period")
        problems += _enforcement_problems("override.enforcement", o.enforcement, required=False)
        if not o.reason.strip():
            problems.append("override.reason: must say why")
        elif len(o.reason) > MAX_REASON:
            problems.append(f"override.reason: longer than {MAX_REASON} characters")
        if o.request_id:
            problems.append("override.request_id: set only by approved credit requests")
        now = self._clock()
        starts = o.starts_at.ToDatetime(tzinfo=UTC) if o.HasField("starts_at") else now
        expires = _opt_ts(o.expires_at, o.HasField("expires_at"))
        review = _opt_ts(o.review_at, o.HasField("review_at"))
        if expires is None and review is None:
            problems.append(
                "override.expires_at: an override needs expires_at (temporary) or"
                " review_at (permanent, reviewed)"
            )
        if expires is not None and expires <= max(starts, now):
            problems.append("override.expires_at: must be after starts_at and in the future")
        if review is not None and review <= now:
            problems.append("override.review_at: must be in the future")

        async def change(actor: str) -> policy_pb2.Override:
            row, _ = await store.set_override(
                self._pool,
                self._ws,
                Override(
                    override_id=o.override_id,
                    user_id=o.user_id,
                    additive=o.additive,
                    micros=o.limit_micros,
                    period=KINDS.get(o.period),
                    enforcement=ENFORCEMENT_OF.get(o.enforcement),
                    granted_by=o.granted_by.strip() or actor,
                    reason=o.reason.strip(),
                    starts_at=starts,
                    expires_at=expires,
                    review_at=review,
                ),
                actor,
            )
            return override_msg(row)

        return await self._run(context, problems, change)

    async def RemoveOverride(
        self, request: policy_pb2.RemoveOverrideRequest, context: Context
    ) -> policy_pb2.Override:
        problems = id_problems("override_id", request.override_id)
        if not request.reason.strip():
            problems.append("reason: must say why")

        async def change(actor: str) -> policy_pb2.Override:
            row = await store.remove_override(
                self._pool, self._ws, request.override_id, request.reason.strip(), actor
            )
            return override_msg(row)

        return await self._run(context, problems, change)

    async def SetModelPolicy(
        self, request: policy_pb2.SetModelPolicyRequest, context: Context
    ) -> policy_pb2.ModelPolicy:
        p = request.policy
        problems = id_problems("policy.group_id", p.group_id)
        allowed = [m.strip() for m in p.allowed_models]
        if any(not m for m in allowed):
            problems.append("policy.allowed_models: empty model name")
        if not 0 <= p.fallback_at_percent <= 100:
            problems.append("policy.fallback_at_percent: must be between 0 and 100")
        if p.fallback_at_percent and not p.fallback_model:
            problems.append("policy.fallback_model: needed when fallback_at_percent is set")
        if p.fallback_model and allowed and p.fallback_model not in allowed:
            problems.append("policy.fallback_model: must be one of allowed_models")
        policy = ModelPolicy(
            p.group_id, frozenset(allowed), p.fallback_model.strip(), p.fallback_at_percent
        )

        async def change(actor: str) -> policy_pb2.ModelPolicy:
            await store.set_model_policy(
                self._pool, self._ws, None if request.remove else policy, p.group_id, actor
            )
            return model_policy_msg(policy)

        return await self._run(context, problems, change)

    async def ListLimits(
        self, request: policy_pb2.ListLimitsRequest, context: Context
    ) -> policy_pb2.ListLimitsResponse:
        async def read(_actor: str) -> policy_pb2.ListLimitsResponse:
            out = policy_pb2.ListLimitsResponse()
            ws = await self._pool.fetchrow(
                "SELECT default_limit_micros, period, enforcement, updated_by, updated_at"
                " FROM policy.workspaces WHERE workspace_id = $1",
                self._ws,
            )
            if ws is not None and ws["default_limit_micros"] is not None:
                out.workspace_default.CopyFrom(
                    limit_rule("workspace", "", ws, "default_limit_micros")
                )
            for r in await self._pool.fetch(
                "SELECT * FROM policy.group_limits WHERE workspace_id = $1"
                " ORDER BY group_id, scope",
                self._ws,
            ):
                out.group_limits.append(limit_rule(f"group_{r['scope']}", r["group_id"], r))
            for r in await self._pool.fetch(
                "SELECT * FROM policy.overrides WHERE workspace_id = $1 AND removed_at IS NULL"
                " AND (expires_at IS NULL OR expires_at > now()) ORDER BY user_id, created_at",
                self._ws,
            ):
                out.overrides.append(override_msg(r))
            snap = self._limits.snapshot
            for g in sorted(snap.model_policies):
                out.model_policies.append(model_policy_msg(snap.model_policies[g]))
            return out

        return await self._run(context, [], read)

    async def ExplainLimit(
        self, request: policy_pb2.ExplainLimitRequest, context: Context
    ) -> policy_pb2.Explanation:
        async def read(_actor: str) -> policy_pb2.Explanation:
            return explanation(self._limits.snapshot, request.user_id, self._clock())

        return await self._run(context, id_problems("user_id", request.user_id), read)

    # -- the directory -------------------------------------------------------------

    async def _apply(
        self, actor: str, doc: store.DirectoryDoc, dry_run: bool = False
    ) -> store.ImportResult:
        return await store.apply_directory(self._pool, self._ws, doc, actor, dry_run)

    async def UpsertUser(self, request: policy_pb2.User, context: Context) -> policy_pb2.User:
        problems: list[str] = []
        u = user_of("user", {f: getattr(request, f) for f in store.USER_FIELDS_ALL}, problems)

        async def change(actor: str) -> policy_pb2.User:
            groups = {u.user_id: list(request.group_ids)} if request.group_ids else {}
            await self._apply(actor, store.DirectoryDoc([u], [], groups))
            return user_msg(self._limits.snapshot, u)

        return await self._run(context, [p.replace("user.", "") for p in problems], change)

    async def UpsertGroup(self, request: policy_pb2.Group, context: Context) -> policy_pb2.Group:
        problems: list[str] = []
        fields = {f: getattr(request, f) for f in ("group_id", "name", "kind", "parent_id",
                                                    "cost_center")}  # fmt: skip
        g = group_of("group", {**fields, "admins": list(request.admin_user_ids)}, problems)

        async def change(actor: str) -> policy_pb2.Group:
            await self._apply(actor, store.DirectoryDoc([], [g], {}))
            return policy_pb2.Group(
                group_id=g.group_id, name=g.name, kind=g.kind, parent_id=g.parent_id,
                cost_center=g.cost_center, admin_user_ids=list(g.admins),
            )  # fmt: skip

        return await self._run(context, [p.replace("group.", "") for p in problems], change)

    async def SetMemberships(
        self, request: policy_pb2.SetMembershipsRequest, context: Context
    ) -> policy_pb2.SetMembershipsResponse:
        problems = id_problems("user_id", request.user_id)
        for i, g in enumerate(request.group_ids):
            problems += id_problems(f"group_ids[{i}]", g)

        async def change(actor: str) -> policy_pb2.SetMembershipsResponse:
            if request.user_id not in self._limits.snapshot.users:
                exists = await self._pool.fetchval(
                    "SELECT 1 FROM policy.users WHERE workspace_id = $1 AND user_id = $2",
                    self._ws,
                    request.user_id,
                )
                if not exists:
                    raise store.NotFound(f"user_id: no user {request.user_id!r} in the directory")
            doc = store.DirectoryDoc([], [], {request.user_id: list(request.group_ids)})
            result = await self._apply(actor, doc)
            assert result.changes is not None
            added = [c.rsplit(" ", 1)[1] for c in result.changes if " joined " in c]
            removed = [c.rsplit(" ", 1)[1] for c in result.changes if " left " in c]
            return policy_pb2.SetMembershipsResponse(added=added, removed=removed)

        return await self._run(context, problems, change)

    async def ImportDirectory(
        self, request: policy_pb2.ImportDirectoryRequest, context: Context
    ) -> policy_pb2.ImportReport:
        problems = []
        if len(request.document) > MAX_DOCUMENT:
            problems.append(f"document: larger than {MAX_DOCUMENT} bytes")
        if not request.document:
            problems.append("document: empty")

        async def change(actor: str) -> policy_pb2.ImportReport:
            doc = parse(request.format, request.document)
            r = await self._apply(actor, doc, request.dry_run)
            return policy_pb2.ImportReport(
                users_created=r.users_created, users_updated=r.users_updated,
                users_unchanged=r.users_unchanged, groups_created=r.groups_created,
                groups_updated=r.groups_updated, groups_unchanged=r.groups_unchanged,
                memberships_added=r.memberships_added,
                memberships_removed=r.memberships_removed, changes=r.changes or [],
                dry_run=request.dry_run,
            )  # fmt: skip

        return await self._run(context, problems, change)


def explanation(snap: Snapshot, user_id: str, now: datetime) -> policy_pb2.Explanation:
    resolved, steps = snap.explain(user_id, now)
    out = policy_pb2.Explanation(
        user_id=user_id,
        steps=[
            policy_pb2.ExplainStep(rule=s.rule, source=s.source, applies=s.applies, detail=s.detail)
            for s in steps
        ],
    )
    lines = [("✔ " if s.applies else "· ") + s.detail for s in steps]
    if resolved is None:
        lines.append(f"{user_id} has no limit: Check refuses until a default is set.")
    else:
        lim = resolved.limit
        out.limit_micros = lim.micros
        out.period = PERIODS[lim.period]
        out.enforcement = ENFORCEMENTS[lim.enforcement]
        out.limit_source = lim.source
        lines.append(
            f"So {user_id} may spend {credits(lim.micros)} credits per {lim.period}"
            f" ({lim.enforcement}, from {lim.source})."
        )
    out.summary = "\n".join(lines)
    return out


class DirectoryServicer(policy_pb2_grpc.DirectoryServiceServicer):
    def __init__(self, limits: LimitHolder) -> None:
        self._limits = limits

    async def _user(self, user_id: str, context: Context) -> UserInfo:
        problems = id_problems("user_id", user_id)
        await refuse(context, problems)
        u = self._limits.snapshot.users.get(user_id)
        if u is None:
            await abort(context, grpc.StatusCode.NOT_FOUND, f"user_id: no user {user_id!r}")
        return u

    async def GetUser(
        self, request: policy_pb2.GetUserRequest, context: Context
    ) -> policy_pb2.User:
        return user_msg(self._limits.snapshot, await self._user(request.user_id, context))

    async def ManagerChain(
        self, request: policy_pb2.GetUserRequest, context: Context
    ) -> policy_pb2.UserList:
        await self._user(request.user_id, context)
        snap = self._limits.snapshot
        return policy_pb2.UserList(
            users=[user_msg(snap, u) for u in snap.manager_chain(request.user_id)]
        )

    async def GroupAdmins(
        self, request: policy_pb2.GroupAdminsRequest, context: Context
    ) -> policy_pb2.UserList:
        problems = id_problems("group_id", request.group_id)
        await refuse(context, problems)
        snap = self._limits.snapshot
        if request.group_id not in snap.groups:
            await context.abort(
                grpc.StatusCode.NOT_FOUND, f"group_id: no group {request.group_id!r}"
            )
        seen: dict[str, None] = {}
        for g in snap.chain(request.group_id):
            for a in snap.groups[g].admins if g in snap.groups else ():
                seen.setdefault(a)
        users = [snap.users.get(a) or UserInfo(a) for a in seen]
        return policy_pb2.UserList(users=[user_msg(snap, u) for u in users])

    async def GroupMembers(
        self, request: policy_pb2.GroupMembersRequest, context: Context
    ) -> policy_pb2.GroupMembersResponse:
        problems = [p for i, g in enumerate(request.group_ids)
                    for p in id_problems(f"group_ids[{i}]", g)]  # fmt: skip
        await refuse(context, problems)
        members = self._limits.snapshot.group_members()
        unknown = [g for g in request.group_ids if g not in members]
        if unknown:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"group_ids: no group(s) {unknown}")
        asked = list(dict.fromkeys(request.group_ids)) or sorted(members)
        return policy_pb2.GroupMembersResponse(
            groups=[policy_pb2.GroupMemberList(group_id=g, user_ids=members[g]) for g in asked]
        )
