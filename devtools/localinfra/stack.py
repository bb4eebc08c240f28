"""Kafka + Postgres for `make run` and the tests, from wherever they can come.

In order: addresses given in the environment (`QM_KAFKA_BOOTSTRAP`,
`QM_DATABASE_URL`: a real Kafka and PostgreSQL); containers when a Docker engine
answers and `QM_USE_TESTCONTAINERS` is true; otherwise processes started here.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

from devtools.discovery import migration_dirs
from devtools.localinfra.broker import LocalBroker
from devtools.localinfra.postgres import LocalPostgres
from quartermaster.db import migrate
from quartermaster.kafka import ensure_topics

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Infra:
    kafka_bootstrap: str
    database_url: str
    # Where each came from: "env", "local", "testcontainers".
    kafka_origin: str
    database_origin: str

    def env(self) -> dict[str, str]:
        return {"QM_KAFKA_BOOTSTRAP": self.kafka_bootstrap, "QM_DATABASE_URL": self.database_url}


def _docker_answers() -> bool:
    try:
        import docker  # type: ignore[import-untyped]

        docker.from_env(timeout=2).ping()
        return True
    except Exception:
        return False


def _start_containers(stack: contextlib.ExitStack) -> tuple[str, str]:
    """(bootstrap, database URL) from containers that `stack` stops."""
    from testcontainers.kafka import KafkaContainer
    from testcontainers.postgres import PostgresContainer

    pg = stack.enter_context(PostgresContainer("postgres:15", driver=None))
    kafka = stack.enter_context(KafkaContainer())
    return kafka.get_bootstrap_server(), pg.get_connection_url()


@contextlib.contextmanager
def open_infra(
    run_dir: Path,
    *,
    pg_port: int | None = None,
    broker_port: int | None = None,
    durable: bool,
    partitions: int,
    environ: Mapping[str, str] | None = None,
) -> Iterator[Infra]:
    """Yield a migrated database and a broker with every topic created; stop what we started.

    Without a port, the local PostgreSQL and broker each pick a free one (and another if
    a process started meanwhile takes it); `make run` names its ports."""
    env = os.environ if environ is None else environ
    given_kafka = env.get("QM_KAFKA_BOOTSTRAP") or None
    given_db = env.get("QM_DATABASE_URL") or None
    use_containers = env.get("QM_USE_TESTCONTAINERS", "").lower() in {"1", "true", "yes", "on"}
    with contextlib.ExitStack() as stack:
        kafka_origin = db_origin = "env"
        if (given_kafka is None or given_db is None) and use_containers and _docker_answers():
            boot, url = _start_containers(stack)
            if given_kafka is None:
                given_kafka, kafka_origin = boot, "testcontainers"
            if given_db is None:
                given_db, db_origin = url, "testcontainers"
        if given_db is None:
            pg = LocalPostgres(run_dir / "pg", pg_port, durable=durable, fresh=True)
            stack.callback(pg.stop)
            pg.start()
            given_db, db_origin = pg.url, "local"
        if given_kafka is None:
            broker = LocalBroker(run_dir, broker_port)
            stack.callback(broker.stop)
            broker.start()
            given_kafka, kafka_origin = broker.bootstrap, "local"
        migrate(given_db, migration_dirs())
        ensure_topics(given_kafka, partitions)
        yield Infra(given_kafka, given_db, kafka_origin, db_origin)
