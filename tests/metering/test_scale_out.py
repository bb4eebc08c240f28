"""Scale-out without stalls (issue 12, item 7): workers joining, SIGKILLed and stopped
(SIGTERM) mid-stream while events keep coming, and every user's totals come out exact,
in PostgreSQL and in policy's view of the totals topic.

A fault test: worker processes (`python -m services.metering`, one consumer group) on
a broker of the test's own whose topics have PARTS partitions, counting into the
session's PostgreSQL under a consumer name of their own. A thread produces a round of
one event per user every ROUND_SECONDS throughout, keyed by user with the producer's
default (CRC32) partitioner, so most events also arrive away from their user's home
partition and are forwarded between workers while partitions move. The sequence:
A starts; B joins; A is SIGKILLed (its partitions wait for the session timeout); C
joins; B is stopped with SIGTERM (it leaves the group); C alone counts the rest.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import threading
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from datetime import UTC, datetime
from zoneinfo import ZoneInfo

import asyncpg
import pytest
from confluent_kafka import Consumer, TopicPartition

from devtools.localinfra import free_port
from devtools.localinfra.broker import LocalBroker
from devtools.localinfra.stack import Infra
from quartermaster.periods import PeriodKind, period_of
from quartermaster.topics import Topic
from services.policy.totals import TotalsIndex
from services.policy.totals_feed import TotalsFeed
from tests.conftest import ROOT
from tests.helpers import eventually, new_user, produce_usage, scrape, usage
from tests.metering.test_broker_restart import Worker, day_total
from tests.metering.test_metering import EVENT_MICROS

pytestmark = pytest.mark.infra
PARTS = 6  # more partitions than workers at any time, so every worker holds some
USERS = 12
ROUND_SECONDS = 0.05  # one event per user each round: ~240 events/s


class Group:
    """Metering worker processes of one consumer group, each with its own metrics
    address and log; every one still running is stopped at the end."""

    def __init__(self, env: dict[str, str]) -> None:
        self.env = env
        self.workers: dict[str, Worker] = {}
        self.logs = ROOT / ".run" / f"test-{os.getpid()}-logs" / env["QM_METERING_APP_ID"]

    def start(self, name: str) -> Worker:
        env = {**self.env, "QM_METERING_METRICS_ADDR": f"127.0.0.1:{free_port()}"}
        worker = Worker(env, self.logs / f"{name}.log")
        worker.start()
        self.workers[name] = worker
        return worker

    def counted(self, name: str) -> Callable[[], Awaitable[bool]]:
        """A probe: whether worker `name` has counted any event (it holds partitions:
        it joined the group and was assigned some)."""
        addr = self.workers[name].env["QM_METERING_METRICS_ADDR"]

        async def probe() -> bool:
            try:
                n = scrape(addr, "qm_metering_events_total", outcome="counted")
            except OSError:  # its metrics server is not up yet
                return False
            return (n or 0) > 0

        return probe

    def mentions(self, partition: int) -> list[str]:
        """The workers whose logs name `partition` of the usage topic."""
        out = []
        for name, w in self.workers.items():
            try:
                text = w.log()
            except FileNotFoundError:
                continue
            if f"partition {partition}:" in text or f"{Topic.USAGE.value}[{partition}]" in text:
                out.append(name)
        return out

    def tails(self) -> str:
        return "\n".join(
            f"--- {name} (exit {w.proc.poll()}):\n{w.proc.log_tail(30)}"
            for name, w in self.workers.items()
        )

    def close(self) -> None:
        """Stop every worker and remove the logs (a failure quotes their tails)."""
        for w in self.workers.values():
            w.proc.stop(timeout=15)
        shutil.rmtree(self.logs, ignore_errors=True)


@pytest.fixture
def group(own_broker: LocalBroker, service_env: dict[str, str]) -> Iterator[Group]:
    g = Group({
        **service_env,
        "QM_KAFKA_BOOTSTRAP": own_broker.bootstrap,
        "QM_TOPIC_PARTITIONS": str(PARTS),
        "QM_METERING_APP_ID": f"qm-metering-scale-{uuid.uuid4().hex[:8]}",
    })  # fmt: skip
    try:
        yield g
    finally:
        g.close()


def _ends(bootstrap: str) -> dict[int, int]:
    """The usage topic's end offset per partition."""
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": f"qm-test-{uuid.uuid4().hex[:8]}"})
    try:
        return {
            p: c.get_watermark_offsets(TopicPartition(Topic.USAGE.value, p), timeout=10)[1]
            for p in range(PARTS)
        }
    finally:
        c.close()


async def _stored(database_url: str, consumer: str) -> dict[int, int]:
    """metering.offsets of the group: partition → next offset counted from."""
    conn = await asyncpg.connect(database_url)
    try:
        rows = await conn.fetch(
            "SELECT partition, next_offset FROM metering.offsets"
            " WHERE consumer = $1 AND topic = $2",
            consumer, Topic.USAGE.value,
        )  # fmt: skip
    finally:
        await conn.close()
    return {r["partition"]: r["next_offset"] for r in rows}


async def _report(infra: Infra, broker: LocalBroker, group: Group, sent: dict[str, int]) -> str:
    """Everything a failed count needs: each user's expected and counted events and
    micros, each partition's stored offset against the topic's end and the workers
    whose logs name it, and the workers' log tails."""
    lines = ["users (expected events/micros, counted events/micros):"]
    for user, n in sent.items():
        micros, events = await day_total(infra.database_url, user)()
        mark = "" if (micros, events) == (n * EVENT_MICROS, n) else "  <-- off"
        lines.append(f"  {user}: {n}/{n * EVENT_MICROS} vs {events}/{micros}{mark}")
    stored = await _stored(infra.database_url, group.env["QM_METERING_APP_ID"])
    ends = await asyncio.to_thread(_ends, broker.bootstrap)
    lines.append("partitions (stored offset / end offset; workers whose logs name it):")
    for p in range(PARTS):
        lines.append(f"  {p}: {stored.get(p)} / {ends.get(p)}; {', '.join(group.mentions(p))}")
    return "\n".join(lines) + "\n" + group.tails()


async def _caught_up(infra: Infra, broker: LocalBroker, group: Group) -> bool:
    """Whether every partition's stored offset reached the topic's end (nothing is
    left to count or forward: a forward lands at its home's end, moving it on)."""
    await asyncio.sleep(0.5)  # each look opens a client: not every 50 ms
    stored = await _stored(infra.database_url, group.env["QM_METERING_APP_ID"])
    ends = await asyncio.to_thread(_ends, broker.bootstrap)
    return all(stored.get(p, 0) >= end for p, end in ends.items())


async def _joined(group: Group, name: str) -> None:
    try:
        await eventually(group.counted(name), True, within=60)
    except AssertionError as exc:
        raise AssertionError(f"{name} never counted: {exc}\n{group.tails()}") from None


@pytest.mark.parametrize("own_broker", [PARTS], indirect=True)
async def test_workers_joining_killed_and_stopped_mid_stream_count_every_event_once(
    infra: Infra, own_broker: LocalBroker, group: Group, workspace_id: str
) -> None:
    users = [new_user() for _ in range(USERS)]
    sent = dict.fromkeys(users, 0)
    stop, failed = threading.Event(), []
    began = datetime.now(UTC)

    def send() -> None:
        try:
            while not stop.is_set():
                produce_usage(own_broker.bootstrap, [usage(u) for u in users])
                for u in users:
                    sent[u] += 1
                time.sleep(ROUND_SECONDS)
        except BaseException as exc:  # told after the join: the totals would be short
            failed.append(exc)

    view = TotalsIndex(workspace_id)
    feed = TotalsFeed(own_broker.bootstrap, view)
    feed.start()
    sender = threading.Thread(target=send, daemon=True)
    try:
        sender.start()
        group.start("A")
        await _joined(group, "A")
        group.start("B")
        await _joined(group, "B")  # B joined: the group rebalanced under the stream
        group.workers["A"].proc.kill()  # SIGKILL: its partitions wait for the session timeout
        group.start("C")
        await _joined(group, "C")
        group.workers["B"].proc.stop(timeout=15)  # SIGTERM: B leaves the group
        assert group.workers["C"].proc.poll() is None, group.tails()
        await asyncio.sleep(2)  # C alone under the stream for a while
    finally:
        stop.set()
        sender.join(30)
        assert not failed, failed

    months = {period_of(PeriodKind.MONTH, t, ZoneInfo("UTC")).key
              for t in (began, datetime.now(UTC))}  # fmt: skip
    try:
        # Slow under load is not wrong: wait for the counting to reach the topic's
        # end (forwards included), however long C takes, then the totals must be exact.
        try:
            await eventually(lambda: _caught_up(infra, own_broker, group), True, within=120)
        except AssertionError:
            raise AssertionError(
                "the stored offsets never reached the topic's end\n"
                + await _report(infra, own_broker, group, sent)
            ) from None
        for user in users:
            want = (sent[user] * EVENT_MICROS, sent[user])
            try:
                await eventually(day_total(infra.database_url, user), want, within=10)
            except AssertionError as exc:
                raise AssertionError(
                    f"{user}: {exc}\n" + await _report(infra, own_broker, group, sent)
                ) from None

            async def seen(u: str = user) -> int:
                return sum(view.used(u, m) for m in months)

            await eventually(seen, sent[user] * EVENT_MICROS, within=30)
        await asyncio.sleep(1.5)  # anything counted twice would show by now
        for user in users:
            assert await day_total(infra.database_url, user)() == (
                sent[user] * EVENT_MICROS,
                sent[user],
            ), f"{user} counted twice?\n" + await _report(infra, own_broker, group, sent)
            assert sum(view.used(user, m) for m in months) == sent[user] * EVENT_MICROS
    finally:
        feed.stop()
    assert group.workers["C"].proc.poll() is None, group.tails()
    assert sum(sent.values()) > 1000, "the stream ran through every step"
