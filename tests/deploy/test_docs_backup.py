"""docs/operations.md's backup command dumps every schema a service's migrations
create (devtools.discovery.migration_dirs: one per service), so a restore brings back
all of them; and the migrations paragraph names the same schemas."""

from __future__ import annotations

import re

from devtools.discovery import migration_dirs
from tests.deploy.chart import ROOT


def _section(text: str, title: str) -> str:
    start = text.index(title)
    return text[start : text.index("\n### ", start + len(title))]


def test_the_backup_dumps_every_schema_the_migrations_create() -> None:
    schemas = set(migration_dirs())
    assert {"metering", "policy", "requests", "notifier"} <= schemas
    for folder in migration_dirs().values():
        sql = "\n".join(f.read_text() for f in folder.glob("*.sql"))
        created = set(re.findall(r"CREATE SCHEMA IF NOT EXISTS (\w+)", sql))
        assert created <= schemas, (folder, created)
    text = (ROOT / "docs" / "operations.md").read_text()
    backup = _section(text, "### Back up")
    (command,) = [b.replace("\\\n", " ") for b in re.findall(r"```sh\n(.*?)```", backup, re.S)
                  if "pg_dump" in b]  # fmt: skip
    assert set(re.findall(r"--schema=(\w+)", command)) == schemas
    migrations = _section(text, "### Migrations")
    assert all(f"`{schema}`" in migrations for schema in schemas), migrations
