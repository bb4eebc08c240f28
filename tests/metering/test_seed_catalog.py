"""The first `make run` seeds the shipped price catalog whole: the worker and the Cost
API both seed it at start, and the second must find the very catalog it would seed
(issue 14, newcomer #8: the seed dropped the catalog's aliases, so every fresh run
logged "prices: ... differs from catalog revision 1" for a file nobody had changed).

Against a fresh, migrated database in the session's PostgreSQL cluster (a seed only
writes into an empty catalog)."""

from __future__ import annotations

import logging
import uuid
from collections.abc import AsyncIterator
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest

from devtools.discovery import migration_dirs
from devtools.localinfra.stack import Infra
from quartermaster.db import connect_pool, migrate
from services.metering.pricing import PriceCatalog
from services.metering.settings import DEFAULT_PRICES
from services.metering.stores.catalog import CatalogStore

pytestmark = pytest.mark.infra


@pytest.fixture
async def fresh_db(infra: Infra) -> AsyncIterator[str]:
    """The URL of a new database with metering's tables, dropped after."""
    name = f"qm_test_{uuid.uuid4().hex[:10]}"
    admin = await asyncpg.connect(infra.database_url)
    try:
        await admin.execute(f"CREATE DATABASE {name}")
        url = urlunsplit(urlsplit(infra.database_url)._replace(path=f"/{name}"))
        migrate(url, {"metering": migration_dirs()["metering"]})
        yield url
    finally:
        await admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        await admin.close()


async def test_the_shipped_catalog_seeds_whole_and_a_second_seed_warns_of_nothing(
    fresh_db: str, caplog: pytest.LogCaptureFixture
) -> None:
    shipped = PriceCatalog.from_file(DEFAULT_PRICES)
    assert shipped.aliases, "the shipped catalog has aliases: the case this test is about"
    pool = await connect_pool(fresh_db, max_size=2)
    try:
        store = CatalogStore(pool)
        with caplog.at_level(logging.INFO, logger="qm.metering"):
            # as the worker (build_counting), then the Cost API (build_api), seed it
            first = await store.seed(shipped, str(DEFAULT_PRICES))
            second = await store.seed(PriceCatalog.from_file(DEFAULT_PRICES), str(DEFAULT_PRICES))
    finally:
        await pool.close()
    assert (first.revision, second.revision) == (1, 1)
    assert second.catalog.to_mapping() == shipped.to_mapping(), "aliases and all"
    warned = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert warned == [], warned
