"""The outbox relay as a real process against the real broker, PostgreSQL and policy:
SIGKILLed between commit and publish, and between publish and marking sent, the event
reaches policy once and its override appears once."""

from __future__ import annotations

from collections.abc import AsyncIterator

import asyncpg
import pytest

from devtools.localinfra.stack import Infra
from quartermaster.db import connect_pool
from quartermaster.money import MICROS_PER_CREDIT as C
from quartermaster.topics import Topic
from services.policy.decide import Enforcement
from services.requests.relay import EVENT_ID_HEADER
from services.requests.stores.requests import RequestStore
from tests.conftest import Replicas
from tests.helpers import eventually, new_user, read_topic
from tests.requests.kit import TIMING, approved, limit_of, log_text, relay_process

pytestmark = pytest.mark.infra


@pytest.fixture
async def store(infra: Infra, replicas: Replicas) -> AsyncIterator[RequestStore]:
    pool = await connect_pool(infra.database_url)
    try:
        yield RequestStore(pool, replicas.workspace_id, TIMING)
    finally:
        await pool.close()


def copies(bootstrap: str, event_id: str) -> int:
    """How many records of qm.requests.v1 carry this event id."""
    records = read_topic(bootstrap, Topic.REQUESTS.value, idle=1.5)
    return sum(
        1 for m in records
        if dict(m.headers() or []).get(EVENT_ID_HEADER) == event_id.encode()
    )  # fmt: skip


async def overrides_of(database_url: str, workspace_id: str, user: str) -> list[str]:
    conn = await asyncpg.connect(database_url)
    try:
        rows = await conn.fetch(
            "SELECT override_id FROM policy.overrides WHERE workspace_id = $1 AND user_id = $2",
            workspace_id, user,
        )  # fmt: skip
        return [r["override_id"] for r in rows]
    finally:
        await conn.close()


@pytest.mark.parametrize("window", ["after_read", "after_publish"])
async def test_a_relay_killed_mid_batch_loses_and_duplicates_no_effect(
    infra: Infra, replicas: Replicas, store: RequestStore, window: str
) -> None:
    await replicas.set_default(10 * C, Enforcement.SOFT)
    await replicas.start(1)
    user = new_user()
    req = await approved(store, user, 5)  # committed with its event, not yet published
    event_id = f"{req.request_id}:{req.version}:request.approved"
    held = relay_process(replicas.env, f"held-{window}", relay_hold=window)
    held.start()
    try:

        async def holding() -> bool:
            text = log_text(held.log_path)
            return f"relay holding {window}" in text and event_id in text

        await eventually(holding, True, within=60)
        held.kill()  # SIGKILL: nothing marked sent
    finally:
        held.stop()
    published_before = copies(infra.kafka_bootstrap, event_id)
    assert published_before == (0 if window == "after_read" else 1)
    relay = relay_process(replicas.env, f"after-{window}")
    relay.start()
    try:

        async def limit() -> int:
            return await limit_of(replicas, user)

        await eventually(limit, 15 * C, within=60)
        await eventually(lambda: _sent(infra.database_url, event_id), True, within=30)
    finally:
        relay.stop()
    # republished after a kill past the publish: the same event id twice on the topic
    assert copies(infra.kafka_bootstrap, event_id) == published_before + 1
    policy = replicas.running[0].approvals

    async def repeats() -> int:  # policy saw the republished copy and changed nothing
        return policy.repeated

    await eventually(repeats, published_before, within=30)
    assert policy.installed == 1
    assert await overrides_of(infra.database_url, replicas.workspace_id, user) == [
        f"req-{req.request_id}"
    ]
    assert await limit_of(replicas, user) == 15 * C


async def _sent(database_url: str, event_id: str) -> bool:
    conn = await asyncpg.connect(database_url)
    try:
        sent = await conn.fetchval(
            "SELECT sent_at IS NOT NULL FROM requests.outbox WHERE event_id = $1", event_id
        )
        return bool(sent)
    finally:
        await conn.close()
