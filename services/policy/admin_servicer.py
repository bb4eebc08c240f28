"""PolicyAdminService: limits, overrides, model policies and directory changes.

Who may call which method is quartermaster.roles' table, enforced before a call gets
here (quartermaster.auth); the credential's name is the actor in the audit log. A
change goes to Postgres (which tells every replica) and then reloads this replica's
snapshot before answering (read-your-writes); a read (ListLimits, ExplainLimit) reloads nothing.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import TypeVar

from quartermaster.auth import caller
from quartermaster.grpcserver import abort, refuse
from quartermaster.v1 import policy_pb2, policy_pb2_grpc
from quartermaster.validation import Problems
from services.policy import inputs
from services.policy.directory import USER_FIELDS_ALL, GroupInfo
from services.policy.directory_import import DirectoryDoc, DirectoryError, group_of, parse, user_of
from services.policy.errors import Conflict, NotFound
from services.policy.evaluator import Evaluator
from services.policy.mapping import (
    ENFORCEMENT_OF,
    KINDS,
    explanation,
    group_msg,
    import_report,
    limit_rule,
    model_policy_msg,
    override_msg,
    user_msg,
)
from services.policy.model_rules import ModelPolicy
from services.policy.policy_servicer import STATUS_OF, Context
from services.policy.rules import Override, Rule
from services.policy.stores.directory import DirectoryStore
from services.policy.stores.limits import LimitStore

T = TypeVar("T")


class PolicyAdminServicer(policy_pb2_grpc.PolicyAdminServiceServicer):
    """PolicyAdminService over one workspace's stores. `reload` reads the snapshot
    again and installs it in `evaluator` (whose snapshot the reads use)."""

    def __init__(
        self,
        limits: LimitStore,
        directory: DirectoryStore,
        evaluator: Evaluator,
        reload: Callable[[], Awaitable[None]],
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self._limits = limits
        self._directory = directory
        self._ev = evaluator
        self._reload = reload
        self._clock = clock

    async def _run(
        self, context: Context, problems: Problems, call: Callable[[str], Awaitable[T]],
        changes: bool = True,
    ) -> T:  # fmt: skip
        """Refuse bad input (every problem named), run the call as the caller (the
        credential's name, for the audit log; the interceptor checked its role),
        mapping domain errors to status codes, and, after a change, reload this
        replica's snapshot before answering."""
        who = caller().name
        await refuse(context, problems)
        try:
            out = await call(who)
        except (NotFound, Conflict, DirectoryError) as exc:
            await abort(context, STATUS_OF[type(exc)], str(exc))
        if changes:
            await self._reload()
        return out

    async def SetDefaultLimit(
        self, request: policy_pb2.SetDefaultLimitRequest, context: Context
    ) -> policy_pb2.LimitRule:
        problems = inputs.limit(request.limit_micros, request.period, request.enforcement)

        async def change(actor: str) -> policy_pb2.LimitRule:
            row = await self._limits.set_workspace_default(
                request.limit_micros, ENFORCEMENT_OF[request.enforcement], actor,
                KINDS[request.period],
            )  # fmt: skip
            return limit_rule("workspace", "", row, "default_limit_micros")

        return await self._run(context, problems, change)

    async def SetGroupLimit(
        self, request: policy_pb2.SetGroupLimitRequest, context: Context
    ) -> policy_pb2.LimitRule:
        problems = inputs.ids(group_id=request.group_id)
        problems.extend(inputs.limit(request.limit_micros, request.period, request.enforcement))
        scope = "pool" if request.pooled else "member"

        async def change(actor: str) -> policy_pb2.LimitRule:
            rule = Rule(
                request.limit_micros, KINDS[request.period], ENFORCEMENT_OF[request.enforcement]
            )
            row = await self._limits.set_group_limit(request.group_id, scope, rule, actor)
            return limit_rule(f"group_{scope}", request.group_id, row)

        return await self._run(context, problems, change)

    async def RemoveGroupLimit(
        self, request: policy_pb2.RemoveGroupLimitRequest, context: Context
    ) -> policy_pb2.LimitRule:
        scope = "pool" if request.pooled else "member"

        async def change(actor: str) -> policy_pb2.LimitRule:
            row = await self._limits.remove_group_limit(request.group_id, scope, actor)
            return limit_rule(f"group_{scope}", request.group_id, row)

        return await self._run(context, inputs.ids(group_id=request.group_id), change)

    async def SetOverride(
        self, request: policy_pb2.SetOverrideRequest, context: Context
    ) -> policy_pb2.Override:
        o = request.override
        problems, starts, expires, review = inputs.override(o, self._clock())

        async def change(actor: str) -> policy_pb2.Override:
            override = Override(
                override_id=o.override_id, user_id=o.user_id, additive=o.additive,
                micros=o.limit_micros, period=KINDS.get(o.period),
                enforcement=ENFORCEMENT_OF.get(o.enforcement),
                granted_by=o.granted_by.strip() or actor, reason=o.reason.strip(),
                starts_at=starts, expires_at=expires, review_at=review,
            )  # fmt: skip
            stored, _ = await self._limits.set_override(override, actor)
            return override_msg(stored)

        return await self._run(context, problems, change)

    async def RemoveOverride(
        self, request: policy_pb2.RemoveOverrideRequest, context: Context
    ) -> policy_pb2.Override:
        problems = inputs.ids(override_id=request.override_id)
        inputs.reason(request.reason, problems)

        async def change(actor: str) -> policy_pb2.Override:
            reason = request.reason.strip()
            ended = await self._limits.remove_override(request.override_id, reason, actor)
            return override_msg(ended, removed=True)

        return await self._run(context, problems, change)

    async def SetModelPolicy(
        self, request: policy_pb2.SetModelPolicyRequest, context: Context
    ) -> policy_pb2.ModelPolicy:
        p = request.policy
        allowed = [m.strip() for m in p.allowed_models]
        problems = inputs.model_policy(p, allowed)
        policy = ModelPolicy(
            p.group_id, frozenset(allowed), p.fallback_model.strip(), p.fallback_at_percent
        )

        async def change(actor: str) -> policy_pb2.ModelPolicy:
            setting = None if request.remove else policy
            await self._limits.set_model_policy(setting, p.group_id, actor)
            return model_policy_msg(policy)

        return await self._run(context, problems, change)

    async def ListLimits(
        self, request: policy_pb2.ListLimitsRequest, context: Context
    ) -> policy_pb2.ListLimitsResponse:
        async def read(_actor: str) -> policy_pb2.ListLimitsResponse:
            default, groups, overrides = await self._limits.listing()
            out = policy_pb2.ListLimitsResponse()
            if default is not None:
                out.workspace_default.CopyFrom(
                    limit_rule("workspace", "", default, "default_limit_micros")
                )
            out.group_limits.extend(
                limit_rule(f"group_{r['scope']}", r["group_id"], r) for r in groups
            )
            out.overrides.extend(override_msg(r) for r in overrides)
            policies = self._ev.snapshot.model_policies
            out.model_policies.extend(model_policy_msg(policies[g]) for g in sorted(policies))
            return out

        return await self._run(context, Problems(), read, changes=False)

    async def ExplainLimit(
        self, request: policy_pb2.ExplainLimitRequest, context: Context
    ) -> policy_pb2.Explanation:
        async def read(_actor: str) -> policy_pb2.Explanation:
            return explanation(self._ev.snapshot, request.user_id, self._clock())

        problems = inputs.ids(user_id=request.user_id)
        return await self._run(context, problems, read, changes=False)

    # -- the directory -------------------------------------------------------------

    async def UpsertUser(self, request: policy_pb2.User, context: Context) -> policy_pb2.User:
        found: list[str] = []
        u = user_of("user", {f: getattr(request, f) for f in USER_FIELDS_ALL}, found)
        problems = _unprefixed(found, "user.")
        inputs.id_list("group_ids", list(request.group_ids), problems)

        async def change(actor: str) -> policy_pb2.User:
            groups = list(request.group_ids) if request.group_ids else None
            await self._directory.upsert_user(u, actor, groups)
            return user_msg(self._ev.snapshot, u)

        return await self._run(context, problems, change)

    async def UpsertGroup(self, request: policy_pb2.Group, context: Context) -> policy_pb2.Group:
        found: list[str] = []
        fields = {f: getattr(request, f) for f in ("group_id", "name", "kind", "parent_id",
                                                    "cost_center")}  # fmt: skip
        g: GroupInfo = group_of("group", {**fields, "admins": list(request.admin_user_ids)}, found)
        problems = _unprefixed(found, "group.")

        async def change(actor: str) -> policy_pb2.Group:
            await self._directory.apply(DirectoryDoc([], [g], {}), actor, dry_run=False)
            return group_msg(g)

        return await self._run(context, problems, change)

    async def SetMemberships(
        self, request: policy_pb2.SetMembershipsRequest, context: Context
    ) -> policy_pb2.SetMembershipsResponse:
        problems = inputs.ids(user_id=request.user_id)
        inputs.id_list("group_ids", list(request.group_ids), problems)

        async def change(actor: str) -> policy_pb2.SetMembershipsResponse:
            user_id = request.user_id
            known = user_id in self._ev.snapshot.users
            if not known and not await self._directory.user_exists(user_id):
                raise NotFound(f"user_id: no user {user_id!r} in the directory")
            doc = DirectoryDoc([], [], {user_id: list(request.group_ids)})
            result = await self._directory.apply(doc, actor, dry_run=False)
            added = [c.rsplit(" ", 1)[1] for c in result.changes if " joined " in c]
            removed = [c.rsplit(" ", 1)[1] for c in result.changes if " left " in c]
            return policy_pb2.SetMembershipsResponse(added=added, removed=removed)

        return await self._run(context, problems, change)

    async def ImportDirectory(
        self, request: policy_pb2.ImportDirectoryRequest, context: Context
    ) -> policy_pb2.ImportReport:
        async def change(actor: str) -> policy_pb2.ImportReport:
            doc = parse(request.format, request.document)
            result = await self._directory.apply(doc, actor, request.dry_run)
            return import_report(result, request.dry_run)

        return await self._run(context, inputs.document(request), change)


def _unprefixed(found: list[str], where: str) -> Problems:
    """A document's problems for one message sent on its own (its fields are named
    without the document's `where.`)."""
    problems = Problems()
    for p in found:
        problems.note(p.replace(where, "", 1))
    return problems
