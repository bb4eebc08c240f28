"""The guard every gRPC server of ours adds (quartermaster.grpcguard) and the bounds of
every status message (quartermaster.validation, quartermaster.grpcserver), on an
in-process server around a servicer that fails on purpose (no infrastructure: what
the guard does with a real database away is tests/policy/test_outage.py)."""

from __future__ import annotations

from typing import Any

import asyncpg
import grpc
import pytest

from quartermaster.grpcguard import add_guarded, bad_utf8_field, nul_field
from quartermaster.grpcserver import MAX_DETAILS_BYTES, bounded
from quartermaster.v1 import policy_pb2, policy_pb2_grpc
from quartermaster.validation import MAX_KEPT, InvalidRequest, Problems, summarize, text_problem
from tests.helpers import in_process_server, refusal


class Failing:
    """GetBudget raises what it is given; Check answers (to show it is left alone); the
    others are the generated base class's plain UNIMPLEMENTED answers."""

    Reserve = policy_pb2_grpc.PolicyServiceServicer.Reserve
    CheckBatch = policy_pb2_grpc.PolicyServiceServicer.CheckBatch
    Commit = policy_pb2_grpc.PolicyServiceServicer.Commit
    Release = policy_pb2_grpc.PolicyServiceServicer.Release

    def __init__(self) -> None:
        self.raises: BaseException | None = None

    async def GetBudget(self, request: Any, context: Any) -> policy_pb2.Budget:
        if self.raises is not None:
            raise self.raises
        return policy_pb2.Budget(user_id=request.user_id)

    async def Check(self, request: Any, context: Any) -> policy_pb2.CheckResponse:
        return policy_pb2.CheckResponse(reason=request.user_id)


OUTAGE = [
    ConnectionRefusedError(111, "Connect call failed"),
    OSError("Multiple exceptions: [Errno 111] Connect call failed ('::1', 5432)"),
    TimeoutError(),
    asyncpg.ConnectionDoesNotExistError("connection was closed in the middle of operation"),
    asyncpg.CannotConnectNowError("the database system is starting up"),
    asyncpg.AdminShutdownError("terminating connection due to administrator command"),
    asyncpg.TooManyConnectionsError("sorry, too many clients already"),
    asyncpg.InterfaceError("connection is closed"),
    asyncpg.QueryCanceledError("canceling statement due to statement timeout"),
    asyncpg.DiskFullError("could not extend file: No space left on device"),
]
BUGS = [
    ValueError("Value out of range: 9223372036854775808"),
    asyncpg.InterfaceError("cannot perform operation: another operation is in progress"),
    asyncpg.UndefinedTableError('relation "policy.nope" does not exist'),
    KeyError("x"),
]


@pytest.mark.parametrize("exc", OUTAGE + BUGS, ids=lambda e: type(e).__name__)
async def test_an_outage_is_unavailable_and_a_bug_internal_without_its_class(
    exc: BaseException,
) -> None:
    servicer = Failing()
    servicer.raises = exc
    add = policy_pb2_grpc.add_PolicyServiceServicer_to_server
    async with in_process_server(lambda s: add_guarded(s, add, servicer)) as channel:
        stub = policy_pb2_grpc.PolicyServiceStub(channel)
        code, details = await refusal(stub.GetBudget(policy_pb2.GetBudgetRequest(user_id="a")))
        if exc in OUTAGE:
            assert (code, details) == (
                grpc.StatusCode.UNAVAILABLE,
                "GetBudget: the server's database is out of reach; try again shortly",
            )  # fmt: skip
        else:
            assert code == grpc.StatusCode.INTERNAL
            assert details.startswith("GetBudget failed in the server (log ref ")
            assert type(exc).__name__ not in details
            assert "relation" not in details
        # Unimplemented methods stay UNIMPLEMENTED; Check skips the NUL walk when told.
        unimplemented = stub.Reserve(policy_pb2.ReserveRequest())
        assert (await refusal(unimplemented))[0] == grpc.StatusCode.UNIMPLEMENTED


async def test_nul_is_refused_unless_the_method_checks_its_own() -> None:
    servicer = Failing()
    add = policy_pb2_grpc.add_PolicyServiceServicer_to_server
    async with in_process_server(
        lambda s: add_guarded(s, add, servicer, unchecked={"Check"})
    ) as channel:
        stub = policy_pb2_grpc.PolicyServiceStub(channel)
        budget = stub.GetBudget(policy_pb2.GetBudgetRequest(user_id="a\x00"))
        assert await refusal(budget) == (
            grpc.StatusCode.INVALID_ARGUMENT, "user_id: must not contain NUL (U+0000)",
        )  # fmt: skip
        assert (await stub.Check(policy_pb2.CheckRequest(user_id="a\x00"))).reason == "a\x00"


def test_the_field_with_bytes_that_are_not_utf8_is_named() -> None:
    desc = policy_pb2.SetOverrideRequest.DESCRIPTOR
    override = policy_pb2.Override(user_id="ann", reason="é")
    good = policy_pb2.SetOverrideRequest(override=override).SerializeToString()
    assert bad_utf8_field(desc, good) is None
    assert bad_utf8_field(desc, b"\x0a\x04\x42\x02\xff\xfe") == "override.reason"
    batch = policy_pb2.CheckBatchRequest.DESCRIPTOR
    assert bad_utf8_field(batch, b"\x0a\x00\x0a\x03\x1a\x01\xff") == "checks[1].model"
    assert bad_utf8_field(batch, b"\x0a\xff") is None  # garbled, not a bad string
    assert bad_utf8_field(batch, b"\x08" + b"\xff" * 11) is None  # an endless varint


def test_nul_field_walks_nested_and_repeated_strings() -> None:
    batch = policy_pb2.CheckBatchRequest(
        checks=[policy_pb2.CheckRequest(user_id="a"), policy_pb2.CheckRequest(model="m\x00")]
    )
    assert nul_field(batch) == "checks[1].model"
    assert nul_field(policy_pb2.User(group_ids=["g", "h\x00"])) == "group_ids[1]"
    assert nul_field(policy_pb2.User(user_id="ann", email="a@b")) is None


def test_problems_are_kept_and_shown_bounded() -> None:
    problems = Problems("checks[0].")
    for i in range(MAX_KEPT + 50):
        problems.add(f"f{i}", "bad")
    assert (len(problems.items), problems.omitted, len(problems)) == (MAX_KEPT, 50, MAX_KEPT + 50)
    assert problems.message() == (
        "; ".join(f"checks[0].f{i}: bad" for i in range(10)) + f"; and {MAX_KEPT + 40} more"
    )
    outer = Problems()
    outer.extend(problems)
    assert len(outer) == MAX_KEPT + 50
    with pytest.raises(InvalidRequest, match=f"; and {MAX_KEPT + 40} more$"):
        outer.raise_if_any()
    assert summarize(["a", "b"]) == "a; b"


def test_status_messages_are_cut_to_their_bound_on_a_character() -> None:
    assert bounded("short") == "short"
    for text in ("x" * 5000, "🙂" * 2000, "é" * 700):
        cut = bounded(text)
        assert len(cut.encode()) <= MAX_DETAILS_BYTES
        assert cut.endswith(f" ... ({len(text.encode())} bytes, cut)")


def test_text_that_postgres_cannot_store_is_named() -> None:
    assert text_problem("plain é 🙂") is None
    assert text_problem("a\x00") == "must not contain NUL (U+0000)"
    assert text_problem("\ud800") == "must be valid Unicode (it has a lone surrogate)"
