"""Bad requests get INVALID_ARGUMENT naming the field, in a bounded message, from the
real policy server (issue 14, items 3, 12 and 15): never UNKNOWN, never a status a
client could take for an outage.

- Item 3: one over-budget check plus 440 invalid ones made a 16.6 KB message, which
  the client heard as RESOURCE_EXHAUSTED and a fail-open gateway allowed whole. Every
  message that lists problems names the first ten and counts the rest.
- Item 12: Commit(actual_micros=2**63-1) was accepted, and every later call about that
  user answered UNKNOWN. Every amount, TTL and time is bounded.
- Item 15: NUL or invalid UTF-8 answered UNKNOWN quoting asyncpg or DecodeError.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
import pytest
from google.protobuf.timestamp_pb2 import Timestamp

from quartermaster.grpcserver import MAX_DETAILS_BYTES
from quartermaster.policy_client import FailMode, PolicyClient, PolicyRequestError
from quartermaster.v1 import policy_pb2, policy_pb2_grpc
from services.policy.wiring import RunningPolicy
from tests.conftest import (
    ADMIN_METADATA,
    ALL_METADATA,
    GATEWAY_METADATA,
    READER_METADATA,
    TEST_LIMIT_CREDITS,
)
from tests.helpers import SERVED_WITHIN_S, TOKENS, channel, new_user, refusal

pytestmark = pytest.mark.infra

LIMIT = TEST_LIMIT_CREDITS * 1_000_000  # the session's policy server's default
I64 = 2**63 - 1
BOUND = 10**15
CALL_BOUND = 10**12  # Commit's actual_micros: one call


class Stubs:
    """The session's policy server (nothing here changes its state: every call is
    refused, or touches a user of its own), one stub per service."""

    def __init__(self, server: RunningPolicy, channel: grpc.aio.Channel) -> None:
        self.port = server.port
        self.channel = channel
        self.policy = policy_pb2_grpc.PolicyServiceStub(channel)
        self.admin = policy_pb2_grpc.PolicyAdminServiceStub(channel)
        self.directory = policy_pb2_grpc.DirectoryServiceStub(channel)


@pytest.fixture
async def stubs(policy_server: RunningPolicy) -> AsyncIterator[Stubs]:
    async with channel(f"127.0.0.1:{policy_server.port}") as ch:
        yield Stubs(policy_server, ch)


def check(user: str, estimated: int = 0, **fields: Any) -> policy_pb2.CheckRequest:
    return policy_pb2.CheckRequest(
        user_id=user, product="chat", model="gpt-5", estimated_micros=estimated, **fields
    )


def _bounded(details: str) -> None:
    assert len(details.encode()) <= MAX_DETAILS_BYTES, len(details.encode())


async def test_a_batch_of_many_bad_checks_is_refused_in_one_bounded_message(
    stubs: Stubs,
) -> None:
    user = new_user()
    batch = [check(user, LIMIT + 1)] + [check("", -1) for _ in range(440)]
    async with PolicyClient(
        f"127.0.0.1:{stubs.port}",
        fail=FailMode.OPEN,
        deadline_s=SERVED_WITHIN_S,
        token=TOKENS["gateway"],
    ) as client:
        with pytest.raises(PolicyRequestError) as info:
            await client.check_batch(batch)
        assert client.degraded == 0, "a refused batch is not an outage"
    message = str(info.value)
    assert message.startswith(
        "checks[1].user_id: must not be empty; checks[1].estimated_micros: must not be negative;"
    )
    assert message.endswith("; and 870 more"), message[-80:]
    _bounded(message)


async def test_every_list_of_problems_is_bounded(stubs: Stubs) -> None:
    """The other places a long list of problems is built: unknown groups, a directory
    document, repeated ids, a batch past its size."""
    admin, directory, policy = stubs.admin, stubs.directory, stubs.policy
    many = [f"no-such-group-{i:04d}" for i in range(900)]
    bad_users = [{"user_id": "", "email": "e" * 2001} for _ in range(1000)]
    doc = json.dumps({"users": bad_users}).encode()
    calls: list[tuple[Awaitable[object], grpc.StatusCode, str]] = [
        (directory.GroupMembers(policy_pb2.GroupMembersRequest(group_ids=many)),
         grpc.StatusCode.NOT_FOUND, " and 890 more"),
        (admin.ImportDirectory(policy_pb2.ImportDirectoryRequest(format="json", document=doc),
                               metadata=ADMIN_METADATA),
         grpc.StatusCode.INVALID_ARGUMENT, "; and 1990 more"),
        (admin.SetMemberships(policy_pb2.SetMembershipsRequest(user_id="u", group_ids=[" "] * 900),
                              metadata=ADMIN_METADATA),
         grpc.StatusCode.INVALID_ARGUMENT, "; and 890 more"),
        (admin.SetMemberships(policy_pb2.SetMembershipsRequest(user_id="u", group_ids=["g"] * 5000),
                              metadata=ADMIN_METADATA),
         grpc.StatusCode.INVALID_ARGUMENT, "group_ids: at most 1000 items, got 5000"),
        (policy.CheckBatch(policy_pb2.CheckBatchRequest(checks=[check("", -1)] * 3000)),
         grpc.StatusCode.INVALID_ARGUMENT, "checks: at most 1000, got 3000; checks[0].user_id"),
    ]  # fmt: skip
    for call, code, part in calls:
        got, details = await refusal(call)
        assert (got, part in details) == (code, True), (got, details[:200])
        _bounded(details)


async def test_a_request_past_grpc_size_limit_is_refused_not_allowed(stubs: Stubs) -> None:
    """Sent, it is refused RESOURCE_EXHAUSTED (or meets the deadline while it is being
    sent, which a fail-open client would allow): the client refuses it unsent."""
    huge = [check("u" * 5000)] * 1000  # 5 MB: past gRPC's 4 MB default
    async with PolicyClient(
        f"127.0.0.1:{stubs.port}",
        fail=FailMode.OPEN,
        deadline_s=SERVED_WITHIN_S,
        token=TOKENS["gateway"],
    ) as client:
        with pytest.raises(
            PolicyRequestError, match="request: 5019000 bytes, more than the 4194304"
        ):
            await client.check_batch(huge)
        assert client.degraded == 0
    sent = stubs.policy.CheckBatch(policy_pb2.CheckBatchRequest(checks=huge), timeout=30)
    assert (await refusal(sent))[0] == grpc.StatusCode.RESOURCE_EXHAUSTED


async def test_a_commit_of_2_63_is_refused_and_the_user_still_answers(stubs: Stubs) -> None:
    policy, user = stubs.policy, new_user()
    made = await policy.Reserve(
        policy_pb2.ReserveRequest(user_id=user, product="chat", model="gpt-5",
                                  estimated_micros=1_000, request_id=f"r-{user}")
    )  # fmt: skip
    code, details = await refusal(
        policy.Commit(policy_pb2.CommitRequest(reservation_id=made.reservation_id,
                                               actual_micros=I64))
    )  # fmt: skip
    assert (code, details) == (
        grpc.StatusCode.INVALID_ARGUMENT, f"actual_micros: must be at most {CALL_BOUND} (one"
        " million credits, the most one call may cost: metering meters no larger event)",
    )  # fmt: skip
    answer = await policy.Check(check(user))
    assert (answer.decision, answer.used_micros) == (policy_pb2.DECISION_ALLOW, 1_000)
    budget = await policy.GetBudget(policy_pb2.GetBudgetRequest(user_id=user))
    assert budget.reserved_micros == 1_000


def _override(**fields: Any) -> policy_pb2.SetOverrideRequest:
    """A valid override (permanent, reviewed in 2096) but for `fields`; a time is
    given as (seconds, nanos)."""
    times = {k: fields.pop(k) for k in ("starts_at", "expires_at") if k in fields}
    values = {"user_id": "ann", "limit_micros": 1, "period": policy_pb2.PERIOD_MONTH,
              "reason": "why not", **fields}  # fmt: skip
    o = policy_pb2.Override(**values)
    for name, (seconds, nanos) in times.items():
        getattr(o, name).CopyFrom(Timestamp(seconds=seconds, nanos=nanos))
    if "expires_at" not in times:
        o.review_at.seconds = 4_000_000_000
    return policy_pb2.SetOverrideRequest(override=o)


AMOUNTS: list[tuple[str, str, Any, str]] = [
    ("policy", "Check", check("a", I64), f"estimated_micros: must be at most {BOUND}"),
    ("policy", "Check", check("a", -(2**63)), "estimated_micros: must not be negative"),
    ("policy", "Check", check("a", BOUND + 1, reserve=True, request_id="r"),
     f"estimated_micros: must be at most {BOUND}"),
    ("policy", "Check", check("a", 1, reserve=True, request_id="r", reservation_ttl_seconds=I64),
     "reservation_ttl_seconds: must be between 0 and 86400"),
    ("policy", "CheckBatch", policy_pb2.CheckBatchRequest(checks=[check("a"), check("b", I64)]),
     f"checks[1].estimated_micros: must be at most {BOUND}"),
    ("policy", "Reserve", policy_pb2.ReserveRequest(
        user_id="a", product="p", model="m", request_id="r", estimated_micros=BOUND + 1),
     f"estimated_micros: must be at most {BOUND}"),
    ("policy", "Reserve", policy_pb2.ReserveRequest(
        user_id="a", product="p", model="m", request_id="r", ttl_seconds=-(2**63)),
     "ttl_seconds: must be between 0 and 86400"),
    ("policy", "Commit", policy_pb2.CommitRequest(reservation_id="x", actual_micros=-(2**63)),
     "actual_micros: must not be negative"),
    ("admin", "SetDefaultLimit", policy_pb2.SetDefaultLimitRequest(
        limit_micros=I64, period=policy_pb2.PERIOD_DAY, enforcement=policy_pb2.ENFORCEMENT_HARD),
     f"limit_micros: must be between 0 and {BOUND}"),
    ("admin", "SetGroupLimit", policy_pb2.SetGroupLimitRequest(
        group_id="g", limit_micros=-1, period=policy_pb2.PERIOD_DAY,
        enforcement=policy_pb2.ENFORCEMENT_HARD),
     f"limit_micros: must be between 0 and {BOUND}"),
    ("admin", "SetOverride", _override(limit_micros=I64),
     f"override.limit_micros: must be between 0 and {BOUND}"),
    ("admin", "SetOverride", _override(additive=True, period=0, limit_micros=BOUND + 1),
     f"override.limit_micros: must be between 0 and {BOUND}"),
    ("admin", "SetOverride", _override(starts_at=(I64, 0)),
     "override.starts_at: must be a time between 1970 and 9999"),
    ("admin", "SetOverride", _override(expires_at=(-(2**62), 0)),
     "override.expires_at: must be a time between 1970 and 9999"),
    ("admin", "SetOverride", _override(expires_at=(4_000_000_000, -1)),
     "override.expires_at: must be a time between 1970 and 9999"),
    ("admin", "SetModelPolicy", policy_pb2.SetModelPolicyRequest(policy=policy_pb2.ModelPolicy(
        group_id="g", allowed_models=["m"], fallback_model="m", fallback_at_percent=2**31 - 1)),
     "policy.fallback_at_percent: must be between 0 and 100"),
]  # fmt: skip


@pytest.mark.parametrize(("service", "method", "request_", "problem"), AMOUNTS)
async def test_every_amount_ttl_and_time_is_bounded_naming_the_field(
    stubs: Stubs, service: str, method: str, request_: Any, problem: str
) -> None:
    stub = stubs.policy if service == "policy" else stubs.admin
    code, details = await refusal(getattr(stub, method)(request_, metadata=ALL_METADATA))
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert problem in details.split("; "), details


NULS: list[tuple[str, str, Any, str]] = [
    ("policy", "Reserve", policy_pb2.ReserveRequest(
        user_id="nul\x00user", product="p", model="m", request_id="r"), "user_id"),
    ("policy", "Check", check("a", 1, reserve=True, request_id="nul\x00req"), "request_id"),
    ("policy", "Check", check("nul\x00user"), "user_id"),
    ("policy", "Check", policy_pb2.CheckRequest(user_id="a", product="p\x00", model="m"),
     "product"),
    ("policy", "Check", policy_pb2.CheckRequest(user_id="a", product="p", model="m\x00"),
     "model"),
    ("policy", "CheckBatch", policy_pb2.CheckBatchRequest(checks=[check("a"), check("b\x00")]),
     "checks[1].user_id"),
    ("policy", "GetBudget", policy_pb2.GetBudgetRequest(user_id="\x00"), "user_id"),
    ("policy", "Release", policy_pb2.ReleaseRequest(reservation_id="\x00"), "reservation_id"),
    ("admin", "UpsertUser", policy_pb2.User(user_id="ann", display_name="A\x00nn"),
     "display_name"),
    ("admin", "UpsertUser", policy_pb2.User(user_id="ann", group_ids=["g", "\x00"]),
     "group_ids[1]"),
    ("admin", "UpsertGroup", policy_pb2.Group(group_id="g", cost_center="CC\x00"), "cost_center"),
    ("admin", "SetOverride", _override(reason="because\x00"), "override.reason"),
    ("admin", "RemoveOverride", policy_pb2.RemoveOverrideRequest(override_id="o", reason="\x00"),
     "reason"),
    ("admin", "SetModelPolicy", policy_pb2.SetModelPolicyRequest(
        policy=policy_pb2.ModelPolicy(group_id="g", allowed_models=["a", "b\x00"])),
     "policy.allowed_models[1]"),
    ("admin", "ImportDirectory", policy_pb2.ImportDirectoryRequest(
        format="json", document=b'{"users": [{"user_id": "nul\\u0000user"}]}'),
     "users[0].user_id"),
    ("admin", "ImportDirectory", policy_pb2.ImportDirectoryRequest(
        format="json", document=b'{"users": [{"user_id": "ann", "email": "\\ud800"}]}'),
     "users[0].email"),
    ("admin", "ImportDirectory", policy_pb2.ImportDirectoryRequest(
        format="csv", document=b"user_id,groups\nann,g\x00h\n"), "line 2.groups[0]"),
    ("directory", "GetUser", policy_pb2.GetUserRequest(user_id="a\x00"), "user_id"),
]  # fmt: skip


@pytest.mark.parametrize(("service", "method", "request_", "field"), NULS)
async def test_a_nul_anywhere_is_refused_naming_the_field(
    stubs: Stubs, service: str, method: str, request_: Any, field: str
) -> None:
    call = getattr(getattr(stubs, service), method)(request_, metadata=ALL_METADATA)
    code, details = await refusal(call)
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert details.startswith(f"{field}: must "), details


def _raw(channel: grpc.aio.Channel, method: str) -> Callable[..., Awaitable[bytes]]:
    """A call of `method` that sends bytes as they are (no message built client-side)."""
    return channel.unary_unary(method, request_serializer=None, response_deserializer=None)


# Field tags by hand: 0x0a = field 1 (length-delimited), 0x12 = field 2, 0x42 = field 8.
BAD_UTF8: list[tuple[str, bytes, str]] = [
    ("PolicyService/Reserve", b"\x0a\x03a\xffb", "user_id: not valid UTF-8"),
    ("PolicyService/Check", b"\x0a\x01a\x12\x02\xc3\x28", "product: not valid UTF-8"),
    ("PolicyService/CheckBatch",
     b"\x0a\x03\x0a\x01a" + b"\x0a\x05\x0a\x01b\x1a\x00" + b"\x0a\x04\x12\x02\xed\xa0",
     "checks[2].product: not valid UTF-8"),
    ("PolicyAdminService/SetOverride", b"\x0a\x04\x42\x02\xff\xfe",
     "override.reason: not valid UTF-8"),
    ("PolicyAdminService/UpsertUser", b"\x32\x01g\x32\x01\x80", "group_ids[1]: not valid UTF-8"),
    ("DirectoryService/GetUser", b"\x0a\x05\xf0\x28\x8c\x28\x00", "user_id: not valid UTF-8"),
    ("PolicyService/Commit", b"\x0a\xff",
     "request: not a valid quartermaster.v1.CommitRequest message"),
    ("PolicyService/Release", b"\x0f",
     "request: not a valid quartermaster.v1.ReleaseRequest message"),
]  # fmt: skip


@pytest.mark.parametrize(("method", "body", "problem"), BAD_UTF8)
async def test_bytes_protobuf_cannot_parse_are_refused_naming_the_field(
    stubs: Stubs, method: str, body: bytes, problem: str
) -> None:
    call = _raw(stubs.channel, f"/quartermaster.v1.{method}")(body, metadata=ALL_METADATA)
    assert await refusal(call) == (grpc.StatusCode.INVALID_ARGUMENT, problem)


async def test_a_refused_credential_hears_what_the_call_needed(stubs: Stubs) -> None:
    admin, gateway = stubs.admin, GATEWAY_METADATA
    calls: list[tuple[Awaitable[object], str]] = [
        (admin.ListLimits(policy_pb2.ListLimitsRequest(), metadata=gateway),
         "PolicyAdminService/ListLimits needs role admin or reader"),
        (admin.ExplainLimit(policy_pb2.ExplainLimitRequest(user_id="a"), metadata=gateway),
         "PolicyAdminService/ExplainLimit needs role admin or reader"),
        (admin.SetDefaultLimit(policy_pb2.SetDefaultLimitRequest(), metadata=READER_METADATA),
         "PolicyAdminService/SetDefaultLimit needs role admin"),
        (stubs.policy.Check(policy_pb2.CheckRequest(), metadata=READER_METADATA),
         "PolicyService/Check needs role gateway"),
    ]  # fmt: skip
    for call, needed in calls:
        code, details = await refusal(call)
        assert code == grpc.StatusCode.PERMISSION_DENIED
        assert details.startswith(f"{needed}; credential 'tests-")
    unknown = (("authorization", f"Bearer {uuid.uuid4().hex}"),)
    assert await refusal(admin.ListLimits(policy_pb2.ListLimitsRequest(), metadata=unknown)) == (
        grpc.StatusCode.UNAUTHENTICATED,
        "authorization: unknown token: policy accepts no such token (is it in this "
        "server's QM_TOKENS?)",
    )
