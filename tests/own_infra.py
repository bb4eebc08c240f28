"""Infrastructure of a test's own, for fault tests that stop or restart it (stopping
the session's would disturb every other test): a PostgreSQL (fsync off, or durable)
and a broker, each on a free port under .run/, stopped and removed afterwards.
A pytest plugin (tests/conftest.py lists it)."""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Iterator

import pytest

from devtools.discovery import migration_dirs
from devtools.localinfra.broker import LocalBroker
from devtools.localinfra.postgres import LocalPostgres
from devtools.localinfra.stack import Infra
from quartermaster.db import migrate
from quartermaster.kafka import ensure_topics
from tests.conftest import PARTITIONS, ROOT


@pytest.fixture
def own_postgres(infra: Infra) -> Iterator[LocalPostgres]:
    """A PostgreSQL of this test's own, migrated; stopped and removed afterwards. It
    skips fsync for speed: an immediate stop may lose what it had acknowledged."""
    yield from _own_postgres(durable=False)


@pytest.fixture
def durable_postgres(infra: Infra) -> Iterator[LocalPostgres]:
    """As `own_postgres`, but durable (fsync on, as a real server): for tests that stop
    it the way a crash would (`pg_ctl stop -m immediate`)."""
    yield from _own_postgres(durable=True)


def _own_postgres(durable: bool) -> Iterator[LocalPostgres]:
    root = ROOT / ".run" / f"test-{os.getpid()}-own-pg-{uuid.uuid4().hex[:6]}"
    pg = LocalPostgres(root, durable=durable, fresh=True)
    try:
        pg.start()
        migrate(pg.url, migration_dirs())
        yield pg
    finally:
        pg.stop()
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def own_broker(request: pytest.FixtureRequest, infra: Infra) -> Iterator[LocalBroker]:
    """A broker of this test's own with every topic created (PARTITIONS each, or as many
    as an indirect parametrization says: `parametrize("own_broker", [12], indirect=True)`);
    stopped and removed afterwards."""
    partitions = getattr(request, "param", PARTITIONS)
    root = ROOT / ".run" / f"test-{os.getpid()}-own-broker-{uuid.uuid4().hex[:6]}"
    root.mkdir(parents=True)
    broker = LocalBroker(root)
    try:
        broker.start()
        ensure_topics(broker.bootstrap, partitions)
        yield broker
    finally:
        broker.stop()
        shutil.rmtree(root, ignore_errors=True)
