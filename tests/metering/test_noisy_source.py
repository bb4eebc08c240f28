"""One noisy producer no longer switches enforcement off (issue 14, item 10), against the
real broker, PostgreSQL and worker process: 1,100 empty records from one source, among
good records from it and from another, used to pause metering for every user."""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import TYPE_CHECKING

import pytest

from devtools.localinfra.stack import Infra
from quartermaster.partitioning import partition_of
from quartermaster.telemetry import headers_dict
from quartermaster.topics import CONTENT_TYPE, PROTOBUF, SOURCE_HEADER, Topic
from quartermaster.v1 import notifications_pb2
from tests.conftest import PARTITIONS, MeteringWorker
from tests.helpers import eventually, new_user, produce, read_topic, scrape, usage
from tests.metering.test_metering import EVENT_MICROS, used_of

if TYPE_CHECKING:
    from quartermaster.v1.policy_pb2_grpc import PolicyServiceAsyncStub as Stub

pytestmark = pytest.mark.infra
KafkaRecord = tuple[bytes, bytes, list[tuple[str, bytes]]]
EMPTY_RECORDS = 1_100


def users_in_every_partition(each: int) -> list[str]:
    """New users, `each` of them in every partition of qm.usage.v1."""
    by_partition: dict[int, list[str]] = {p: [] for p in range(PARTITIONS)}
    while any(len(v) < each for v in by_partition.values()):
        user = new_user()
        members = by_partition[partition_of(user, PARTITIONS)]
        if len(members) < each:
            members.append(user)
    return [u for members in by_partition.values() for u in members]


def intents_about(infra: Infra, source: str) -> list[notifications_pb2.Notification]:
    """The DLQ-limit intents naming `source` on qm.notifications.v1."""
    out = []
    for m in read_topic(infra.kafka_bootstrap, Topic.NOTIFICATIONS.value):
        n = notifications_pb2.Notification()
        n.ParseFromString(m.value() or b"")
        if n.data.get("anomaly") == "dlq_source" and n.data.get("source") == source:
            out.append(n)
    return out


async def test_a_noisy_source_is_dead_lettered_and_told_once_while_everyone_is_counted(
    infra: Infra, metering: MeteringWorker, policy: Stub
) -> None:
    noisy, gateway = f"noisy-{uuid.uuid4().hex[:8]}", f"gw-{uuid.uuid4().hex[:8]}"
    users = users_in_every_partition(2)
    pb = (CONTENT_TYPE, PROTOBUF.encode())
    records: list[KafkaRecord] = []
    good = dict.fromkeys(users, 0)
    for i in range(EMPTY_RECORDS):
        user = users[i % len(users)]
        records.append((user.encode(), b"", [pb, (SOURCE_HEADER, noisy.encode())]))
        if i % 50 == 0:  # the noisy producer's own good records count too
            records.append(
                (
                    user.encode(),
                    usage(user).SerializeToString(),
                    [pb, (SOURCE_HEADER, noisy.encode())],
                )
            )
            good[user] += 1
        if i % 25 == 0:  # another producer, named by its events' source field
            records.append((user.encode(), usage(user, source=gateway).SerializeToString(), [pb]))
            good[user] += 1
    produce(infra.kafka_bootstrap, records)

    for user, n in good.items():
        await eventually(used_of(policy, user), n * EVENT_MICROS, within=120)

    async def told() -> int:
        return len(await asyncio.to_thread(intents_about, infra, noisy))

    await eventually(told, 1)
    [note] = await asyncio.to_thread(intents_about, infra, noisy)
    assert note.kind == notifications_pb2.NOTIFICATION_KIND_ANOMALY
    assert note.recipient_user_id == "ops"
    assert note.data["reason"] == "empty record value"
    assert f"Usage from {noisy!r} is mostly rejected" == note.subject

    dead = [
        m
        for m in read_topic(infra.kafka_bootstrap, Topic.USAGE_DLQ.value)
        if headers_dict(m.headers()).get(SOURCE_HEADER) == noisy
    ]
    assert len(dead) == EMPTY_RECORDS, "every bad record is in the DLQ, never dropped"
    addr = metering.env["QM_METERING_METRICS_ADDR"]
    episodes = await asyncio.to_thread(
        scrape, addr, "qm_metering_dlq_source_episodes_total", source=noisy
    )
    over = await asyncio.to_thread(scrape, addr, "qm_metering_dlq_source_over_limit", source=noisy)
    assert (episodes, over) == (1.0, 1.0)
    assert await told() == 1, "once per episode, not per record"
    assert metering.alive()
    assert "PAUSED" not in metering.log_tail(2000)


FLOOD = 20_000


async def test_a_flood_of_empty_records_from_one_source_does_not_stop_others_counting(
    infra: Infra, metering: MeteringWorker, policy: Stub
) -> None:
    """Issue 14, breaker #4: 20,000 empty records from one source delayed everyone's
    counting by 34 s. The flood, then good events of another source behind it on every
    partition: each is counted exactly, and the delay is printed."""
    noisy, gateway = f"flood-{uuid.uuid4().hex[:8]}", f"gw-{uuid.uuid4().hex[:8]}"
    users = users_in_every_partition(2)
    pb = (CONTENT_TYPE, PROTOBUF.encode())
    flood: list[KafkaRecord] = [
        (users[i % len(users)].encode(), b"", [pb, (SOURCE_HEADER, noisy.encode())])
        for i in range(FLOOD)
    ]
    good: list[KafkaRecord] = [
        (u.encode(), usage(u, source=gateway).SerializeToString(), [pb])
        for u in users
        for _ in range(3)
    ]
    produce(infra.kafka_bootstrap, flood + good)
    produced = time.monotonic()
    for user in users:
        await eventually(used_of(policy, user), 3 * EVENT_MICROS, within=120)
    delay = time.monotonic() - produced
    print(f"{FLOOD} empty records ahead: the good events counted {delay:.2f} s after")  # noqa: T201
    await asyncio.sleep(1)  # a second count would show by now
    for user in users:
        assert await used_of(policy, user)() == 3 * EVENT_MICROS
    assert metering.alive()
