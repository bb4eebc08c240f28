"""Exactly one Slack message per (intent, recipient), however the intents arrive:
every intent published twice, read by two notifier replica processes sharing a
consumer group, one of them SIGKILLed after Slack accepted a message and before it
recorded that (QM_NOTIFIER_HOLD_AFTER_SEND), then the whole topic read again from the
beginning by a replica of a new group. Counted at the Slack stand-in, by the delivery
id each message carries."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import pytest

from devtools.localinfra.stack import Infra
from devtools.slack_standin import SlackStandin
from tests.conftest import PARTITIONS, Replicas
from tests.helpers import eventually
from tests.notifier.kit import (
    add_people,
    delivery_ids,
    notifier_env,
    process,
    produce_intents,
    states,
    threshold_intent,
)

USERS = 20
PER_USER = 10


@pytest.fixture
async def standin() -> AsyncIterator[SlackStandin]:
    s = SlackStandin("secret")
    await s.start()
    try:
        yield s
    finally:
        await s.stop()


@pytest.mark.infra
async def test_two_replicas_a_sigkill_and_a_full_redelivery_send_one_message_each(
    infra: Infra, replicas: Replicas, standin: SlackStandin
) -> None:
    [policy] = await replicas.start(1)
    users = [f"u{uuid.uuid4().hex[:6]}" for _ in range(USERS)]
    await add_people(replicas.admin(policy), users)
    ws = replicas.workspace_id
    env = notifier_env(replicas.env, standin, policy.port)
    a = process("notifier-a", {**env, "QM_NOTIFIER_HOLD_AFTER_SEND": "true"})
    b = process("notifier-b", env)
    c = process("notifier-c", {**env, "QM_NOTIFIER_GROUP_ID": f"qm-notifier-again-{ws}"})
    notes = [threshold_intent(ws, u, n) for u in users for n in range(PER_USER)]
    try:
        a.start()
        b.start()
        produce_intents(infra.kafka_bootstrap, notes + notes)  # each one twice

        async def holding() -> bool:
            return "holding after delivery" in a.log_tail(100_000)

        await eventually(holding, True, within=60)
        a.kill()  # Slack has its message; its row says 'sending'

        async def delivered() -> object:
            return await states(infra.database_url, ws)

        await eventually(delivered, {"delivered": USERS * PER_USER}, within=90)
        # the message Slack had from the killed replica was found there, not sent again
        assert "was there already" in b.log_tail(100_000)
        b.stop()

        # A replica of a new group reads every intent again; then one more intent per
        # partition, delivered only once it has read everything before it.
        c.start()
        for p in range(PARTITIONS):
            produce_intents(infra.kafka_bootstrap, [threshold_intent(ws, users[p], 1000)], p)
        await eventually(delivered, {"delivered": USERS * PER_USER + PARTITIONS}, within=90)
    finally:
        for proc in (a, b, c):
            proc.stop(timeout=10)
            proc.log_path.unlink(missing_ok=True)
    counts = delivery_ids(standin)
    assert len(counts) == USERS * PER_USER + PARTITIONS
    assert set(counts.values()) == {1}, [k for k, v in counts.items() if v > 1]
    assert len(standin.posted()) == USERS * PER_USER + PARTITIONS
    per_person = [len(standin.posted(f"DU{u}")) for u in users]
    assert per_person == [PER_USER + 1] * PARTITIONS + [PER_USER] * (USERS - PARTITIONS)
