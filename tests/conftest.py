"""Fixtures for tests against real infrastructure.

A test that needs Kafka or Postgres says so with `@pytest.mark.infra`; the `infra`
fixture refuses to serve any other test, so nothing touches infrastructure by
accident. Infrastructure that cannot be had fails the run loudly; nothing skips.

Where it comes from (see devtools/localinfra/stack.py): QM_KAFKA_BOOTSTRAP /
QM_DATABASE_URL when set, testcontainers when QM_USE_TESTCONTAINERS=true and a
Docker engine answers, else a local PostgreSQL and tansu broker on free ports.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import socket
import sys
import threading
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import grpc
import pytest

from devtools.discovery import migration_dirs
from devtools.localinfra import free_port
from devtools.localinfra.process import ChildProcess
from devtools.localinfra.stack import Infra, open_infra
from quartermaster.db import connect_pool, migrate
from quartermaster.money import MICROS_PER_CREDIT
from quartermaster.v1 import policy_pb2_grpc
from services.policy import wiring
from services.policy.decide import Enforcement
from services.policy.settings import PolicySettings
from services.policy.stores.limits import LimitStore
from tests.helpers import TOKENS, TOKENS_SPEC, channel, metadata
from tests.policy.inprocess import InProcess, policy_in_process

ROOT = Path(__file__).resolve().parent.parent
TEST_LIMIT_CREDITS = 10
PARTITIONS = 3
ADMIN_TOKEN = TOKENS["admin"]

# Fixtures of their own modules, for every test directory.
pytest_plugins = ["tests.ingest_fixtures", "tests.own_infra"]


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """A test that would start infrastructure (through any fixture, however indirect)
    must say so with @pytest.mark.infra, so `-m "not infra"` never starts any."""
    unmarked = [
        item.nodeid
        for item in items
        if "_infra_session" in getattr(item, "fixturenames", ())
        and item.get_closest_marker("infra") is None
    ]
    if unmarked:
        raise pytest.UsageError(
            f"these need infrastructure but lack @pytest.mark.infra: {unmarked}"
        )


@pytest.fixture(scope="session")
def _infra_session() -> Iterator[Infra]:
    run_dir = ROOT / ".run" / f"test-{os.getpid()}"
    try:
        with open_infra(
            run_dir,
            durable=False,
            partitions=PARTITIONS,
        ) as infra:
            yield infra
    finally:
        shutil.rmtree(run_dir, ignore_errors=True)


@pytest.fixture
def infra(request: pytest.FixtureRequest, _infra_session: Infra) -> Infra:
    if request.node.get_closest_marker("infra") is None:
        raise pytest.UsageError(f"{request.node.nodeid} uses infra without @pytest.mark.infra")
    return _infra_session


@pytest.fixture
def busy_port() -> Iterator[int]:
    """A port on 127.0.0.1 this process listens on: taken, for anyone else."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        yield s.getsockname()[1]


@pytest.fixture(scope="session")
def workspace_id() -> str:
    return f"ws-{uuid.uuid4().hex[:8]}"


@pytest.fixture(scope="session")
def service_env(_infra_session: Infra, workspace_id: str) -> dict[str, str]:
    """The environment a service process of this test session runs with."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("QM_")}
    return {
        **env,
        **_infra_session.env(),
        "QM_WORKSPACE_ID": workspace_id,
        "QM_TOPIC_PARTITIONS": str(PARTITIONS),
        "QM_METERING_APP_ID": f"qm-metering-test-{uuid.uuid4().hex[:8]}",
        "QM_METERING_SESSION_TIMEOUT": "4",
        "QM_METERING_DLQ_WINDOW": "200",
        "QM_LOG_LEVEL": "INFO",
        "QM_TOKENS": TOKENS_SPEC,
        "QM_DIRECTORY_TOKEN": TOKENS["reader"],
        "QM_METERING_PRICES_POLL_SECONDS": "0.5",
        "QM_METERING_METRICS_ADDR": f"127.0.0.1:{free_port()}",
    }


class MeteringWorker:
    """The session's metering worker process, which tests may kill and restart."""

    def __init__(self, env: dict[str, str], log_path: Path) -> None:
        self.env = env
        self.log_path = log_path
        self.proc = self._new(env)

    def _new(self, env: dict[str, str]) -> ChildProcess:
        argv = [sys.executable, "-m", "services.metering"]
        return ChildProcess("metering", argv, self.log_path, env=env, cwd=ROOT)

    def start(self, **overrides: str) -> None:
        """Start it again (after kill/stop), with these settings changed."""
        self.proc = self._new({**self.env, **overrides})
        self.proc.start()

    def kill(self) -> None:
        self.proc.kill()

    async def kill_mid_stream(
        self, produce: Callable[[], None], counted: Callable[[], Awaitable[int]], whole: int
    ) -> None:
        """Run `produce` in a thread; SIGKILL the worker once `counted()` shows the
        first of it counted (and before `whole`, the total of it: the kill must land
        mid-stream), start it again half a second later, and return when `produce`
        is done."""
        done = threading.Event()

        def run() -> None:
            produce()
            done.set()

        thread = threading.Thread(target=run)
        thread.start()
        try:
            deadline = time.monotonic() + 60
            # polling another process's progress: there is no event to wait on
            while await counted() == 0 and time.monotonic() < deadline:  # noqa: ASYNC110
                await asyncio.sleep(0.01)
            at_kill = await counted()
            self.kill()
            assert 0 < at_kill < whole, "the kill must land mid-stream"
            await asyncio.sleep(0.5)
            self.start()
        finally:
            thread.join()
        assert done.is_set(), "the producer failed"

    def alive(self) -> bool:
        return self.proc.poll() is None

    def log_tail(self, lines: int = 40) -> str:
        return self.proc.log_tail(lines)


@pytest.fixture(scope="session")
def _metering_session(service_env: dict[str, str]) -> Iterator[MeteringWorker]:
    """One metering worker for the session, as a real process (`python -m services.metering`)."""
    log_path = ROOT / ".run" / f"test-{os.getpid()}-logs" / "metering.log"
    worker = MeteringWorker(service_env, log_path)
    worker.proc.start()
    try:
        yield worker
    finally:
        worker.proc.stop(timeout=15)
        shutil.rmtree(log_path.parent, ignore_errors=True)


@pytest.fixture
def metering(request: pytest.FixtureRequest, _metering_session: MeteringWorker) -> MeteringWorker:
    if request.node.get_closest_marker("infra") is None:
        raise pytest.UsageError(f"{request.node.nodeid} uses metering without @pytest.mark.infra")
    if not _metering_session.alive():
        raise AssertionError(f"metering worker died:\n{_metering_session.log_tail()}")
    return _metering_session


async def _admin_sql(database_url: str, sql: str) -> None:
    conn = await asyncpg.connect(database_url)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


@contextlib.asynccontextmanager
async def database_of_its_own(infra: Infra) -> AsyncIterator[str]:
    """A fresh database on the session's PostgreSQL, migrated; its URL; dropped after."""
    admin_url = infra.database_url
    name = f"qm_own_{uuid.uuid4().hex[:8]}"
    await _admin_sql(admin_url, f"CREATE DATABASE {name}")
    url = urlunsplit(urlsplit(admin_url)._replace(path=f"/{name}"))
    try:
        await asyncio.to_thread(migrate, url, migration_dirs())
        yield url
    finally:
        await _admin_sql(admin_url, f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


@pytest.fixture
async def metered_replicas(
    request: pytest.FixtureRequest, _infra_session: Infra, service_env: dict[str, str]
) -> AsyncIterator[Replicas]:
    """Policy replicas of the session's workspace, which the session's metering worker
    counts (policy skips totals of another workspace, and metering refuses its
    events), on a database of the test's own (so its limits, reservations and notices
    touch nobody); dropped after."""
    if request.node.get_closest_marker("infra") is None:
        raise pytest.UsageError(f"{request.node.nodeid} uses policy without @pytest.mark.infra")
    async with database_of_its_own(_infra_session) as url:
        reps = Replicas(
            {**service_env, "QM_DATABASE_URL": url}, url, service_env["QM_WORKSPACE_ID"]
        )
        try:
            yield reps
        finally:
            await reps.close()


@pytest.fixture(scope="session")
async def _policy_session(
    _infra_session: Infra, workspace_id: str, service_env: dict[str, str]
) -> AsyncIterator[wiring.RunningPolicy]:
    """A real grpc.aio policy server on a free port, in this process's event loop."""
    settings = PolicySettings.from_env(service_env)
    pool = await connect_pool(_infra_session.database_url)
    try:
        await LimitStore(pool, workspace_id).set_workspace_default(
            TEST_LIMIT_CREDITS * MICROS_PER_CREDIT, Enforcement.HARD, "tests"
        )
    finally:
        await pool.close()
    running = await wiring.start(settings, addr="127.0.0.1:0")
    try:
        await asyncio.wait_for(running.serving.wait(), 60)
        yield running
    finally:
        await running.stop(grace=1)


@pytest.fixture
def policy_server(
    request: pytest.FixtureRequest, _policy_session: wiring.RunningPolicy
) -> wiring.RunningPolicy:
    if request.node.get_closest_marker("infra") is None:
        raise pytest.UsageError(f"{request.node.nodeid} uses policy without @pytest.mark.infra")
    return _policy_session


@pytest.fixture
async def policy(
    policy_server: wiring.RunningPolicy,
) -> AsyncIterator[policy_pb2_grpc.PolicyServiceAsyncStub]:
    async with channel(f"127.0.0.1:{policy_server.port}", "gateway") as ch:
        yield policy_pb2_grpc.PolicyServiceStub(ch)


# Call metadata with the tests' token of one role (tests.helpers.TOKENS).
ADMIN_METADATA = metadata("admin")
GATEWAY_METADATA = metadata("gateway")
READER_METADATA = metadata("reader")
PRICES_METADATA = metadata("prices")
ALL_METADATA = metadata("all")  # every role: for tests about something else


class Replicas:
    """Policy replicas of a workspace of their own (so a test's limits touch nobody)."""

    def __init__(
        self, env: dict[str, str], database_url: str, workspace_id: str | None = None
    ) -> None:
        self.workspace_id = workspace_id or f"ws-{uuid.uuid4().hex[:8]}"
        self.env = {**env, "QM_WORKSPACE_ID": self.workspace_id}
        self.database_url = database_url
        self.running: list[wiring.RunningPolicy] = []
        self._channels: list[grpc.aio.Channel] = []

    async def set_default(
        self, limit_micros: int, enforcement: Enforcement = Enforcement.HARD
    ) -> None:
        """The workspace's default limit, written as an admin would (audited as "tests")."""
        pool = await connect_pool(self.database_url)
        try:
            await LimitStore(pool, self.workspace_id).set_workspace_default(
                limit_micros, enforcement, "tests"
            )
        finally:
            await pool.close()

    async def start(self, n: int = 1, **overrides: str) -> list[wiring.RunningPolicy]:
        env = {**self.env, **overrides}
        started = []
        for _ in range(n):
            r = await wiring.start(PolicySettings.from_env(env), addr="127.0.0.1:0")
            self.running.append(r)
            started.append(r)
        for r in started:
            await asyncio.wait_for(r.serving.wait(), 60)
        return started

    def _channel(self, r: wiring.RunningPolicy, role: str) -> grpc.aio.Channel:
        ch = channel(f"127.0.0.1:{r.port}", role)
        self._channels.append(ch)
        return ch

    def policy(self, r: wiring.RunningPolicy) -> policy_pb2_grpc.PolicyServiceAsyncStub:
        """A stub whose calls present the gateway's token unless they bring one."""
        return policy_pb2_grpc.PolicyServiceStub(self._channel(r, "gateway"))

    def admin(self, r: wiring.RunningPolicy) -> policy_pb2_grpc.PolicyAdminServiceAsyncStub:
        """A stub whose calls present the admin's token unless they bring one."""
        return policy_pb2_grpc.PolicyAdminServiceStub(self._channel(r, "admin"))

    def directory(self, r: wiring.RunningPolicy) -> policy_pb2_grpc.DirectoryServiceAsyncStub:
        """A stub whose calls present the reader's token unless they bring one."""
        return policy_pb2_grpc.DirectoryServiceStub(self._channel(r, "reader"))

    async def close(self) -> None:
        for ch in self._channels:
            await ch.close(None)
        for r in self.running:
            await r.stop(1)


@pytest.fixture
async def replicas(
    request: pytest.FixtureRequest, _infra_session: Infra, service_env: dict[str, str]
) -> AsyncIterator[Replicas]:
    if request.node.get_closest_marker("infra") is None:
        raise pytest.UsageError(f"{request.node.nodeid} uses policy without @pytest.mark.infra")
    reps = Replicas(service_env, _infra_session.database_url)
    try:
        yield reps
    finally:
        await reps.close()


@pytest.fixture
async def inproc() -> AsyncIterator[InProcess]:
    """policy's servicers on an in-process gRPC server over fake stores (no infra)."""
    async with policy_in_process() as p:
        yield p
