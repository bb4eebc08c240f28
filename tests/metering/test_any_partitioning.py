"""Partitioning is the producer's business, counting exactly once is metering's (issue 12,
item 1): whatever partition a usage event arrives on and whatever its key, it counts
once, on its user's home partition (`services.metering.aggregate`: forwarded there).

Against the real broker and worker: N events from M users with each kind of producer
a gateway may be, JSON and protobuf; one variant SIGKILLs the worker mid-stream."""

from __future__ import annotations

import asyncio
import json
import random
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

import pytest
from confluent_kafka import Producer
from google.protobuf import json_format

from devtools.localinfra.stack import Infra
from quartermaster.partitioning import partition_of
from quartermaster.topics import CONTENT_TYPE, JSON, PROTOBUF, Topic
from quartermaster.v1 import policy_pb2, usage_pb2
from tests.conftest import PARTITIONS, MeteringWorker
from tests.helpers import eventually, new_user, scrape, usage
from tests.metering.test_metering import counting_now

if TYPE_CHECKING:
    from quartermaster.v1.policy_pb2_grpc import PolicyServiceAsyncStub as Stub

pytestmark = pytest.mark.infra
EVENT_MICROS = 6_250  # tests.helpers.usage: gpt-5, 1000 in / 500 out

# How a record is sent: (producer config, key of an event, explicit partition or None)
Send = tuple[dict[str, object], Callable[[usage_pb2.UsageEvent], bytes | None], bool]
PRODUCERS: dict[str, Send] = {
    # librdkafka's default: CRC32 of the key (consistent_random), what a confluent-kafka,
    # kcat or Go confluent producer does unless told otherwise
    "librdkafka-default": ({}, lambda e: e.user_id.encode(), False),
    "murmur2": ({"partitioner": "murmur2_random"}, lambda e: e.user_id.encode(), False),
    "null-key": ({}, lambda e: None, False),
    "request-id-key": ({}, lambda e: e.event_id.encode(), False),
    "explicit-random-partition": ({}, lambda e: e.user_id.encode(), True),
}


def send(bootstrap: str, how: Send, events: list[usage_pb2.UsageEvent], as_json: bool) -> None:
    config, key_of, explicit = how
    producer = Producer({"bootstrap.servers": bootstrap, "acks": "all", **config})
    errors: list[str] = []
    rng = random.Random(7)

    def delivered(err: object, _msg: object) -> None:
        if err is not None:
            errors.append(str(err))

    headers: list[tuple[str, str | bytes | None]]
    for e in events:
        if as_json:
            value = json.dumps(json_format.MessageToDict(e)).encode()
            headers = [(CONTENT_TYPE, JSON.encode())]
        else:
            value, headers = e.SerializeToString(), [(CONTENT_TYPE, PROTOBUF.encode())]
        partition = rng.randrange(PARTITIONS) if explicit else -1  # -1: the partitioner's
        producer.produce(
            Topic.USAGE.value, value=value, key=key_of(e), headers=headers,
            on_delivery=delivered, partition=partition,
        )  # fmt: skip
    assert producer.flush(30) == 0, "records still in flight after 30 s"
    assert not errors, errors


def used_of(policy: Stub, user: str) -> Callable[[], Awaitable[int]]:
    async def probe() -> int:
        return (await policy.GetBudget(policy_pb2.GetBudgetRequest(user_id=user))).used_micros

    return probe


def spread_users(n: int) -> list[str]:
    """`n` new users, at least one at home on every partition."""
    users: list[str] = []
    while len(users) < n or {partition_of(u, PARTITIONS) for u in users} != set(range(PARTITIONS)):
        users.append(new_user())
    return users


@pytest.mark.parametrize("as_json", [False, True], ids=["protobuf", "json"])
@pytest.mark.parametrize("name", list(PRODUCERS))
async def test_each_producer_kind_counts_every_event_exactly_once(
    infra: Infra, metering: MeteringWorker, policy: Stub, name: str, as_json: bool
) -> None:
    users, per_user = spread_users(5), 12
    events = [usage(u) for u in users for _ in range(per_user)]
    random.Random(3).shuffle(events)
    # every event sent twice: the copy may land on another partition than the first
    send(infra.kafka_bootstrap, PRODUCERS[name], events + events[: len(events) // 3], as_json)
    for u in users:
        await eventually(used_of(policy, u), per_user * EVENT_MICROS, within=60)
    await asyncio.sleep(1.5)  # a second count would show by now
    for u in users:
        assert await used_of(policy, u)() == per_user * EVENT_MICROS, u


async def test_a_sigkill_while_forwarding_loses_nothing_and_counts_nothing_twice(
    infra: Infra, metering: MeteringWorker, policy: Stub
) -> None:
    users, per_user, chunks = spread_users(6), 300, 15

    def producer() -> None:
        for _ in range(chunks):
            events = [usage(u) for u in users for _ in range(per_user // chunks)]
            send(infra.kafka_bootstrap, PRODUCERS["explicit-random-partition"], events, False)
            time.sleep(0.1)

    await counting_now(infra, policy)
    await metering.kill_mid_stream(producer, used_of(policy, users[0]), per_user * EVENT_MICROS)
    for u in users:
        await eventually(used_of(policy, u), per_user * EVENT_MICROS, within=90)
    await asyncio.sleep(2)  # anything counted twice would show by now
    for u in users:
        assert await used_of(policy, u)() == per_user * EVENT_MICROS, u
    # about two thirds of the events were sent away from home and forwarded, nearly all
    # of them by the restarted worker (whose counter this is)
    forwarded = scrape(
        metering.env["QM_METERING_METRICS_ADDR"], "qm_metering_events_total", outcome="forwarded"
    )
    assert forwarded is not None
    assert forwarded > len(users) * per_user // 3
