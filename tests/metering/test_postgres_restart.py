"""PostgreSQL restarted under a counting worker: it waits, then counts every event
exactly once, and never ends.

A breaker pass restarted PostgreSQL under `make run`'s metering and the worker ended
(exit 70): asyncpg's `InternalClientError: cannot switch to state 15` came out of the
fenced write, raised by a connection the server had closed mid-transaction, and that
class was not among the outages the worker retries. A fault test: a worker process on
a broker and a PostgreSQL of the test's own, with events produced before, during and
after restarts of both kinds (fast, and immediate as after a crash). Its PostgreSQL
is durable (fsync on), as a real one is: the tests' usual one skips fsync, and an
immediate stop of that loses transactions it had acknowledged.
"""

from __future__ import annotations

import asyncio
import os
import sys
import threading
import time
import urllib.request
import uuid
from collections.abc import Awaitable, Callable, Iterator

import pytest

from devtools.localinfra import free_port
from devtools.localinfra.broker import LocalBroker
from devtools.localinfra.postgres import LocalPostgres
from devtools.localinfra.process import ChildProcess
from tests.conftest import ROOT
from tests.helpers import eventually, new_user, produce_usage, usage
from tests.metering.test_broker_restart import day_total
from tests.metering.test_metering import EVENT_MICROS

pytestmark = pytest.mark.infra


@pytest.fixture
def worker(
    own_broker: LocalBroker, durable_postgres: LocalPostgres, service_env: dict[str, str]
) -> Iterator[ChildProcess]:
    env = {
        **service_env,
        "QM_KAFKA_BOOTSTRAP": own_broker.bootstrap,
        "QM_DATABASE_URL": durable_postgres.url,
        "QM_METERING_APP_ID": f"qm-metering-pg-{uuid.uuid4().hex[:8]}",
        "QM_METERING_METRICS_ADDR": f"127.0.0.1:{free_port()}",
    }
    log_path = ROOT / ".run" / f"test-{os.getpid()}-logs" / f"{env['QM_METERING_APP_ID']}.log"
    proc = ChildProcess("metering", [sys.executable, "-m", "services.metering"],
                        log_path, env=env, cwd=ROOT)  # fmt: skip
    proc.start()
    try:
        yield proc
    finally:
        proc.stop(timeout=15)
        log_path.unlink(missing_ok=True)


def _restart(pg: LocalPostgres, mode: str) -> None:
    """Stop the cluster (pg_ctl's `fast` or `immediate` mode) and start it again, its
    data kept."""
    pg._check("pg_ctl", "stop", "-D", str(pg.datadir), "-m", mode, "-w", "-t", "30")
    pg.fresh = False
    pg.start()


@pytest.mark.parametrize("mode", ["fast", "immediate"])
async def test_a_postgres_restart_is_waited_out_and_every_event_counts_once(
    mode: str, own_broker: LocalBroker, durable_postgres: LocalPostgres, worker: ChildProcess
) -> None:
    users = [new_user() for _ in range(6)]
    counted = [day_total(durable_postgres.url, u) for u in users]
    sent = dict.fromkeys(users, 0)
    stop = threading.Event()

    def send() -> None:
        """Rounds of one event per user until told to stop, so that restarts fall
        on batches being written as well as between them."""
        while not stop.is_set():
            produce_usage(own_broker.bootstrap, [usage(u) for u in users])
            for u in users:
                sent[u] += 1
            time.sleep(0.01)

    sender = threading.Thread(target=send, daemon=True)
    sender.start()
    try:
        await eventually(lambda: _at_least(counted[0], 3), True, within=90)
        for _ in range(3):  # the pool's fresh connections must survive one as well
            _restart(durable_postgres, mode)
            await asyncio.sleep(1.0)
            assert worker.poll() is None, worker.log_tail(60)
            # Waiting an outage out is being alive: its liveness probe must not restart it.
            assert livez(worker) == 200
    finally:
        stop.set()
        sender.join(30)

    for user, probe in zip(users, counted, strict=True):
        want = (sent[user] * EVENT_MICROS, sent[user])
        try:
            await eventually(probe, want, within=90)
        except AssertionError as exc:
            raise AssertionError(f"{exc}; the worker's log ends:\n{worker.log_tail(80)}") from None
    assert worker.poll() is None, "the worker waits an outage out; it never ends"


def livez(worker: ChildProcess) -> int:
    """The status of the worker's GET /livez (its metrics port)."""
    assert worker.env is not None
    addr = worker.env["QM_METERING_METRICS_ADDR"]
    with urllib.request.urlopen(f"http://{addr}/livez", timeout=5) as resp:
        return int(resp.status)


async def _at_least(probe: Callable[[], Awaitable[tuple[int, int]]], events: int) -> bool:
    return (await probe())[1] >= events
