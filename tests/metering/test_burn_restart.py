"""A restart no longer makes everyone anomalous (issue 14, item 11): a fault test that
kills the real metering worker and starts it again, on the real broker and PostgreSQL.

Burn-rate baselines lived in memory and started at zero, so bob, spending his usual
6.48 credits an hour, got an "unusual AI spend" intent within a minute of a restart.
Now a restarted worker rebuilds a user's baseline from their stored hourly rollups on
their first event, and a baseline without enough history never alerts.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import asyncpg
import pytest

from devtools.localinfra.stack import Infra
from quartermaster.partitioning import partition_of
from quartermaster.topics import CONTENT_TYPE, PROTOBUF, USAGE_BATCH_TYPE, Topic
from quartermaster.v1 import notifications_pb2, usage_pb2
from tests.conftest import PARTITIONS, MeteringWorker
from tests.helpers import eventually, new_user, produce, produce_usage, read_topic, usage

pytestmark = pytest.mark.infra
# gpt-5 output tokens at 10 micro-credits each: what one event costs, in micros
BOB_EVERY_10_MIN = 108_000  # 1.08 credits: 6.48 credits an hour
CAROL_EVERY_10_MIN = 20_000  # 0.2 credits: 1.2 an hour
HISTORY_EVENTS = 36  # one every 10 minutes for six hours


def spend(user: str, output_tokens: int, at: datetime) -> usage_pb2.UsageEvent:
    return usage(user, input_tokens=0, output_tokens=output_tokens, occurred_at=at)


def three_users_in_one_partition() -> list[str]:
    """bob, carol and dave, in one partition (so one record carries all three)."""
    first = new_user()
    users = [first]
    while len(users) < 3:
        user = new_user()
        if partition_of(user, PARTITIONS) == partition_of(first, PARTITIONS):
            users.append(user)
    return users


async def stored_micros(infra: Infra, user: str) -> int:
    conn = await asyncpg.connect(infra.database_url)
    try:
        value = await conn.fetchval(
            "SELECT coalesce(sum(micros), 0) FROM metering.rollups_hourly WHERE user_id = $1",
            user,
        )
        return int(value)
    finally:
        await conn.close()


def anomalies(infra: Infra, user: str) -> list[notifications_pb2.Notification]:
    out = []
    for m in read_topic(infra.kafka_bootstrap, Topic.NOTIFICATIONS.value):
        if m.key() == user.encode():
            n = notifications_pb2.Notification()
            n.ParseFromString(m.value() or b"")
            if n.kind == notifications_pb2.NOTIFICATION_KIND_ANOMALY:
                out.append(n)
    return out


async def test_after_a_restart_a_usual_rate_is_quiet_and_a_real_jump_is_told(
    infra: Infra, metering: MeteringWorker
) -> None:
    bob, carol, dave = three_users_in_one_partition()
    now = datetime.now(UTC)
    history = []
    for k in range(HISTORY_EVENTS):  # from 15 minutes to 6 hours ago
        at = now - timedelta(minutes=15 + 10 * k)
        history += [spend(bob, BOB_EVERY_10_MIN, at), spend(carol, CAROL_EVERY_10_MIN, at)]
    produce_usage(infra.kafka_bootstrap, history)
    await eventually(lambda: stored_micros(infra, bob), HISTORY_EVENTS * 10 * BOB_EVERY_10_MIN)
    await eventually(lambda: stored_micros(infra, carol), HISTORY_EVENTS * 10 * CAROL_EVERY_10_MIN)

    metering.kill()
    metering.start()

    # In one record, so one batch: bob at his usual rate (1.08 credits in the last
    # 10 minutes), carol at ten times hers, dave (no history) at bob's rate.
    at = datetime.now(UTC) - timedelta(minutes=1)
    events = [
        spend(bob, BOB_EVERY_10_MIN, at),
        spend(carol, 10 * CAROL_EVERY_10_MIN, at),
        spend(dave, BOB_EVERY_10_MIN, at),
    ]
    batch = usage_pb2.UsageBatch(events=events).SerializeToString()
    headers = [(CONTENT_TYPE, f"{PROTOBUF}; type={USAGE_BATCH_TYPE}".encode())]
    produce(infra.kafka_bootstrap, [(bob.encode(), batch, headers)])

    async def carol_told() -> int:
        return len(await asyncio.to_thread(anomalies, infra, carol))

    await eventually(carol_told, 1, within=90)
    [note] = await asyncio.to_thread(anomalies, infra, carol)
    assert "5x or more their usual rate" in note.body
    usual = int(note.data["baseline_per_hour_micros"])
    assert 1_000_000 <= usual <= 1_200_000, "carol's usual rate, rebuilt from her rollups"
    # bob's and dave's intents would have been published with carol's, in one send
    assert await asyncio.to_thread(anomalies, infra, bob) == []
    assert await asyncio.to_thread(anomalies, infra, dave) == []
    assert metering.alive()
