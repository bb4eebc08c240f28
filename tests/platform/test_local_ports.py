"""The local broker and PostgreSQL own the port they report, even when another process
takes the port `free_port` chose before they bind it (CI once saw a bench's broker
exit on a port another bench's server had taken, while that server answered for it)."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import threading
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from confluent_kafka.admin import AdminClient

from devtools.localinfra import broker as broker_module
from devtools.localinfra import ports as ports_module
from devtools.localinfra.broker import LocalBroker
from devtools.localinfra.ports import free_port, listens
from devtools.localinfra.postgres import LocalPostgres
from tests.conftest import ROOT


@pytest.fixture
def root() -> Iterator[Path]:
    """A directory under .run/ (PostgreSQL runs as `postgres` under root, and pytest's
    root is private to root)."""
    path = ROOT / ".run" / f"test-{os.getpid()}-ports-{uuid.uuid4().hex[:6]}"
    path.mkdir(parents=True)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def _taken_first(taken: int) -> object:
    """A `free_port` that first answers the `taken` port, as a lost race would."""
    answers = iter([taken])
    return lambda: next(answers, None) or free_port()


def test_listens_names_the_owner_of_a_listening_socket(busy_port: int) -> None:
    assert listens(os.getpid(), busy_port)
    sleeper = subprocess.Popen(["sleep", "30"])
    try:
        assert not listens(sleeper.pid, busy_port)
    finally:
        sleeper.kill()
        sleeper.wait()
    with socket.socket() as unlistened:
        unlistened.bind(("127.0.0.1", 0))  # bound, not listening
        assert not listens(os.getpid(), unlistened.getsockname()[1])


@pytest.mark.infra  # starts the broker binary
def test_a_broker_on_a_named_taken_port_fails_naming_it(root: Path, busy_port: int) -> None:
    broker = LocalBroker(root, busy_port)
    with pytest.raises(RuntimeError, match=f"exited .* on port {busy_port}"):
        broker.start()
    broker.stop()


@pytest.mark.infra
def test_a_broker_whose_chosen_port_was_taken_starts_on_another(
    root: Path, busy_port: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(ports_module, "free_port", _taken_first(busy_port))
    broker = LocalBroker(root)
    broker.start()
    try:
        assert broker.port != busy_port
        metadata = AdminClient({"bootstrap.servers": broker.bootstrap}).list_topics(timeout=10)
        assert metadata.brokers, "the broker answers a metadata request"
    finally:
        broker.stop()


@pytest.mark.infra  # starts PostgreSQL
def test_postgres_whose_chosen_port_was_taken_starts_on_another(
    root: Path, busy_port: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(ports_module, "free_port", _taken_first(busy_port))
    pg = LocalPostgres(root / "pg", durable=False, fresh=True)
    try:
        pg.start()
        assert pg.port != busy_port
        assert f":{pg.port}/" in pg.url
    finally:
        pg.stop()


@pytest.mark.infra
def test_postgres_on_a_named_taken_port_fails(root: Path, busy_port: int) -> None:
    pg = LocalPostgres(root / "pg", busy_port, durable=False, fresh=True)
    try:
        with pytest.raises(RuntimeError, match=f"port {busy_port} is in use by another process"):
            pg.start()
    finally:
        pg.stop()


@pytest.mark.infra
def test_a_running_broker_started_again_is_refused_and_stops_whole(root: Path) -> None:
    """A second start ran a second broker on the port, which exited ("in use by
    another process": by the first), and forgot the first: stop() left it running."""
    broker = LocalBroker(root)
    broker.start()
    assert broker._proc is not None
    first = broker._proc.pid
    try:
        with pytest.raises(RuntimeError, match=f"already running on port {broker.port}"):
            broker.start()
        assert listens(first, broker.port)
    finally:
        broker.stop()
    assert not Path(f"/proc/{first}").exists() or _zombie(first)


def _zombie(pid: int) -> bool:
    return Path(f"/proc/{pid}/stat").read_text().split()[2] == "Z"


@pytest.mark.infra
def test_a_restarted_broker_keeps_its_port_and_names_a_taker(root: Path) -> None:
    broker = LocalBroker(root)
    broker.start()
    port = broker.port
    broker.stop()
    broker.start()
    assert broker.port == port
    broker.stop()
    with socket.socket() as s:
        s.bind(("127.0.0.1", port))
        s.listen()
        with pytest.raises(RuntimeError, match=f"port {port} is in use by another process"):
            broker.start()
    broker.stop()


@pytest.mark.infra
def test_a_broker_that_fails_is_not_blamed_on_an_earlier_clash(
    root: Path, busy_port: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The log is appended to by every start: an earlier start's AddrInUse made any
    later failure read as a clash (and, on a first start, retried)."""
    with pytest.raises(RuntimeError, match="in use by another process"):
        LocalBroker(root, busy_port).start()  # writes AddrInUse to root/broker.log
    monkeypatch.setenv("CALF_TANSU_BIN", "/bin/false")
    broker = LocalBroker(root, free_port())
    with pytest.raises(RuntimeError, match=r"exited \(1\)") as failed:
        broker.start()
    assert "in use" not in str(failed.value).splitlines()[0]
    broker.stop()


@pytest.mark.infra
def test_a_broker_given_port_0_chooses_one(root: Path) -> None:
    broker = LocalBroker(root, 0)
    broker.start(timeout=10)
    try:
        assert broker.port != 0
        assert listens(broker._proc.pid, broker.port)  # type: ignore[union-attr]
    finally:
        broker.stop()


@pytest.mark.infra
def test_brokers_started_at_once_from_threads_each_own_a_port_and_answer(
    root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Eight brokers, every one first handed the same port (as racing free_ports)."""
    same = free_port()
    first: set[int] = set()
    lock = threading.Lock()

    def racing() -> int:
        with lock:
            if threading.get_ident() not in first:
                first.add(threading.get_ident())
                return same
        return free_port()

    monkeypatch.setattr(ports_module, "free_port", racing)
    brokers = [LocalBroker(root / f"b{i}") for i in range(8)]
    try:
        with ThreadPoolExecutor(len(brokers)) as pool:
            list(pool.map(lambda b: b.start(), brokers))
        assert len({b.port for b in brokers}) == len(brokers)
        for b in brokers:
            assert b._proc is not None
            assert listens(b._proc.pid, b.port)
            metadata = AdminClient({"bootstrap.servers": b.bootstrap}).list_topics(timeout=10)
            assert metadata.brokers
    finally:
        for b in brokers:
            b.stop()


@pytest.mark.infra
def test_postgres_restarted_on_its_port_taken_meanwhile_names_the_taker(root: Path) -> None:
    """pg_ctl says only "could not start server / Examine the log output"."""
    pg = LocalPostgres(root / "pg", durable=False, fresh=True)
    try:
        pg.start()
        port = pg.port
        pg.stop()
        with socket.socket() as s:
            s.bind(("127.0.0.1", port))
            s.listen()
            with pytest.raises(RuntimeError, match=f"port {port} is in use by another process"):
                pg.start()
        pg.start()
        assert pg.port == port
    finally:
        pg.stop()


@pytest.mark.infra
def test_a_broker_run_through_a_wrapper_that_does_not_exec_is_seen_listening(
    root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """CALF_TANSU_BIN names any program: through `sh -c 'tansu "$@"'` the listener is the
    shell's child, and start() waited its whole timeout for the shell to listen."""
    wrapper = root / "tansu.sh"
    wrapper.write_text(f'#!/bin/sh\n"{broker_module.tansu_binary()}" "$@"\n')
    wrapper.chmod(0o755)
    monkeypatch.setenv("CALF_TANSU_BIN", str(wrapper))
    broker = LocalBroker(root)
    try:
        broker.start(timeout=10)
        assert broker._proc is not None
        assert not listens(broker._proc.pid, broker.port)  # the shell's child does
        assert listens(broker._proc.pid, broker.port, group=True)
    finally:
        broker.stop()
