"""The requests store against the real PostgreSQL: a change, its timeline entry and its
outbox event commit together; of 20 concurrent decisions on separate connections
exactly one applies; the timeline is append-only."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import asyncpg
import pytest

from devtools.localinfra.stack import Infra
from quartermaster.db import connect_pool
from quartermaster.money import MICROS_PER_CREDIT as C
from quartermaster.v1 import requests_pb2
from services.requests import machine, mapping
from services.requests.machine import Refused, State, Why
from services.requests.routing import route
from services.requests.standing import PastRequest, Standing
from services.requests.stores.outbox import OutboxStore
from services.requests.stores.requests import RequestStore
from services.requests.timing import Timing
from tests.requests.domain import PEOPLE, RULES

pytestmark = pytest.mark.infra
TIMING = Timing(timedelta(hours=4), timedelta(hours=8), timedelta(days=3))
STANDING = Standing(
    used_micros=9 * C, limit_micros=10 * C, period="month", by_product=(("chat", 9 * C),),
    by_model=(("gpt-5", 9 * C),), burn_7d_micros=7 * C,
    runs_out_at=datetime(2026, 12, 1, tzinfo=UTC),
    history=(PastRequest("cr-0", 5 * C, "approved", datetime(2026, 11, 1, tzinfo=UTC), 4 * C),),
)  # fmt: skip


@pytest.fixture
async def store(infra: Infra) -> AsyncIterator[RequestStore]:
    pool = await connect_pool(infra.database_url)
    try:
        yield RequestStore(pool, f"ws-{uuid.uuid4().hex[:8]}", TIMING)
    finally:
        await pool.close()


def fresh(workspace_id: str, credits: int = 20) -> machine.Outcome:
    """A new request of `credits` by rae with a unique id, as machine.create makes it."""
    return machine.create(
        request_id=f"cr-{uuid.uuid4().hex[:10]}", workspace_id=workspace_id, requester="rae",
        amount_micros=credits * C, duration_seconds=3600, justification="eval run for launch",
        steps=route(credits * C, "rae", PEOPLE, RULES), now=datetime.now(UTC),
        pending_for=TIMING.pending_for, links=("https://x.example/1",), product="chat",
        project="launch", standing=STANDING,
    )  # fmt: skip


async def outbox_events(database_url: str, request_id: str) -> list[requests_pb2.RequestEvent]:
    conn = await asyncpg.connect(database_url)
    try:
        rows = await conn.fetch(
            "SELECT payload FROM requests.outbox WHERE key = $1 ORDER BY id", request_id.encode()
        )
    finally:
        await conn.close()
    return [requests_pb2.RequestEvent.FromString(r["payload"]) for r in rows]


async def test_a_request_round_trips_with_its_entry_and_event(
    infra: Infra, store: RequestStore
) -> None:
    out = fresh(store.workspace_id, 600)
    req, created = await store.create(out)
    assert created
    assert await store.get(req.request_id) == req
    assert [e.action for e in await store.timeline(req.request_id)] == ["created"]
    again, created = await store.create(out)
    assert (again, created) == (req, False)
    (event,) = await outbox_events(infra.database_url, req.request_id)
    assert (event.type, event.version, event.schema_version) == ("request.created", 1, 1)
    assert event.event_id == f"{req.request_id}:1:request.created"
    assert list(event.current_approver_user_ids) == ["mia"]
    assert event.request.standing.used_micros == 9 * C
    assert event.request.standing.history[0].state == requests_pb2.REQUEST_STATE_APPROVED
    assert [s.name for s in event.request.steps] == ["manager", "group_admins", "workspace_admins"]
    # lists carry the standing without its own history (Get has it), the history none
    without = replace(req, standing=replace(STANDING, history=()))
    assert await store.of_requester("rae") == [replace(req, standing=Standing())]
    for listed in (await store.awaiting("mia"), await store.page(requester="rae"),
                   await store.page(states=["pending"])):  # fmt: skip
        assert [requests_pb2.CreditRequest.FromString(x.wire) for x in listed] == [
            mapping.credit_request_pb(without)
        ]
    assert await store.awaiting("gus") == []


async def test_each_change_commits_with_its_entry_vote_and_event(
    infra: Infra, store: RequestStore
) -> None:
    req, _ = await store.create(fresh(store.workspace_id, 20))
    now = datetime.now(UTC)
    done = await store.apply(req.request_id, lambda r: machine.decide(r, "mia", True, 1, now, "go"))
    assert done is not None
    stored = await store.get(req.request_id)
    assert stored is not None
    assert (stored.state, stored.version, stored.decided_by) == (State.APPROVED, 2, "mia")
    timeline = await store.timeline(req.request_id)
    assert [(e.action, e.actor, e.version) for e in timeline] == [
        ("created", "rae", 1), ("approved", "mia", 2)]  # fmt: skip
    events = await outbox_events(infra.database_url, req.request_id)
    assert [e.type for e in events] == ["request.created", "request.approved"]
    assert events[1].request.granted_micros == 20 * C
    assert events[1].override_expires_at.ToDatetime(UTC) == stored.ends_at
    with pytest.raises(Refused) as exc:  # a replay of the same decision
        await store.apply(req.request_id, lambda r: machine.decide(r, "mia", True, 1, now))
    assert exc.value.why is Why.NOT_PENDING
    with pytest.raises(KeyError):
        await store.apply("no-such", lambda r: None)
    assert await store.apply(req.request_id, lambda r: None) is None


async def test_of_20_concurrent_approvals_exactly_one_applies(
    infra: Infra, store: RequestStore
) -> None:
    approvers = tuple(f"admin-{i:02d}" for i in range(20))
    out = fresh(store.workspace_id)
    step = replace(out.request.steps[0], approvers=approvers, required=1)
    req, _ = await store.create(replace(out, request=replace(out.request, steps=(step,))))
    pools = [await connect_pool(infra.database_url, 1, 1) for _ in approvers]
    start = asyncio.Event()

    async def approve(pool: asyncpg.Pool, who: str) -> str:
        mine = RequestStore(pool, store.workspace_id, TIMING)
        await start.wait()
        try:
            await mine.apply(req.request_id, lambda r: machine.decide(
                r, who, True, req.version, datetime.now(UTC), "go"))  # fmt: skip
            return "won"
        except Refused as exc:
            return f"{exc.why.value}: {exc.message}"

    try:
        tasks = [asyncio.create_task(approve(p, w)) for p, w in zip(pools, approvers, strict=True)]
        start.set()
        results = await asyncio.gather(*tasks)
    finally:
        for p in pools:
            await p.close()
    assert results.count("won") == 1
    winner = approvers[results.index("won")]
    stored = await store.get(req.request_id)
    assert stored is not None
    assert (stored.state, stored.version, stored.decided_by) == (State.APPROVED, 2, winner)
    refusals = [r for r in results if r != "won"]
    assert len(refusals) == 19
    assert all(r.startswith(f"not_pending: the request was already approved by {winner} at")
               for r in refusals), refusals  # fmt: skip
    events = await outbox_events(infra.database_url, req.request_id)
    assert [e.type for e in events] == ["request.created", "request.approved"]
    conn = await asyncpg.connect(infra.database_url)
    try:
        votes = await conn.fetchval(
            "SELECT count(*) FROM requests.votes WHERE request_id = $1", req.request_id
        )
    finally:
        await conn.close()
    assert votes == 1


async def test_the_timeline_is_append_only(infra: Infra, store: RequestStore) -> None:
    req, _ = await store.create(fresh(store.workspace_id, 20))
    conn = await asyncpg.connect(infra.database_url)
    try:
        for sql in ("UPDATE requests.timeline SET reason = 'x' WHERE request_id = $1",
                    "DELETE FROM requests.timeline WHERE request_id = $1"):  # fmt: skip
            with pytest.raises(asyncpg.RaiseError, match="append-only"):
                await conn.execute(sql, req.request_id)
    finally:
        await conn.close()


async def test_due_lists_what_the_reconciler_must_do_and_the_outbox_backlog(
    infra: Infra, store: RequestStore
) -> None:
    req, _ = await store.create(fresh(store.workspace_id, 20))
    assert await store.due(req.created_at + timedelta(hours=3)) == []
    assert await store.due(req.created_at + timedelta(hours=4)) == [req.request_id]
    pool = await connect_pool(infra.database_url)
    try:
        assert await OutboxStore(pool).backlog() >= 1
    finally:
        await pool.close()


async def test_a_listed_request_answers_the_same_from_its_wire_form_or_its_columns(
    infra: Infra, store: RequestStore
) -> None:
    """A row stored before the wire form (listed NULL) is mapped from its columns; an
    override_status the confirmer changed (no transition, so no new wire form) shows."""
    req, _ = await store.create(fresh(store.workspace_id, 20))
    now = datetime.now(UTC)
    done = await store.apply(req.request_id, lambda r: machine.decide(r, "mia", True, 1, now, "go"))
    assert done is not None
    assert done.request.state is State.APPROVED
    assert await store.confirm([req.request_id], "installing", "installed") == 1
    from_wire = mapping.page_pb(await store.page(requester="rae"), "")
    conn = await asyncpg.connect(infra.database_url)
    try:
        await conn.execute(
            "UPDATE requests.requests SET listed = NULL WHERE workspace_id = $1",
            store.workspace_id,
        )
    finally:
        await conn.close()
    from_columns = mapping.page_pb(await store.page(requester="rae"), "")
    assert from_wire == from_columns
    (one,) = from_wire.requests
    assert (one.state, one.override_status) == (requests_pb2.REQUEST_STATE_APPROVED, "installed")
    assert not one.standing.history
    assert one.standing.used_micros == 9 * C
