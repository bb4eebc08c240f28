"""quartermaster.consumers against the real broker: a GroupConsumer commits each
offset only after its record's handler (or the error callback) returned, and one
bad record does not stop the others; a ReplayConsumer reads a topic from its start."""

from __future__ import annotations

import asyncio
import threading
import uuid

import pytest
from confluent_kafka import Message

from devtools.localinfra.stack import Infra
from quartermaster.consumers import GroupConsumer, ReplayConsumer
from tests.helpers import new_topic, produce

pytestmark = pytest.mark.infra

# Group joins take about half the session timeout on the local broker.
FAST_GROUP = {"session.timeout.ms": 6000, "heartbeat.interval.ms": 500}


def _topic(infra: Infra, records: list[bytes]) -> str:
    """A new one-partition topic holding `records`, in order."""
    name = new_topic(infra.kafka_bootstrap, "test-consumers")
    produce(infra.kafka_bootstrap, [(b"k", r, []) for r in records], topic=name)
    return name


class Run:
    """One GroupConsumer of `group` whose handler fails on b"bad" and which stops
    after handling `last`; `dlq_up` False makes the error callback fail too."""

    def __init__(self, infra: Infra, topic: str, group: str, last: bytes, dlq_up: bool) -> None:
        self.handled: list[bytes] = []
        self.dead: list[tuple[bytes, str]] = []
        self._last, self._dlq_up = last, dlq_up
        self.consumer = GroupConsumer(
            infra.kafka_bootstrap, [topic], group, self.handle, self.on_error, **FAST_GROUP
        )

    async def handle(self, msg: Message) -> None:
        value = msg.value() or b""
        if value == b"bad":
            raise ValueError("not a number")
        self.handled.append(value)
        if value == self._last:
            self.consumer.stopping = True

    async def on_error(self, msg: Message, exc: Exception) -> None:
        if not self._dlq_up:
            raise RuntimeError("the dead-letter queue is down")
        self.dead.append((msg.value() or b"", str(exc)))


async def test_group_consumer_commits_after_the_effect_and_goes_past_a_bad_record(
    infra: Infra,
) -> None:
    topic = _topic(infra, [b"1", b"2", b"bad", b"4", b"5"])
    group = f"test-group-{uuid.uuid4().hex[:8]}"

    # The dead-letter queue is down: the bad record's offset is not committed.
    first = Run(infra, topic, group, last=b"5", dlq_up=False)
    with pytest.raises(RuntimeError, match="dead-letter queue is down"):
        await asyncio.wait_for(first.consumer.run(), 60)
    assert first.handled == [b"1", b"2"]

    # A restart resumes at the bad record (1 and 2 were committed), sends it to the
    # dead-letter queue and carries on.
    second = Run(infra, topic, group, last=b"5", dlq_up=True)
    await asyncio.wait_for(second.consumer.run(), 60)
    assert second.handled == [b"4", b"5"]
    assert second.dead == [(b"bad", "not a number")]
    assert (second.consumer.handled, second.consumer.failed) == (2, 1)

    # Everything was committed: a third member has nothing to do.
    third = Run(infra, topic, group, last=b"never", dlq_up=True)
    task = asyncio.create_task(third.consumer.run())
    await asyncio.sleep(8)  # long enough to join and fetch
    third.consumer.stopping = True
    await asyncio.wait_for(task, 30)
    assert (third.handled, third.dead) == ([], [])


async def test_replay_consumer_reads_everything_from_the_start_and_says_when_caught_up(
    infra: Infra,
) -> None:
    topic = _topic(infra, [b"a", b"b", b"c"])
    seen: list[bytes] = []
    stop = threading.Event()
    consumer = ReplayConsumer(infra.kafka_bootstrap, topic, "test-replay")
    thread = threading.Thread(
        target=consumer.run_thread, args=(lambda m: seen.append(m.value() or b""), stop)
    )
    thread.start()
    try:
        assert await asyncio.to_thread(consumer.caught_up.wait, 30)
        assert seen == [b"a", b"b", b"c"]
    finally:
        stop.set()
        thread.join(10)
