"""The reconciler over the real store on a controllable clock: after downtime it does
what fell due, each step with its timeline entry and outbox event; and the requester
can't approve their own request through the store either, as an admin or not."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import asyncpg
import pytest

from devtools.localinfra.stack import Infra
from quartermaster.db import connect_pool
from services.requests import machine
from services.requests.machine import Refused, State, Why
from services.requests.reconciler import Reconciler
from services.requests.stores.requests import RequestStore
from tests.helpers import new_user
from tests.requests.kit import TIMING, machine_create

pytestmark = pytest.mark.infra


@pytest.fixture
async def store(infra: Infra) -> AsyncIterator[RequestStore]:
    pool = await connect_pool(infra.database_url)
    try:
        yield RequestStore(pool, f"ws-{new_user()}", TIMING)
    finally:
        await pool.close()


class Clock:
    def __init__(self) -> None:
        self.now = datetime.now(UTC)

    def __call__(self) -> datetime:
        return self.now


async def test_a_reminder_once_then_expiry_even_after_downtime(
    store: RequestStore,
) -> None:
    clock = Clock()
    req, _ = await store.create(machine_create(store.workspace_id, "rae", 5, ("mia",)))
    reconciler = Reconciler(store, TIMING, clock=clock)
    assert await reconciler.pass_once() == 0
    clock.now = req.created_at + TIMING.remind_after
    assert await reconciler.pass_once() == 1
    assert await reconciler.pass_once() == 0  # reminded once
    clock.now = req.created_at + 30 * TIMING.pending_for  # a long downtime
    assert await reconciler.pass_once() == 1
    stored = await store.get(req.request_id)
    assert stored is not None
    assert (stored.state, stored.decided_by) == (State.EXPIRED, "system")
    actions = [e.action for e in await store.timeline(req.request_id)]
    assert actions == ["created", "reminded", "expired"]
    assert await store.due(clock.now + timedelta(days=365)) == []


@pytest.mark.parametrize("admin", [False, True])
async def test_the_requester_cannot_approve_their_own_request_through_the_store(
    infra: Infra, store: RequestStore, admin: bool
) -> None:
    req, _ = await store.create(machine_create(store.workspace_id, "rae", 5, ("mia",)))
    with pytest.raises(Refused) as exc:
        await store.apply(req.request_id, lambda r: machine.decide(
            r, "rae", True, r.version, datetime.now(UTC), admin=admin))  # fmt: skip
    assert exc.value.why is Why.NOT_ALLOWED
    assert await store.get(req.request_id) == req
    conn = await asyncpg.connect(infra.database_url)
    try:
        events = await conn.fetchval(
            "SELECT count(*) FROM requests.outbox WHERE key = $1", req.request_id.encode()
        )
    finally:
        await conn.close()
    assert events == 1  # request.created only
