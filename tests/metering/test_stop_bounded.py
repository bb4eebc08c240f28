"""A broker or PostgreSQL that holds its connections open but does not answer (paused,
a frozen VM): a stopping worker (SIGTERM) ends within a bound (it used to wait on
librdkafka's close, the revoked partitions' offset commit, for good, and on the
cancelled batch's query for asyncpg's 60 s cancel request); a counting worker says so
within QM_DATABASE_TIMEOUT and counts every event once when PostgreSQL answers again
(it used to wait on the batch's statement for good, with nothing in its log).

Fault tests: a worker process on a broker of the test's own, counting into the
session's PostgreSQL (through a proxy the test can freeze)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import select
import signal
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from urllib.parse import urlsplit, urlunsplit

import pytest

from devtools.localinfra import free_port
from devtools.localinfra.broker import LocalBroker
from devtools.localinfra.stack import Infra
from tests.conftest import ROOT
from tests.helpers import eventually, new_user, produce_usage, usage
from tests.metering.test_broker_restart import Worker, day_total
from tests.metering.test_metering import EVENT_MICROS

pytestmark = pytest.mark.infra


class Proxy:
    """A TCP proxy to PostgreSQL that a test can freeze (bytes stop flowing, sockets
    stay open: a PostgreSQL that does not answer)."""

    def __init__(self, host: str, port: int) -> None:
        self.target = (host, port)
        self.lsock = socket.socket()
        self.lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.lsock.bind(("127.0.0.1", 0))
        self.lsock.listen(64)
        self.port = self.lsock.getsockname()[1]
        self.frozen = threading.Event()
        self.closed = False
        self.pairs: list[tuple[socket.socket, socket.socket]] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self.closed:
            try:
                c, _ = self.lsock.accept()
            except OSError:
                return
            try:
                s = socket.create_connection(self.target)
            except OSError:
                c.close()
                continue
            self.pairs.append((c, s))
            threading.Thread(target=self._pump, args=(c, s), daemon=True).start()

    def _pump(self, a: socket.socket, b: socket.socket) -> None:
        try:
            while not self.closed:
                if self.frozen.is_set():
                    time.sleep(0.05)
                    continue
                r, _, _ = select.select([a, b], [], [], 0.1)
                for s in r:
                    data = s.recv(65536)
                    if not data:
                        return
                    (b if s is a else a).sendall(data)
        except OSError:
            return
        finally:
            a.close()
            b.close()

    def close(self) -> None:
        self.closed = True
        self.lsock.close()


def proxied(url: str, port: int) -> str:
    u = urlsplit(url)
    netloc = u.netloc.rsplit("@", 1)
    host = f"127.0.0.1:{port}"
    return urlunsplit(u._replace(netloc=f"{netloc[0]}@{host}" if len(netloc) == 2 else host))


@contextlib.contextmanager
def through_proxy(env: dict[str, str], timeout: str = "") -> Iterator[tuple[Proxy, dict[str, str]]]:
    """A Proxy to `env`'s PostgreSQL, and `env` with QM_DATABASE_URL through it (and
    QM_DATABASE_TIMEOUT `timeout`, when given); the proxy closed afterwards."""
    u = urlsplit(env["QM_DATABASE_URL"])
    proxy = Proxy(u.hostname or "127.0.0.1", u.port or 5432)
    proxied_env = {**env, "QM_DATABASE_URL": proxied(env["QM_DATABASE_URL"], proxy.port)}
    if timeout:
        proxied_env["QM_DATABASE_TIMEOUT"] = timeout
    try:
        yield proxy, proxied_env
    finally:
        proxy.close()


@pytest.fixture
def env(own_broker: LocalBroker, service_env: dict[str, str]) -> dict[str, str]:
    return {
        **service_env,
        "QM_KAFKA_BOOTSTRAP": own_broker.bootstrap,
        "QM_METERING_APP_ID": f"qm-metering-brk-{uuid.uuid4().hex[:8]}",
        "QM_METERING_METRICS_ADDR": f"127.0.0.1:{free_port()}",
    }


@pytest.fixture
def workers() -> Iterator[list[Worker]]:
    out: list[Worker] = []
    yield out
    for w in out:
        with contextlib.suppress(ProcessLookupError, RuntimeError):
            os.kill(w.proc.pid, signal.SIGCONT)
        w.proc.stop(timeout=5)


def start(workers: list[Worker], env: dict[str, str], name: str) -> Worker:
    env = {**env, "QM_METERING_METRICS_ADDR": f"127.0.0.1:{free_port()}"}
    w = Worker(env, ROOT / ".run" / "brk" / f"{env['QM_METERING_APP_ID']}-{name}.log")
    w.start()
    workers.append(w)
    return w


async def exited_within(w: Worker, seconds: float) -> tuple[int | None, float]:
    began = time.monotonic()
    while time.monotonic() - began < seconds:
        code = w.proc.poll()
        if code is not None:
            return code, time.monotonic() - began
        await asyncio.sleep(0.1)
    return None, time.monotonic() - began


async def test_a_stop_ends_when_the_broker_does_not_answer(
    infra: Infra, own_broker: LocalBroker, env: dict[str, str], workers: list[Worker]
) -> None:
    user = new_user()
    w = start(workers, env, "a")
    produce_usage(own_broker.bootstrap, [usage(user) for _ in range(5)])
    await eventually(day_total(infra.database_url, user), (5 * EVENT_MICROS, 5), within=90)
    own_broker.pause()
    try:
        await asyncio.sleep(2)
        os.kill(w.proc.pid, signal.SIGTERM)
        code, took = await exited_within(w, 60)
    finally:
        own_broker.resume()
    log = w.log()
    assert code == 0, f"exit {code} after {took:.0f} s\n{log[-3000:]}"
    assert took < 20, log[-3000:]  # CLOSE_SECONDS and the pool's close
    assert "did not leave its group within 10 s" in log, log[-3000:]
    assert "metering stopped (without leaving the consumer group)" in log


async def test_a_stop_mid_batch_ends_when_postgres_does_not_answer(
    infra: Infra, own_broker: LocalBroker, env: dict[str, str], workers: list[Worker]
) -> None:
    with through_proxy(env) as (proxy, env):
        user = new_user()
        w = start(workers, env, "a")
        produce_usage(own_broker.bootstrap, [usage(user) for _ in range(5)])
        await eventually(day_total(infra.database_url, user), (5 * EVENT_MICROS, 5), within=90)
        proxy.frozen.set()
        produce_usage(own_broker.bootstrap, [usage(user) for _ in range(5)])
        await asyncio.sleep(3)  # the batch is in hand, its commit hangs
        os.kill(w.proc.pid, signal.SIGTERM)
        code, took = await exited_within(w, 120)
        log = w.log()
        assert code == 0, f"exit {code} after {took:.0f} s\n{log[-3000:]}"
        # STOP_SECONDS for the batch, CANCEL_SECONDS, the pool's close (10 s)
        assert took < 50, log[-3000:]
        assert "stopping without the batch in hand" in log
        assert "Traceback" not in log, log[-3000:]


async def test_a_postgres_that_stops_answering_is_an_outage_and_counting_resumes(
    infra: Infra, own_broker: LocalBroker, env: dict[str, str], workers: list[Worker]
) -> None:
    with through_proxy(env, timeout="3") as (proxy, env):
        users = [new_user() for _ in range(3)]
        w = start(workers, env, "a")
        produce_usage(own_broker.bootstrap, [usage(u) for u in users for _ in range(2)])
        for user in users:
            await eventually(day_total(infra.database_url, user), (2 * EVENT_MICROS, 2), within=90)
        proxy.frozen.set()
        produce_usage(own_broker.bootstrap, [usage(u) for u in users for _ in range(3)])
        said = "PostgreSQL did not answer in time (QM_DATABASE_TIMEOUT"

        async def warned() -> bool:
            return said in w.log()

        await eventually(warned, True, within=60)
        await asyncio.sleep(5)  # retries against the frozen server: each one times out
        proxy.frozen.clear()
        produce_usage(own_broker.bootstrap, [usage(u) for u in users])
        for user in users:
            await eventually(day_total(infra.database_url, user), (6 * EVENT_MICROS, 6), within=90)
        assert w.proc.poll() is None, w.log()[-3000:]
        assert "Traceback" not in w.log(), w.log()[-3000:]
