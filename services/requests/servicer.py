"""RequestService: the credit-request workflow over gRPC, one method per operation of
services.requests.machine, each stored through `RequestStore.apply` (or `create`).

Who acts is the credential's person (quartermaster.auth.person: a member's or admin's
own credential, or a delegate naming the person it authenticated), never a field of the
request. A delegate's acts are recorded as "<person> via <service>" (Entry.via).

Refusals (each message names the field, the person or the state):
- INVALID_ARGUMENT: a bad field (every one at once), a delegate naming nobody;
- PERMISSION_DENIED: the requester deciding their own request (an admin too), someone
  not an approver of the current step, a credential that may not act for the person
  named, someone who may not see the request;
- FAILED_PRECONDITION: decided already (naming who and when), a stale version, a second
  vote, a request routing can't give approvers (naming the step);
- NOT_FOUND: no such request; ALREADY_EXISTS: a request_id another person used;
- UNAVAILABLE: policy's directory unreachable at create (nothing is stored), or
  PostgreSQL away (quartermaster.grpcguard maps that for every method);
- ABORTED: a change lost a hundred races in a row (try again).
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Any, NoReturn, Protocol

import grpc

from quartermaster import auth, roles
from quartermaster.auth import NotAPerson, Person
from quartermaster.grpcserver import abort, refuse
from quartermaster.v1 import requests_pb2, requests_pb2_grpc
from quartermaster.validation import MAX_TEXT_LENGTH, Problems
from services.requests import machine, mapping
from services.requests.machine import Entry, Outcome, Refused, Request, Why
from services.requests.mapping import Listed
from services.requests.paging import BadToken, Position, position_of, token_of
from services.requests.routing import RoutingError, StepRule, route
from services.requests.sources import PeopleSource, StandingSource, Unreachable
from services.requests.standing import PastRequest
from services.requests.stores.requests import Contended

Context = grpc.aio.ServicerContext[Any, Any]
MAX_PAGE = 500
DEFAULT_PAGE = 50
# A page's requests, serialized, at most (gRPC refuses answers over 4 MB by default;
# 500 requests with long justifications and ten links each could pass it).
MAX_PAGE_BYTES = 3 * 1024 * 1024
HISTORY = 20  # past requests shown to the approver
# The longest reason a change (Cancel, Decide, Revoke) may give, as Create's
# justification: in characters, so at most 4 times as many bytes of UTF-8.
MAX_REASON = MAX_TEXT_LENGTH
_CODES = {
    Why.NOT_ALLOWED: grpc.StatusCode.PERMISSION_DENIED,
    Why.NOT_PENDING: grpc.StatusCode.FAILED_PRECONDITION,
    Why.STALE: grpc.StatusCode.FAILED_PRECONDITION,
    Why.ALREADY_VOTED: grpc.StatusCode.FAILED_PRECONDITION,
    Why.INVALID: grpc.StatusCode.INVALID_ARGUMENT,
}


class Store(Protocol):
    """What the servicer needs of services.requests.stores.requests.RequestStore."""

    workspace_id: str

    async def create(self, out: Outcome) -> tuple[Request, bool]: ...
    async def get(self, request_id: str) -> Request | None: ...
    async def timeline(self, request_id: str) -> list[Entry]: ...
    async def apply(
        self, request_id: str, change: Callable[[Request], Outcome | None]
    ) -> Outcome | None: ...
    async def awaiting(
        self, user_id: str, limit: int = 50, after: Position | None = None
    ) -> list[Listed]: ...
    async def page(
        self, *, requester: str = "", states: Sequence[str] = (), limit: int = 50,
        after: Position | None = None,
    ) -> list[Listed]: ...  # fmt: skip
    async def of_requester(self, requester: str, limit: int = 50) -> list[Request]: ...


@dataclass(frozen=True)
class Routing:
    """How a new request is routed: the step rules by amount, the fallback approver
    ("" none) and how long it may stay pending."""

    rules: tuple[StepRule, ...]
    fallback: str
    pending_for: timedelta


def utc_now() -> datetime:
    return datetime.now(UTC)


def via(out: Outcome, person: Person) -> Outcome:
    """`out` with its entries saying which service acted for `person` (if one did)."""
    if not person.via:
        return out
    return replace(out, entries=tuple(replace(e, via=person.via) for e in out.entries))


def may_see(req: Request, user_id: str) -> bool:
    """The requester, and everyone routing named (at any step or escalation level)."""
    if user_id in (req.requester, req.decided_by):
        return True
    return any(user_id in s.approvers or any(user_id in lv for lv in s.chain) for s in req.steps)


def _page(
    msg: requests_pb2.ListCreditRequests, list_name: str, problems: Problems
) -> tuple[int, Position | None]:
    """(limit, where the page starts) from a list request; bad ones are problems."""
    limit = msg.limit or DEFAULT_PAGE
    problems.require_between("limit", limit, 1, MAX_PAGE)
    if not msg.page_token:
        return limit, None
    try:
        return limit, position_of(msg.page_token, list_name)
    except BadToken as exc:
        problems.add("page_token", str(exc))
        return limit, None


class RequestServicer(requests_pb2_grpc.RequestServiceServicer):
    """RequestService over a RequestStore, with `people` (routing) and `standing`
    (context for the approver) read at create time; `clock` gives aware UTC now."""

    def __init__(
        self,
        store: Store,
        people: PeopleSource,
        standing: StandingSource,
        routing: Routing,
        clock: Callable[[], datetime] = utc_now,
    ) -> None:
        self._store = store
        self._people = people
        self._standing = standing
        self._routing = routing
        self._clock = clock

    async def _person(self, context: Context) -> Person:
        try:
            return auth.person(auth.caller(), context.invocation_metadata())
        except NotAPerson as exc:
            code = (
                grpc.StatusCode.INVALID_ARGUMENT
                if exc.invalid
                else grpc.StatusCode.PERMISSION_DENIED
            )
            await abort(context, code, str(exc))

    async def _viewer(self, context: Context) -> Person | None:
        """The person calling, or None for a reader (who sees every request)."""
        if roles.READER in auth.caller().roles:
            try:
                return auth.person(auth.caller(), context.invocation_metadata())
            except NotAPerson:
                return None
        return await self._person(context)

    async def _answer(self, req: Request) -> requests_pb2.CreditRequest:
        return mapping.credit_request_pb(req, await self._store.timeline(req.request_id))

    async def _apply(
        self, context: Context, request_id: str, person: Person,
        change: Callable[[Request], Outcome],
    ) -> requests_pb2.CreditRequest:  # fmt: skip
        """Store `change` of the request and answer it as it is after; refusals end the
        call with their status (module docstring)."""
        try:
            out = await self._store.apply(request_id, lambda r: via(change(r), person))
        except Refused as exc:
            said = exc.message
            if exc.naming_revoker is not None:
                said = exc.naming_revoker(await self._revoker(request_id))
            await abort(context, _CODES[exc.why], said)
        except KeyError:
            await abort(
                context, grpc.StatusCode.NOT_FOUND, f"request_id: no request {request_id!r}"
            )
        except Contended as exc:
            await abort(context, grpc.StatusCode.ABORTED, str(exc))
        assert out is not None  # the machine's operations always change something
        return await self._answer(out.request)

    async def _revoker(self, request_id: str) -> str:
        """Who revoked the request ("<person> via <service>" for a delegate's act), from
        its timeline; "" when it has no revocation."""
        for e in reversed(await self._store.timeline(request_id)):
            if e.action == "revoked":
                return f"{e.actor} via {e.via}" if e.via else e.actor
        return ""

    async def Create(
        self, request: requests_pb2.CreateCreditRequest, context: Context
    ) -> requests_pb2.CreditRequest:
        person = await self._person(context)
        ask = mapping.ask_of(request)
        problems = ask.problems()
        if request.request_id:
            problems.require_id("request_id", request.request_id)
        await refuse(context, problems)
        request_id = request.request_id or f"cr-{uuid.uuid4().hex}"
        existing = await self._store.get(request_id)
        if existing is not None:
            if existing.requester != person.user_id:
                await abort(context, grpc.StatusCode.ALREADY_EXISTS,
                            f"request_id: {request_id!r} is another person's request")  # fmt: skip
            return await self._answer(existing)
        now = self._clock()
        # The three reads are independent: asked at once, a create waits for the slowest.
        standing_read = asyncio.ensure_future(self._standing.standing(person.user_id, now))
        past_read = asyncio.ensure_future(self._store.of_requester(person.user_id, HISTORY))
        try:
            people = await self._people.people(person.user_id)
        except Unreachable as exc:
            standing_read.cancel()
            past_read.cancel()
            said = f"can't route the request: the directory is unreachable: {exc}"
            await abort(context, grpc.StatusCode.UNAVAILABLE, said)
        r = self._routing
        try:
            steps = route(ask.amount_micros, person.user_id, people, r.rules, r.fallback)
        except RoutingError as exc:
            standing_read.cancel()
            past_read.cancel()
            await abort(context, grpc.StatusCode.FAILED_PRECONDITION,
                        f"no one can approve this request: {exc}")  # fmt: skip
        standing, past = await standing_read, await past_read
        history = tuple(PastRequest(p.request_id, p.amount_micros, p.state.value, p.created_at,
                                    p.granted_micros if p.approved_at else 0)
                        for p in past)  # fmt: skip
        try:
            out = machine.create(
                request_id=request_id, workspace_id=self._store.workspace_id,
                requester=person.user_id, amount_micros=ask.amount_micros,
                duration_seconds=ask.duration_seconds, justification=ask.justification,
                steps=steps, now=now, pending_for=r.pending_for, links=ask.links,
                product=ask.product, project=ask.project,
                standing=replace(standing, history=history),
            )  # fmt: skip
        except Refused as exc:
            await abort(context, _CODES[exc.why], exc.message)
        req, _ = await self._store.create(via(out, person))
        return await self._answer(req)

    async def Get(
        self, request: requests_pb2.GetCreditRequest, context: Context
    ) -> requests_pb2.CreditRequest:
        viewer = await self._viewer(context)
        problems = Problems()
        problems.require_id("request_id", request.request_id)
        await refuse(context, problems)
        req = await self._store.get(request.request_id)
        if req is None:
            await self._not_found(context, request.request_id)
        if viewer is not None and not viewer.admin and not may_see(req, viewer.user_id):
            await abort(context, grpc.StatusCode.PERMISSION_DENIED,
                        f"{viewer.user_id} neither asked for nor may decide request "
                        f"{req.request_id}")  # fmt: skip
        return await self._answer(req)

    async def _not_found(self, context: Context, request_id: str) -> NoReturn:
        await abort(context, grpc.StatusCode.NOT_FOUND, f"request_id: no request {request_id!r}")

    async def _change_input(
        self, context: Context, request_id: str, version: int, reason: str,
        problems: Problems | None = None,
    ) -> Person:  # fmt: skip
        """The person changing a request; INVALID_ARGUMENT naming every bad field (those
        of `problems` too): request_id, version, and `reason`, free text of at most
        MAX_REASON characters (it rides on the change's event, which must fit a Kafka
        record, and on every answer showing the request)."""
        person = await self._person(context)
        problems = problems if problems is not None else Problems()
        problems.require_id("request_id", request_id)
        problems.require_text("reason", reason, MAX_REASON)
        if version <= 0:
            problems.add("version", "required: the version the decision was made on (Get)")
        await refuse(context, problems)
        return person

    async def Cancel(
        self, request: requests_pb2.CancelCreditRequest, context: Context
    ) -> requests_pb2.CreditRequest:
        person = await self._change_input(
            context, request.request_id, request.version, request.reason
        )
        now = self._clock()
        return await self._apply(context, request.request_id, person, lambda r: machine.cancel(
            r, person.user_id, request.version, now, request.reason))  # fmt: skip

    async def Decide(
        self, request: requests_pb2.DecideCreditRequest, context: Context
    ) -> requests_pb2.CreditRequest:
        problems = Problems()
        if request.vote not in (requests_pb2.VOTE_APPROVE, requests_pb2.VOTE_DENY):
            problems.add("vote", "required: VOTE_APPROVE or VOTE_DENY")
        problems.require_not_negative("granted_micros", request.granted_micros)
        problems.require_not_negative("granted_duration_seconds", request.granted_duration_seconds)
        person = await self._change_input(
            context, request.request_id, request.version, request.reason, problems
        )
        now = self._clock()

        def decide(r: Request) -> Outcome:
            return machine.decide(
                r, person.user_id, request.vote == requests_pb2.VOTE_APPROVE, request.version,
                now, request.reason, granted_micros=request.granted_micros,
                granted_seconds=request.granted_duration_seconds, admin=person.admin,
            )  # fmt: skip

        return await self._apply(context, request.request_id, person, decide)

    async def Revoke(
        self, request: requests_pb2.RevokeCreditRequest, context: Context
    ) -> requests_pb2.CreditRequest:
        person = await self._change_input(
            context, request.request_id, request.version, request.reason
        )
        now = self._clock()
        user, admin = person.user_id, person.admin
        return await self._apply(context, request.request_id, person, lambda r: machine.revoke(
            r, user, request.version, now, request.reason, admin=admin))  # fmt: skip

    async def _list(
        self, context: Context, request: requests_pb2.ListCreditRequests, list_name: str,
        read: Callable[[list[str], int, Position | None], Awaitable[Sequence[Listed]]],
    ) -> requests_pb2.ListCreditRequestsResponse:  # fmt: skip
        """A page of `read(states, limit, after)`: one more than asked is read, so
        next_page_token is given only when there is a next page (paging.py). A page
        holds fewer than `limit` (with a token for the rest) when more would pass
        MAX_PAGE_BYTES."""
        problems = Problems()
        states = mapping.states_of(request, problems)
        limit, after = _page(request, list_name, problems)
        await refuse(context, problems)
        found = await read(states, limit + 1, after)
        shown = mapping.fitting(found[:limit], MAX_PAGE_BYTES)
        more = ""
        if len(found) > shown:
            last = found[shown - 1]
            more = token_of(list_name, Position(last.created_at, last.request_id))
        return mapping.page_pb(found[:shown], more)

    async def ListMine(
        self, request: requests_pb2.ListCreditRequests, context: Context
    ) -> requests_pb2.ListCreditRequestsResponse:
        """The caller's requests, newest first."""
        person = await self._person(context)
        return await self._list(context, request, "mine", lambda states, limit, after: (
            self._store.page(requester=person.user_id, states=states, limit=limit,
                             after=after)))  # fmt: skip

    async def ListAwaitingMe(
        self, request: requests_pb2.ListCreditRequests, context: Context
    ) -> requests_pb2.ListCreditRequestsResponse:
        """Pending requests whose current step waits on the caller (`states` is ignored:
        only pending requests await anyone), oldest first."""
        person = await self._person(context)
        return await self._list(context, request, "awaiting", lambda _states, limit, after: (
            self._store.awaiting(person.user_id, limit, after)))  # fmt: skip

    async def ListAll(
        self, request: requests_pb2.ListCreditRequests, context: Context
    ) -> requests_pb2.ListCreditRequestsResponse:
        """Every request of the workspace, newest first (admin or reader)."""
        return await self._list(context, request, "all", lambda states, limit, after: (
            self._store.page(states=states, limit=limit, after=after)))  # fmt: skip
