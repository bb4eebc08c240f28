"""Grants through the whole path: the real store, the relay (in process), the broker
and a real policy replica. Approved requests stack in policy, a revoked one removes
its override only, an ended one (by the reconciler, on a controllable clock) too, an
approval for less than asked installs what was granted, and 20 concurrent approvals
of one request install one override."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import pytest

from devtools.localinfra.stack import Infra
from quartermaster.db import connect_pool
from quartermaster.money import MICROS_PER_CREDIT as C
from quartermaster.publisher import Publisher
from services.policy.decide import Enforcement
from services.requests import machine
from services.requests.machine import Refused, State
from services.requests.reconciler import Reconciler
from services.requests.relay import Relay
from services.requests.stores.outbox import OutboxStore
from services.requests.stores.requests import RequestStore
from tests.conftest import Replicas
from tests.helpers import eventually, new_user
from tests.requests.kit import TIMING, approved, limit_of, machine_create

pytestmark = pytest.mark.infra


class Path:
    """The store and an in-process relay publishing to the session's broker."""

    def __init__(self, store: RequestStore, relay: Relay) -> None:
        self.store = store
        self.relay = relay

    async def publish(self) -> None:
        """Publish everything in the outbox now."""
        while await self.relay.publish_once():
            pass


@pytest.fixture
async def path(infra: Infra, replicas: Replicas) -> AsyncIterator[Path]:
    await replicas.set_default(10 * C, Enforcement.SOFT)
    await replicas.start(1)
    pool = await connect_pool(infra.database_url, max_size=25)
    publisher = Publisher(infra.kafka_bootstrap)
    try:
        yield Path(RequestStore(pool, replicas.workspace_id, TIMING),
                   Relay(OutboxStore(pool), publisher, batch=500))  # fmt: skip
    finally:
        publisher.close()
        await pool.close()


async def test_grants_stack_and_each_ends_on_its_own_in_policy(
    path: Path, replicas: Replicas
) -> None:
    user = new_user()
    first = await approved(path.store, user, 5)
    second = await approved(path.store, user, 7, seconds=600)
    await path.publish()

    async def limit() -> int:
        return await limit_of(replicas, user)

    await eventually(limit, 22 * C)
    now = datetime.now(UTC)
    revoked = await path.store.apply(
        first.request_id, lambda r: machine.revoke(r, "lead", r.version, now, "done early")
    )
    assert revoked is not None
    await path.publish()
    await eventually(limit, 17 * C)  # the first removed, the second still there
    # The reconciler, its clock past the second's end, ends it (its override would lapse
    # at the real time only): policy removes it from the event.
    later = Reconciler(path.store, TIMING, clock=lambda: now + timedelta(seconds=601))
    assert await later.pass_once() >= 1
    ended = await path.store.get(second.request_id)
    assert ended is not None
    assert ended.state is State.ENDED
    await path.publish()
    await eventually(limit, 10 * C)
    assert replicas.running[0].approvals.removed == 2


async def test_an_approval_for_less_than_asked_installs_what_was_granted(
    path: Path, replicas: Replicas
) -> None:
    user = new_user()
    await approved(path.store, user, 9)
    await approved(path.store, user, 8, granted_credits=3)
    await path.publish()

    async def limit() -> int:
        return await limit_of(replicas, user)

    await eventually(limit, 22 * C)  # 10 + 9 + 3 of the 8 asked


async def test_20_concurrent_approvals_install_one_override(path: Path, replicas: Replicas) -> None:
    user = new_user()
    approvers = tuple(f"admin-{i:02d}" for i in range(20))
    made, _ = await path.store.create(machine_create(path.store.workspace_id, user, 4, approvers))

    async def approve(who: str) -> str:
        try:
            await path.store.apply(made.request_id, lambda r: machine.decide(
                r, who, True, made.version, datetime.now(UTC), "go"))  # fmt: skip
            return "won"
        except Refused:
            return "refused"

    results = await asyncio.gather(*(approve(w) for w in approvers))
    assert sorted(results) == ["refused"] * 19 + ["won"]
    await path.publish()

    async def limit() -> int:
        return await limit_of(replicas, user)

    await eventually(limit, 14 * C)
    assert replicas.running[0].approvals.installed == 1
