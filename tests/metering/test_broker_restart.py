"""A broker that lost its data: metering refuses loudly instead of skipping every new
event as already counted, and the operator's command makes it count them exactly
(issue 14, item 1, metering's half).

A fault test: it restarts a broker of its own (the local broker keeps nothing, so its
topics come back empty with new ids) under a real metering worker process counting
into the session's PostgreSQL under a consumer name of its own.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import pytest

from devtools.localinfra import free_port
from devtools.localinfra.broker import LocalBroker
from devtools.localinfra.process import ChildProcess
from devtools.localinfra.stack import Infra
from quartermaster.kafka import ensure_topics
from quartermaster.topics import Topic
from quartermaster.v1 import usage_pb2
from services.metering.__main__ import EXIT_REFUSED
from tests.conftest import PARTITIONS, ROOT
from tests.helpers import eventually, new_user, produce_usage, read_topic, usage
from tests.metering.test_metering import EVENT_MICROS

pytestmark = pytest.mark.infra
REFUSAL = "metering refuses to count qm.usage.v1: qm.usage.v1 was recreated"


class Worker:
    """`python -m services.metering` on the private broker, restartable."""

    def __init__(self, env: dict[str, str], log_path: Path) -> None:
        self.env, self.log_path = env, log_path
        self.proc = ChildProcess("metering", [sys.executable, "-m", "services.metering"],
                                 log_path, env=env, cwd=ROOT)  # fmt: skip

    def start(self) -> None:
        self.proc = ChildProcess("metering", self.proc.argv, self.log_path, env=self.env, cwd=ROOT)
        self.proc.start()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


@pytest.fixture
def worker(own_broker: LocalBroker, service_env: dict[str, str]) -> Iterator[Worker]:
    env = {
        **service_env,
        "QM_KAFKA_BOOTSTRAP": own_broker.bootstrap,
        "QM_METERING_APP_ID": f"qm-metering-restart-{uuid.uuid4().hex[:8]}",
        "QM_METERING_METRICS_ADDR": f"127.0.0.1:{free_port()}",
    }
    log_path = ROOT / ".run" / f"test-{os.getpid()}-logs" / f"{env['QM_METERING_APP_ID']}.log"
    w = Worker(env, log_path)
    try:
        yield w
    finally:
        w.proc.stop(timeout=15)
        log_path.unlink(missing_ok=True)


def cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    argv = [sys.executable, "-m", "services.metering.cli", *args]
    return subprocess.run(argv, env=env, cwd=ROOT, capture_output=True, text=True, timeout=120)


def day_total(database_url: str, user: str):  # type: ignore[no-untyped-def]
    """A probe: (used_micros, event_count) of `user`'s day totals, summed (one row, or
    two across midnight UTC), from PostgreSQL."""

    async def probe() -> tuple[int, int]:
        conn = await asyncpg.connect(database_url)
        try:
            row = await conn.fetchrow(
                "SELECT coalesce(sum(used_micros), 0)::bigint AS m,"
                " coalesce(sum(event_count), 0)::bigint AS n FROM metering.totals"
                " WHERE subject_kind = 'user' AND subject_id = $1 AND period_kind = 'day'",
                user,
            )
            assert row is not None
            return int(row["m"]), int(row["n"])
        finally:
            await conn.close()

    return probe


async def test_a_restarted_broker_is_refused_loudly_then_accepted_and_counted_exactly(
    infra: Infra, own_broker: LocalBroker, worker: Worker
) -> None:
    user = new_user()
    counted = day_total(infra.database_url, user)
    worker.start()
    produce_usage(own_broker.bootstrap, [usage(user) for _ in range(5)])
    await eventually(counted, (5 * EVENT_MICROS, 5), within=90)

    # The broker loses everything; the topics are created again as `make run` would.
    own_broker.stop()
    own_broker.start()
    ensure_topics(own_broker.bootstrap, PARTITIONS)
    produce_usage(own_broker.bootstrap, [usage(user) for _ in range(3)])

    # The running worker refuses: an ERROR saying what happened and what to do, exit 78.
    await eventually(lambda: _async(worker.proc.poll()), EXIT_REFUSED, within=120)
    log = worker.log()
    assert REFUSAL in log, log[-3000:]
    assert "topic accept --by NAME --reason TEXT" in log
    assert await counted() == (5 * EVENT_MICROS, 5), "nothing counted, nothing skipped"

    # Restarted by a supervisor, it refuses again at once, before joining the group.
    worker.start()
    await eventually(lambda: _async(worker.proc.poll()), EXIT_REFUSED, within=60)

    check = cli(worker.env, "topic", "check")
    assert check.returncode == 1, check
    assert "problem: qm.usage.v1 was recreated" in check.stdout
    assert "log ends below the stored offsets" in check.stdout

    refused = cli(worker.env, "topic", "accept", "--by", "ops", "--reason", " ")
    assert refused.returncode == 2, refused
    assert "say who accepts" in refused.stderr

    accepted = cli(worker.env, "topic", "accept", "--by", "ops", "--reason", "broker restarted")
    assert accepted.returncode == 0, accepted
    # Every open total in the database goes out again (other tests' users too: the
    # session's PostgreSQL is shared); this user's three are checked on the topic below.
    assert re.search(r"offsets now \{0: 0, 1: 0, 2: 0\}; \d+ open totals published",
                     accepted.stdout), accepted.stdout  # fmt: skip
    assert cli(worker.env, "topic", "check").returncode == 0
    again = cli(worker.env, "topic", "accept", "--by", "ops", "--reason", "twice")
    assert again.returncode == 2, again
    assert "nothing to accept" in again.stderr, "right offsets are never moved"

    # Policy's topic has the user's totals again (day, week, month), before any new count.
    republished = _totals(own_broker.bootstrap, user)
    kinds = (usage_pb2.PERIOD_KIND_DAY, usage_pb2.PERIOD_KIND_WEEK, usage_pb2.PERIOD_KIND_MONTH)
    assert {(t.period_kind, t.used_micros) for t in republished} == {
        (k, 5 * EVENT_MICROS) for k in kinds
    }

    worker.start()
    await eventually(counted, (8 * EVENT_MICROS, 8), within=120)
    assert worker.proc.poll() is None, worker.log()[-3000:]
    await _audited(infra.database_url, worker.env["QM_METERING_APP_ID"])
    newest = _totals(own_broker.bootstrap, user)[-1]
    assert (newest.used_micros, newest.event_count) == (8 * EVENT_MICROS, 8)


async def _async(value: object) -> object:
    return value


def _totals(bootstrap: str, user: str) -> list[usage_pb2.UsageTotal]:
    out = []
    for msg in read_topic(bootstrap, Topic.USAGE_TOTALS.value):
        total = usage_pb2.UsageTotal.FromString(msg.value() or b"")
        if total.subject_id == user:
            out.append(total)
    return out


async def _audited(database_url: str, consumer: str) -> None:
    conn = await asyncpg.connect(database_url)
    try:
        row = await conn.fetchrow(
            "SELECT accepted_by, reason, problems, old_offsets, new_offsets"
            " FROM metering.topic_accepts WHERE consumer = $1",
            consumer,
        )
    finally:
        await conn.close()
    assert row is not None
    assert (row["accepted_by"], row["reason"]) == ("ops", "broker restarted")
    assert any("was recreated" in p for p in row["problems"])
    assert row["new_offsets"] == '{"0": 0, "1": 0, "2": 0}'
