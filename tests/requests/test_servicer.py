"""RequestService in process: the real servicer on a real grpc.aio server with the real
authenticating interceptor, over a small in-memory store and fake sources (the store's
own concurrency and SQL are tested on PostgreSQL in test_store and test_api). Here:
identities from credentials, validation, mapping and every refusal's status."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Sequence
from datetime import datetime, timedelta
from typing import Any

import grpc
import pytest

from quartermaster.auth import Authenticator
from quartermaster.grpcguard import add_guarded
from quartermaster.money import MICROS_PER_CREDIT as C
from quartermaster.tokens import parse_tokens
from quartermaster.v1 import requests_pb2 as pb
from quartermaster.v1 import requests_pb2_grpc
from services.requests.machine import Entry, Outcome, Request
from services.requests.mapping import Listed, listed_of
from services.requests.paging import Position
from services.requests.routing import People
from services.requests.servicer import RequestServicer, Routing
from services.requests.sources import Unreachable
from services.requests.standing import Standing
from tests.helpers import refusal
from tests.requests.domain import PEOPLE, RULES, T0

PEOPLE_TOKENS = {  # name: (roles, token)
    "rae": ("member", "rae-token-0123456789"),
    "mia": ("member", "mia-token-0123456789"),
    "wes": ("admin", "wes-token-0123456789"),
    "notifier": ("delegate", "notifier-token-0123456789"),
    "dash": ("reader", "dash-token-0123456789"),
}
SPEC = ",".join(f"{n}:{r}:{t}" for n, (r, t) in PEOPLE_TOKENS.items())


def md(name: str, on_behalf_of: str = "") -> tuple[tuple[str, str], ...]:
    out = (("authorization", f"Bearer {PEOPLE_TOKENS[name][1]}"),)
    return (*out, ("qm-on-behalf-of", on_behalf_of)) if on_behalf_of else out


class FakeStore:
    """RequestStore's surface in memory (one event loop, so no races to lose)."""

    workspace_id = "ws"

    def __init__(self) -> None:
        self.requests: dict[str, Request] = {}
        self.entries: dict[str, list[Entry]] = {}

    async def create(self, out: Outcome) -> tuple[Request, bool]:
        self.requests[out.request.request_id] = out.request
        self.entries[out.request.request_id] = list(out.entries)
        return out.request, True

    async def get(self, request_id: str) -> Request | None:
        return self.requests.get(request_id)

    async def timeline(self, request_id: str) -> list[Entry]:
        return self.entries.get(request_id, [])

    async def apply(
        self, request_id: str, change: Callable[[Request], Outcome | None]
    ) -> Outcome | None:
        if request_id not in self.requests:
            raise KeyError(request_id)
        out = change(self.requests[request_id])
        if out is not None:
            self.requests[request_id] = out.request
            self.entries[request_id].extend(out.entries)
        return out

    async def awaiting(
        self, user_id: str, limit: int = 50, after: Position | None = None
    ) -> list[Listed]:
        found = sorted((r for r in self.requests.values() if user_id in r.awaiting()), key=_key)
        return [listed_of(r) for r in found if after is None or _key(r) > _key(after)][:limit]

    async def of_requester(self, requester: str, limit: int = 50) -> list[Request]:
        mine = [r for r in self.requests.values() if r.requester == requester]
        return sorted(mine, key=_key, reverse=True)[:limit]

    async def page(
        self, *, requester: str = "", states: Sequence[str] = (), limit: int = 50,
        after: Position | None = None,
    ) -> list[Listed]:  # fmt: skip
        found = sorted((
            r
            for r in self.requests.values()
            if requester in ("", r.requester) and (not states or r.state.value in states)
        ), key=_key, reverse=True)  # fmt: skip
        return [listed_of(r) for r in found if after is None or _key(r) < _key(after)][:limit]


def _key(r: Request | Position) -> tuple[datetime, str]:
    """The lists' order (services.requests.paging)."""
    return r.created_at, r.request_id


class FakePeople:
    def __init__(self) -> None:
        self.down = False

    async def people(self, user_id: str) -> People:
        if self.down:
            raise Unreachable("policy's DirectoryService at policy:50051: UNAVAILABLE")
        return PEOPLE


class FakeStanding:
    async def standing(self, user_id: str, now: datetime) -> Standing:
        return Standing(
            used_micros=90 * C,
            limit_micros=100 * C,
            burn_7d_micros=70 * C,
            by_model=(("gpt-5", 90 * C),),
        )


class Env:
    def __init__(self, stub: requests_pb2_grpc.RequestServiceAsyncStub, people: FakePeople) -> None:
        self.stub = stub
        self.people = people


@pytest.fixture
async def env() -> AsyncIterator[Env]:
    people = FakePeople()
    servicer = RequestServicer(
        FakeStore(), people, FakeStanding(), Routing(RULES, "", timedelta(days=7)), clock=lambda: T0
    )
    server = grpc.aio.server(interceptors=[Authenticator(parse_tokens(SPEC))])
    add_guarded(server, requests_pb2_grpc.add_RequestServiceServicer_to_server, servicer)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as ch:
            yield Env(requests_pb2_grpc.RequestServiceStub(ch), people)
    finally:
        await server.stop(None)


def ask(credits: int = 20, request_id: str = "") -> pb.CreateCreditRequest:
    return pb.CreateCreditRequest(
        request_id=request_id,
        amount_micros=credits * C,
        duration_seconds=3600,
        justification="eval run",
    )


async def test_create_names_the_requester_from_the_credential_with_routing_and_standing(
    env: Env,
) -> None:
    made = await env.stub.Create(ask(20, "cr-1"), metadata=md("rae"))
    assert (made.requester_user_id, made.state, made.version) == (
        "rae",
        pb.REQUEST_STATE_PENDING,
        1,
    )
    assert [list(s.approver_user_ids) for s in made.steps] == [["mia"]]
    assert made.standing.used_micros == 90 * C
    assert made.standing.burn_7d_micros == 70 * C
    assert [(e.action, e.actor_user_id) for e in made.timeline] == [("created", "rae")]
    again = await env.stub.Create(ask(20, "cr-1"), metadata=md("rae"))
    assert again == made  # the caller's id makes asking idempotent
    taken = await refusal(env.stub.Create(ask(20, "cr-1"), metadata=md("mia")))
    assert taken == (
        grpc.StatusCode.ALREADY_EXISTS,
        "request_id: 'cr-1' is another person's request",
    )
    mine = await env.stub.ListMine(pb.ListCreditRequests(), metadata=md("rae"))
    assert [r.request_id for r in mine.requests] == ["cr-1"]
    awaiting = await env.stub.ListAwaitingMe(pb.ListCreditRequests(), metadata=md("mia"))
    assert [r.request_id for r in awaiting.requests] == ["cr-1"]
    assert (
        await env.stub.ListAwaitingMe(pb.ListCreditRequests(), metadata=md("rae"))
    ).requests == []


async def test_bad_fields_are_named_all_at_once(env: Env) -> None:
    bad = pb.CreateCreditRequest(amount_micros=-1, links=["ftp://x"])
    code, said = await refusal(env.stub.Create(bad, metadata=md("rae")))
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    for field in ("amount_micros", "duration_seconds", "justification", "links[0]"):
        assert field in said
    code, said = await refusal(env.stub.Decide(pb.DecideCreditRequest(), metadata=md("mia")))
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert "request_id" in said
    assert "version" in said
    assert "vote" in said
    code, said = await refusal(
        env.stub.ListAll(pb.ListCreditRequests(page_token="x", limit=9999), metadata=md("dash"))
    )
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert "limit" in said
    assert "page_token" in said


async def test_self_approval_is_refused_for_a_member_a_delegate_and_an_admin(env: Env) -> None:
    made = await env.stub.Create(ask(20), metadata=md("wes"))  # an admin asking for themself
    decide = pb.DecideCreditRequest(request_id=made.request_id, version=1, vote=pb.VOTE_APPROVE)
    for who in (md("wes"), md("notifier", on_behalf_of="wes")):
        code, said = await refusal(env.stub.Decide(decide, metadata=who))
        assert (code, said) == (
            grpc.StatusCode.PERMISSION_DENIED,
            "wes asked for this request and can't decide it",
        )
    # a member may not pretend to be someone else; a delegate must name someone
    code, said = await refusal(
        env.stub.Decide(decide, metadata=(*md("rae"), ("qm-on-behalf-of", "mia")))
    )
    assert code == grpc.StatusCode.PERMISSION_DENIED
    assert "only a credential with role delegate" in said
    code, said = await refusal(env.stub.Decide(decide, metadata=md("notifier")))
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert said.startswith("qm-on-behalf-of")


async def test_a_delegate_decides_for_a_person_and_the_timeline_says_so(env: Env) -> None:
    made = await env.stub.Create(ask(20), metadata=md("rae"))
    decide = pb.DecideCreditRequest(
        request_id=made.request_id, version=1, vote=pb.VOTE_APPROVE, reason="go"
    )
    done = await env.stub.Decide(decide, metadata=md("notifier", on_behalf_of="mia"))
    assert done.state == pb.REQUEST_STATE_APPROVED
    assert done.approver_user_id == "mia"
    last = done.timeline[-1]
    assert (last.action, last.actor_user_id, last.via) == ("approved", "mia", "notifier")
    code, said = await refusal(env.stub.Decide(replace_version(decide, 1), metadata=md("wes")))
    assert code == grpc.StatusCode.FAILED_PRECONDITION
    assert said.startswith("the request was already approved by mia at 2026-11-30T09:00")
    code, said = await refusal(
        env.stub.Cancel(
            pb.CancelCreditRequest(request_id=made.request_id, version=2), metadata=md("rae")
        )
    )
    assert code == grpc.StatusCode.FAILED_PRECONDITION
    stale = await refusal(
        env.stub.Revoke(
            pb.RevokeCreditRequest(request_id=made.request_id, version=1, reason="x"),
            metadata=md("wes"),
        )
    )
    assert stale[0] == grpc.StatusCode.FAILED_PRECONDITION
    assert "version 1" in stale[1]
    revoked = await env.stub.Revoke(
        pb.RevokeCreditRequest(request_id=made.request_id, version=2, reason="done"),
        metadata=md("wes"),
    )
    assert revoked.state == pb.REQUEST_STATE_REVOKED


def replace_version(msg: pb.DecideCreditRequest, version: int) -> pb.DecideCreditRequest:
    out = pb.DecideCreditRequest()
    out.CopyFrom(msg)
    out.version = version
    return out


async def test_who_may_see_a_request_and_what_unknown_ones_answer(env: Env) -> None:
    made = await env.stub.Create(ask(20), metadata=md("rae"))
    get = pb.GetCreditRequest(request_id=made.request_id)
    for who in ("rae", "mia", "wes", "dash"):  # requester, approver, admin, reader
        assert (await env.stub.Get(get, metadata=md(who))).request_id == made.request_id
    code, said = await refusal(env.stub.Get(get, metadata=md("notifier", on_behalf_of="zed")))
    assert code == grpc.StatusCode.PERMISSION_DENIED
    assert "zed neither asked for" in said
    missing = await refusal(
        env.stub.Get(pb.GetCreditRequest(request_id="nope"), metadata=md("rae"))
    )
    assert missing == (grpc.StatusCode.NOT_FOUND, "request_id: no request 'nope'")
    listed = await env.stub.ListAll(pb.ListCreditRequests(limit=1), metadata=md("dash"))
    assert len(listed.requests) == 1
    assert listed.next_page_token == ""
    refused = await refusal(env.stub.ListAll(pb.ListCreditRequests(), metadata=md("rae")))
    assert refused[0] == grpc.StatusCode.PERMISSION_DENIED


async def test_routing_needs_the_directory_and_says_who_is_missing(env: Env) -> None:
    env.people.down = True
    code, said = await refusal(env.stub.Create(ask(20), metadata=md("rae")))
    assert code == grpc.StatusCode.UNAVAILABLE
    assert "directory is unreachable" in said
    assert (await env.stub.ListMine(pb.ListCreditRequests(), metadata=md("rae"))).requests == []
    env.people.down = False
    # 600 credits need a workspace admin; wes asking leaves wen, so it routes
    made = await env.stub.Create(ask(600), metadata=md("wes"))
    assert [list(s.approver_user_ids) for s in made.steps][-1] == ["wen"]


async def test_lists_page_by_position_and_refuse_another_lists_token(env: Env) -> None:
    """The fake clock gives every request the same created_at: request_id breaks ties."""
    for rid in ("cr-c", "cr-a", "cr-e", "cr-b", "cr-d"):
        await env.stub.Create(ask(20, rid), metadata=md("rae"))

    async def pages(call: Callable[..., Any], who: str) -> tuple[list[list[str]], str]:
        out, token, first = [], "", ""
        while True:
            page = await call(pb.ListCreditRequests(limit=2, page_token=token), metadata=md(who))
            out.append([r.request_id for r in page.requests])
            first = first or page.next_page_token
            if not page.next_page_token:
                return out, first
            token = page.next_page_token

    mine, mine_token = await pages(env.stub.ListMine, "rae")
    assert mine == [["cr-e", "cr-d"], ["cr-c", "cr-b"], ["cr-a"]]
    awaiting, _ = await pages(env.stub.ListAwaitingMe, "mia")
    assert awaiting == [["cr-a", "cr-b"], ["cr-c", "cr-d"], ["cr-e"]]
    alls, _ = await pages(env.stub.ListAll, "dash")
    assert alls == mine
    refused = await refusal(
        env.stub.ListAwaitingMe(pb.ListCreditRequests(page_token=mine_token), metadata=md("mia"))
    )
    assert refused == (
        grpc.StatusCode.INVALID_ARGUMENT,
        "page_token: a token of list 'mine', not of 'awaiting'",
    )


async def test_the_loser_of_a_revoke_race_hears_who_revoked_and_when(env: Env) -> None:
    made = await env.stub.Create(ask(20), metadata=md("rae"))
    approve = pb.DecideCreditRequest(request_id=made.request_id, version=1, vote=pb.VOTE_APPROVE)
    await env.stub.Decide(approve, metadata=md("mia"))
    revoke = pb.RevokeCreditRequest(request_id=made.request_id, version=2, reason="done")
    await env.stub.Revoke(revoke, metadata=md("notifier", on_behalf_of="rae"))
    code, said = await refusal(env.stub.Revoke(revoke, metadata=md("mia")))
    assert code == grpc.StatusCode.FAILED_PRECONDITION
    assert said == (
        "only an approved grant can be revoked; the grant was already revoked by rae via "
        "notifier at 2026-11-30T09:00:00+00:00 (approved by mia at 2026-11-30T09:00:00+00:00)"
    )
