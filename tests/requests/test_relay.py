"""The outbox relay as a real process against the real broker, PostgreSQL and policy:
SIGKILLed between commit and publish, and between publish and marking sent, the event
reaches policy once and its override appears once. In process, on the real broker: an
event the producer refuses for good is set aside and the ones after it are published,
and an unexpected failure is logged and retried, never ending the loop."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import asyncpg
import pytest

from devtools.localinfra.stack import Infra
from quartermaster.db import connect_pool
from quartermaster.money import MICROS_PER_CREDIT as C
from quartermaster.publisher import Publisher
from quartermaster.topics import Topic
from services.policy.decide import Enforcement
from services.requests import machine
from services.requests.relay import EVENT_ID_HEADER, RETRY_SECONDS, Relay
from services.requests.stores.outbox import OutboxRecord, OutboxStore
from services.requests.stores.requests import RequestStore
from tests.conftest import Replicas
from tests.helpers import eventually, new_user, read_topic
from tests.requests.kit import (
    TIMING,
    approved,
    limit_of,
    log_text,
    machine_create,
    relay_process,
)

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


async def test_an_event_the_broker_refuses_is_set_aside_and_the_next_ones_are_published(
    infra: Infra, workspace_id: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A 1 MB reason (stored before reasons were bounded) makes a 2 MB event, past what
    the producer sends: it once ended the relay task, and no later event was published."""
    pool = await connect_pool(infra.database_url)
    publisher = Publisher(infra.kafka_bootstrap)
    store = RequestStore(pool, workspace_id, TIMING)
    try:
        poisoned, _ = await store.create(machine_create(workspace_id, new_user(), 5, ["lead"]))
        huge = "y" * 1_000_000
        cancel = await store.apply(poisoned.request_id, lambda r: machine.cancel(
            r, r.requester, r.version, datetime.now(UTC), huge))  # fmt: skip
        assert cancel is not None
        after, _ = await store.create(machine_create(workspace_id, new_user(), 5, ["lead"]))
        big = f"{poisoned.request_id}:2:request.cancelled"
        later = f"{after.request_id}:1:request.created"
        relay = Relay(OutboxStore(pool), publisher, batch=500, poll_seconds=0.05)
        task = asyncio.create_task(relay.run())
        try:
            await eventually(lambda: _sent(infra.database_url, later), True, within=60)
            assert not task.done()  # it went on
        finally:
            relay.stopping = True
            await asyncio.wait_for(task, 30)
        aside = dict(await OutboxStore(pool).set_aside_rows())
        assert aside[big].startswith("MSG_SIZE_TOO_LARGE: ")
        assert not await _sent(infra.database_url, big)
        assert copies(infra.kafka_bootstrap, later) == 1
        assert copies(infra.kafka_bootstrap, big) == 0
        assert f"event {big} (" in caplog.text
        assert [r.levelname for r in caplog.records if big in r.getMessage()] == ["ERROR"]
        # the event before the poisoned one was published too
        assert await _sent(infra.database_url, f"{poisoned.request_id}:1:request.created")
    finally:
        publisher.close()
        await pool.close()


class BrokenOutbox(OutboxStore):
    """An outbox whose read fails with a bug's exception, not an outage's."""

    async def unsent(self, limit: int) -> list[OutboxRecord]:
        raise KeyError("a bug")


async def test_a_relay_failing_unexpectedly_says_so_and_tries_again(
    infra: Infra, caplog: pytest.LogCaptureFixture
) -> None:
    """A bug is logged at ERROR with its traceback, each round, and the loop goes on."""
    pool = await connect_pool(infra.database_url)
    publisher = Publisher(infra.kafka_bootstrap)
    relay = Relay(BrokenOutbox(pool), publisher)
    task = asyncio.create_task(relay.run())
    try:
        await asyncio.sleep(RETRY_SECONDS * 2.5)
        assert not task.done()
        failures = [r for r in caplog.records if "relay failed unexpectedly" in r.getMessage()]
        assert len(failures) >= 2
        assert failures[0].levelname == "ERROR"
        assert failures[0].exc_info is not None
    finally:
        relay.stopping = True
        await asyncio.wait_for(task, 10)
        publisher.close()
        await pool.close()


async def test_a_closed_pool_is_waited_out_like_an_outage(
    infra: Infra, caplog: pytest.LogCaptureFixture
) -> None:
    """A closed pool raises asyncpg.InterfaceError, neither an OSError nor a
    PostgresError: the loop used to end there, silently. It is retried as an outage
    (quartermaster.db.RETRIED_NEXT_ROUND), at WARNING."""
    pool = await connect_pool(infra.database_url)
    await pool.close()
    publisher = Publisher(infra.kafka_bootstrap)
    relay = Relay(OutboxStore(pool), publisher)
    task = asyncio.create_task(relay.run())
    try:
        await asyncio.sleep(RETRY_SECONDS * 2.5)
        assert not task.done()
        retries = [r for r in caplog.records if "relay could not publish" in r.getMessage()]
        assert len(retries) >= 2
        assert {r.levelname for r in retries} == {"WARNING"}
    finally:
        relay.stopping = True
        await asyncio.wait_for(task, 10)
        publisher.close()
