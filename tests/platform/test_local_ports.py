"""The local broker and PostgreSQL own the port they report, even when another process
takes the port `free_port` chose before they bind it (CI once saw a bench's broker
exit on a port another bench's server had taken, while that server answered for it)."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from confluent_kafka.admin import AdminClient

from devtools.localinfra import broker as broker_module
from devtools.localinfra import postgres as postgres_module
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


@pytest.fixture
def taken() -> Iterator[int]:
    """A port another process (this one) listens on."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        yield s.getsockname()[1]


def _taken_first(taken: int) -> object:
    """A `free_port` that first answers the taken port, as a lost race would."""
    answers = iter([taken])
    return lambda: next(answers, None) or free_port()


def test_listens_names_the_owner_of_a_listening_socket(taken: int) -> None:
    assert listens(os.getpid(), taken)
    sleeper = subprocess.Popen(["sleep", "30"])
    try:
        assert not listens(sleeper.pid, taken)
    finally:
        sleeper.kill()
        sleeper.wait()
    with socket.socket() as unlistened:
        unlistened.bind(("127.0.0.1", 0))  # bound, not listening
        assert not listens(os.getpid(), unlistened.getsockname()[1])


@pytest.mark.infra  # starts the broker binary
def test_a_broker_on_a_named_taken_port_fails_naming_it(root: Path, taken: int) -> None:
    broker = LocalBroker(root, taken)
    with pytest.raises(RuntimeError, match=f"exited .* on port {taken}"):
        broker.start()
    broker.stop()


@pytest.mark.infra
def test_a_broker_whose_chosen_port_was_taken_starts_on_another(
    root: Path, taken: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(broker_module, "free_port", _taken_first(taken))
    broker = LocalBroker(root)
    broker.start()
    try:
        assert broker.port != taken
        metadata = AdminClient({"bootstrap.servers": broker.bootstrap}).list_topics(timeout=10)
        assert metadata.brokers, "the broker answers a metadata request"
    finally:
        broker.stop()


@pytest.mark.infra  # starts PostgreSQL
def test_postgres_whose_chosen_port_was_taken_starts_on_another(
    root: Path, taken: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(postgres_module, "free_port", _taken_first(taken))
    pg = LocalPostgres(root / "pg", durable=False, fresh=True)
    try:
        pg.start()
        assert pg.port != taken
        assert f":{pg.port}/" in pg.url
    finally:
        pg.stop()


@pytest.mark.infra
def test_postgres_on_a_named_taken_port_fails(root: Path, taken: int) -> None:
    pg = LocalPostgres(root / "pg", taken, durable=False, fresh=True)
    try:
        with pytest.raises(RuntimeError, match="pg_ctl failed"):
            pg.start()
    finally:
        pg.stop()
