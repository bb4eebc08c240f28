"""PolicyAdminService and DirectoryService in process: credentials, validation (every
bad field named), mapping, and which calls reload the snapshot.

The real servicers and gRPC transport; LimitStore and DirectoryStore are fakes
(tests/policy/inprocess.py) because what is tested here is what the servicers ask
of a store and how they map its answers; the stores' SQL, audit log and NOTIFYs are
tested against real Postgres in test_policy_admin.py. No infrastructure.
"""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime

import grpc

from quartermaster.periods import PeriodKind
from quartermaster.v1 import policy_pb2
from services.policy.decide import Enforcement
from services.policy.rules import Rule
from tests.helpers import metadata
from tests.policy.inprocess import ADMIN, InProcess, refused


async def test_admin_calls_need_a_credential_with_role_admin(inproc: InProcess) -> None:
    err = await refused(inproc.admin.ListLimits(
        policy_pb2.ListLimitsRequest(), metadata=(("authorization", "Bearer nope"),)
    ))  # fmt: skip
    assert (err.code(), err.details()) == (
        grpc.StatusCode.UNAUTHENTICATED,
        "authorization: unknown token: this server accepts no such token (is it in this "
        "server's QM_TOKENS?)",
    )
    request = policy_pb2.SetDefaultLimitRequest(limit_micros=1)
    wrong = await refused(inproc.admin.SetDefaultLimit(request, metadata=metadata("reader")))
    assert (wrong.code(), wrong.details()) == (
        grpc.StatusCode.PERMISSION_DENIED,
        "PolicyAdminService/SetDefaultLimit needs role admin; credential 'tests-reader' has reader",
    )


async def test_changes_map_their_input_and_reload_but_reads_do_not(inproc: InProcess) -> None:
    rule = await inproc.admin.SetGroupLimit(
        policy_pb2.SetGroupLimitRequest(
            group_id="ml", pooled=True, limit_micros=5_000_000, period=policy_pb2.PERIOD_WEEK,
            enforcement=policy_pb2.ENFORCEMENT_SOFT,
        ),
        metadata=ADMIN,
    )  # fmt: skip
    assert inproc.limits.calls == [
        ("group", ("ml", "pool", Rule(5_000_000, PeriodKind.WEEK, Enforcement.SOFT), "tests-admin"))
    ]
    assert (rule.scope, rule.group_id, rule.limit_micros, rule.updated_by) == (
        "group_pool", "ml", 5_000_000, "tests-admin",
    )  # fmt: skip
    assert (rule.period, rule.enforcement) == (policy_pb2.PERIOD_WEEK, policy_pb2.ENFORCEMENT_SOFT)
    assert len(inproc.reloads) == 1
    listed = await inproc.admin.ListLimits(policy_pb2.ListLimitsRequest(), metadata=ADMIN)
    assert listed.workspace_default.limit_micros == 10_000_000
    assert [(g.scope, g.group_id) for g in listed.group_limits] == [("group_pool", "eng")]
    assert [p.group_id for p in listed.model_policies] == ["ml"]
    explained = await inproc.admin.ExplainLimit(
        policy_pb2.ExplainLimitRequest(user_id="ann"), metadata=ADMIN
    )
    assert explained.limit_source == "workspace_default"
    assert len(inproc.reloads) == 1  # the reads reloaded nothing


async def test_bad_input_names_every_field_and_domain_errors_map(inproc: InProcess) -> None:
    limit = await refused(inproc.admin.SetGroupLimit(
        policy_pb2.SetGroupLimitRequest(limit_micros=-1), metadata=ADMIN
    ))  # fmt: skip
    assert (limit.code(), limit.details()) == (grpc.StatusCode.INVALID_ARGUMENT, (
        "group_id: must not be empty; limit_micros: must be between 0 and 1000000000000000;"
        " period: required, one of PERIOD_DAY, PERIOD_WEEK, PERIOD_MONTH;"
        " enforcement: required, ENFORCEMENT_HARD or ENFORCEMENT_SOFT"
    ))  # fmt: skip
    policy = await refused(inproc.admin.SetModelPolicy(
        policy_pb2.SetModelPolicyRequest(policy=policy_pb2.ModelPolicy(
            group_id="ml", allowed_models=["a", " "], fallback_at_percent=120)),
        metadata=ADMIN,
    ))  # fmt: skip
    assert policy.details() == (
        "policy.allowed_models: empty model name;"
        " policy.fallback_at_percent: must be between 0 and 100;"
        " policy.fallback_model: needed when fallback_at_percent is set"
    )
    missing = await refused(inproc.admin.SetGroupLimit(
        policy_pb2.SetGroupLimitRequest(
            group_id="nope", limit_micros=1, period=policy_pb2.PERIOD_DAY,
            enforcement=policy_pb2.ENFORCEMENT_HARD,
        ),
        metadata=ADMIN,
    ))  # fmt: skip
    assert (missing.code(), missing.details()) == (
        grpc.StatusCode.NOT_FOUND, "group_id: no group 'nope' in the directory",
    )  # fmt: skip
    doc = await refused(inproc.admin.ImportDirectory(
        policy_pb2.ImportDirectoryRequest(format="yaml", document=b"x"), metadata=ADMIN
    ))  # fmt: skip
    assert (doc.code(), doc.details()) == (
        grpc.StatusCode.INVALID_ARGUMENT, 'format: expected "json" or "csv", got \'yaml\'',
    )  # fmt: skip
    assert inproc.reloads == []


async def test_override_input_maps_to_the_domain(inproc: InProcess) -> None:
    o = policy_pb2.Override(user_id="ann", limit_micros=2_000_000, additive=True,
                            reason=" launch ")  # fmt: skip
    o.review_at.FromDatetime(datetime(2027, 1, 1))
    got = await inproc.admin.SetOverride(policy_pb2.SetOverrideRequest(override=o), metadata=ADMIN)
    [(_, (override, actor))] = inproc.limits.calls
    assert (override.additive, override.micros, override.period, override.reason) == (
        True, 2_000_000, None, "launch",
    )  # fmt: skip
    assert (override.granted_by, actor) == ("tests-admin", "tests-admin")
    assert (got.user_id, got.additive, got.review_at.seconds > 0) == ("ann", True, True)


async def test_directory_edits_and_lookups(inproc: InProcess) -> None:
    user = await inproc.admin.UpsertUser(
        policy_pb2.User(user_id="cat", email="cat@x.io", group_ids=["ml"]), metadata=ADMIN
    )
    assert (user.user_id, user.email) == ("cat", "cat@x.io")
    assert inproc.dir_store.applied[-1].memberships == {"cat": ["ml"]}
    bad = await refused(inproc.admin.UpsertGroup(
        policy_pb2.Group(group_id="g", kind="tribe", parent_id="g"), metadata=ADMIN
    ))  # fmt: skip
    assert bad.details() == (
        "kind: 'tribe' is not one of department, team, project, cost_center, group;"
        " parent_id: a group can't be its own parent"
    )
    joined = await inproc.admin.SetMemberships(
        policy_pb2.SetMembershipsRequest(user_id="ben", group_ids=["eng"]), metadata=ADMIN
    )
    assert list(joined.added) == ["eng"]
    ann = await inproc.directory.GetUser(policy_pb2.GetUserRequest(user_id="ann"))
    assert (ann.email, list(ann.group_ids)) == ("ann@x.io", ["ml"])
    chain = await inproc.directory.ManagerChain(policy_pb2.GetUserRequest(user_id="ann"))
    assert [u.user_id for u in chain.users] == ["lead"]
    admins = await inproc.directory.GroupAdmins(policy_pb2.GroupAdminsRequest(group_id="ml"))
    assert [u.user_id for u in admins.users] == ["lead", "cto"]
    # each admin's group, so requests' routing can tell the levels apart
    assert [u.admin_of_group_id for u in admins.users] == ["ml", "eng"]
    members = await inproc.directory.GroupMembers(policy_pb2.GroupMembersRequest(group_ids=["eng"]))
    assert [(g.group_id, list(g.user_ids)) for g in members.groups] == [("eng", ["ann", "ben"])]
    nobody = await refused(inproc.directory.GetUser(policy_pb2.GetUserRequest(user_id="zed")))
    assert (nobody.code(), nobody.details()) == (
        grpc.StatusCode.NOT_FOUND,
        "user_id: no user 'zed'",
    )
    empty = await refused(
        inproc.directory.GroupMembers(policy_pb2.GroupMembersRequest(group_ids=["", "x"]))
    )
    assert empty.details() == "group_ids[0]: must not be empty"


async def test_find_user_by_slack_id_else_email(inproc: InProcess) -> None:
    """FindUser (the notifier's click → person): the Slack id first, then the e-mail
    without case; NOT_FOUND and INVALID_ARGUMENT say what was asked."""
    snap = inproc.evaluator.snapshot
    users = dict(snap.users)
    users["ben"] = replace(users["ben"], slack_user_id="U-BEN")
    users["lead"] = replace(users["lead"], email="ben-old@x.io", slack_user_id="U-LEAD")
    inproc.evaluator.snapshot = replace(snap, users=users)
    find = inproc.directory.FindUser
    by_slack = await find(policy_pb2.FindUserRequest(slack_user_id="U-BEN", email="ann@x.io"))
    assert by_slack.user_id == "ben"  # the Slack id wins over the e-mail
    by_email = await find(policy_pb2.FindUserRequest(slack_user_id="U-NOBODY", email="ANN@X.io"))
    assert (by_email.user_id, by_email.email) == ("ann", "ann@x.io")
    missing = await refused(find(policy_pb2.FindUserRequest(email="zed@x.io")))
    assert (missing.code(), missing.details()) == (
        grpc.StatusCode.NOT_FOUND,
        "no user with slack_user_id '' or email 'zed@x.io'",
    )
    empty = await refused(find(policy_pb2.FindUserRequest()))
    assert (empty.code(), empty.details()) == (
        grpc.StatusCode.INVALID_ARGUMENT,
        "slack_user_id, email: give at least one",
    )
    gateway = await refused(
        find(policy_pb2.FindUserRequest(email="ann@x.io"), metadata=metadata("gateway"))
    )
    assert gateway.code() == grpc.StatusCode.PERMISSION_DENIED
