"""Local infrastructure owned by the project: a PostgreSQL 15 cluster and a
Kafka-wire broker (tansu) started as child processes in a project-local directory.

`make run` and the tests use the same code. When `QM_DATABASE_URL` /
`QM_KAFKA_BOOTSTRAP` are given, callers use those instead and nothing starts here.
"""

from devtools.localinfra.broker import LocalBroker
from devtools.localinfra.ports import free_port, wait_for_port
from devtools.localinfra.postgres import LocalPostgres

__all__ = ["LocalBroker", "LocalPostgres", "free_port", "wait_for_port"]
