"""RequestService's bounds, in process (the servicer of test_servicer on a real grpc.aio
server): every free-text field of every method is bounded and refused with
INVALID_ARGUMENT naming it, a page token holds any request id a request can have and
no other, and a page stays under gRPC's 4 MB answer whatever its requests hold."""

from __future__ import annotations

import base64
from collections.abc import Callable
from typing import Any

import grpc
import pytest

from quartermaster.v1 import requests_pb2 as pb
from services.requests import servicer
from services.requests.servicer import MAX_REASON
from tests.helpers import refusal
from tests.requests.test_servicer import Env, ask, env, md

__all__ = ["env"]  # the fixture, used by name
TOO_LONG = f"reason: longer than {MAX_REASON} characters"


async def test_every_changes_reason_is_bounded_and_named(env: Env) -> None:
    """A 1 MB reason once made a 2 MB event the broker refused (the outbox stalled)."""
    made = await env.stub.Create(ask(20), metadata=md("rae"))
    rid = made.request_id
    long, longest = "y" * (MAX_REASON + 1), "é" * MAX_REASON
    deny = pb.DecideCreditRequest(request_id=rid, version=1, reason=long, vote=pb.VOTE_DENY)
    calls: list[tuple[Callable[..., Any], object, str]] = [
        (env.stub.Cancel, pb.CancelCreditRequest(request_id=rid, version=1, reason=long), "rae"),
        (env.stub.Decide, deny, "mia"),
        (env.stub.Revoke, pb.RevokeCreditRequest(request_id=rid, version=1, reason=long), "wes"),
    ]
    for call, msg, who in calls:
        assert await refusal(call(msg, metadata=md(who))) == (
            grpc.StatusCode.INVALID_ARGUMENT,
            TOO_LONG,
        )
    # with other bad fields, all named at once; the longest reason allowed is taken
    code, said = await refusal(env.stub.Cancel(
        pb.CancelCreditRequest(request_id="x" * 257, reason=long), metadata=md("rae")))  # fmt: skip
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert said.split("; ") == [
        "request_id: longer than 256 characters", TOO_LONG,
        "version: required: the version the decision was made on (Get)",
    ]  # fmt: skip
    approve = pb.DecideCreditRequest(
        request_id=rid, version=1, reason=longest, vote=pb.VOTE_APPROVE
    )
    approved = await env.stub.Decide(approve, metadata=md("mia"))
    assert approved.decision_reason == longest
    revoke = pb.RevokeCreditRequest(request_id=rid, version=2, reason=longest)
    assert (await env.stub.Revoke(revoke, metadata=md("rae"))).timeline[-1].reason == longest


async def test_every_free_text_field_of_create_is_bounded_and_named(env: Env) -> None:
    bad = pb.CreateCreditRequest(
        request_id="r" * 257, amount_micros=1, duration_seconds=1, justification="j" * 2001,
        links=["https://x/" + "l" * 2000, *["https://ok"] * 10], product="p" * 257,
        project="q" * 257,
    )  # fmt: skip
    code, said = await refusal(env.stub.Create(bad, metadata=md("rae")))
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert said.split("; ") == [
        "justification: longer than 2000 characters", "links: at most 10 items, got 11",
        "links[0]: longer than 2000 characters", "product: longer than 256 characters",
        "project: longer than 256 characters", "request_id: longer than 256 characters",
    ]  # fmt: skip
    states = pb.ListCreditRequests(states=[pb.REQUEST_STATE_PENDING] * 8)
    assert await refusal(env.stub.ListAll(states, metadata=md("dash"))) == (
        grpc.StatusCode.INVALID_ARGUMENT,
        "states: at most 7 items, got 8",
    )


async def test_a_page_token_holds_the_longest_id_and_refuses_a_forged_one(env: Env) -> None:
    """256 times "é" is a valid request_id: its token (712 characters) was refused."""
    for rid in ("é" * 256, "cr-a"):
        await env.stub.Create(ask(20, rid), metadata=md("rae"))
    first = await env.stub.ListMine(pb.ListCreditRequests(limit=1), metadata=md("rae"))
    assert [r.request_id for r in first.requests] == ["é" * 256]
    assert len(first.next_page_token) > 400
    after = pb.ListCreditRequests(limit=1, page_token=first.next_page_token)
    second = await env.stub.ListMine(after, metadata=md("rae"))
    assert [r.request_id for r in second.requests] == ["cr-a"]
    for raw in (b"all|1|\x00", b"all|1|a\x00b", "all|²|x".encode(), b"all|1|" + b"x" * 257):
        token = base64.urlsafe_b64encode(raw).decode().rstrip("=")
        code, said = await refusal(
            env.stub.ListAll(pb.ListCreditRequests(page_token=token), metadata=md("dash"))
        )
        assert code == grpc.StatusCode.INVALID_ARGUMENT, raw
        assert said.startswith("page_token: not a token this service gave"), said


async def test_a_page_ends_before_its_answer_would_pass_the_bound(
    env: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each request here serializes to about 2.2 KB: a bound of 5 KB shows two a page,
    whatever the limit asked, and the token goes on from the last one shown."""
    for i in range(5):
        msg = ask(20, f"cr-{i}")
        msg.justification = "j" * 2000
        await env.stub.Create(msg, metadata=md("rae"))
    monkeypatch.setattr(servicer, "MAX_PAGE_BYTES", 5000)
    pages, token = [], ""
    while True:
        page = await env.stub.ListMine(
            pb.ListCreditRequests(limit=50, page_token=token), metadata=md("rae")
        )
        pages.append([r.request_id for r in page.requests])
        assert page.ByteSize() <= 5000
        token = page.next_page_token
        if not token:
            break
    assert pages == [["cr-4", "cr-3"], ["cr-2", "cr-1"], ["cr-0"]]
    monkeypatch.setattr(servicer, "MAX_PAGE_BYTES", 100)  # one a page, never none
    one = await env.stub.ListMine(pb.ListCreditRequests(limit=50), metadata=md("rae"))
    assert [r.request_id for r in one.requests] == ["cr-4"]
    assert one.next_page_token
