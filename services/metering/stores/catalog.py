"""The price catalog's revisions in Postgres (`metering.price_catalogs`).

Every load is a new row holding the whole catalog after it, kept for ever (a trigger
refuses UPDATE and DELETE): the newest row is in force. The first revision is seeded
from QM_METERING_PRICES by whichever metering process starts first; after that, prices
change only by `LoadPrices` (`python -m services.metering.cli prices load FILE`).

A new version applies to the events a worker counts after it picks the revision up
(`Follower`, within QM_METERING_PRICES_POLL_SECONDS), each priced with the version in
force at its occurred_at. Totals already counted are absolute and published: they are
not re-priced.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable
from datetime import UTC, datetime

import asyncpg

from services.metering.pricing import CatalogDocument, PriceCatalog
from services.metering.revisions import LoadRecord, Revision, changes, merge

log = logging.getLogger("qm.metering.prices")
# pg_advisory_xact_lock key serialising loads (and the seed) across processes
_LOCK = 0x71_6D_70_72_69_63_65  # "qmprice"


def _revision(row: asyncpg.Record) -> Revision:
    return Revision(
        row["revision"], row["loaded_at"], row["loaded_by"], row["mode"], row["source"],
        list(row["changes"]), PriceCatalog.from_mapping(json.loads(row["catalog"]), stored=True),
    )  # fmt: skip


def _record(row: asyncpg.Record) -> LoadRecord:
    return LoadRecord(
        row["revision"], row["loaded_at"], row["loaded_by"], row["mode"], row["source"],
        list(row["changes"]),
    )  # fmt: skip


def _plan(
    old: Revision | None, doc: CatalogDocument, replace: bool, now: datetime
) -> tuple[PriceCatalog, list[str], str]:
    """The catalog after a load, its change lines and its stored JSON: CPU-bound for a
    large catalog (seconds), so `load` runs it in a thread, off the event loop the Cost
    API shares."""
    new = merge(old.catalog if old else None, doc, replace)
    diff = changes(old.catalog if old else None, new, now)
    return new, diff, json.dumps(new.to_mapping())


class CatalogStore:
    """Reads revisions and writes new ones, one load at a time across processes."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool

    async def newest(self) -> int:
        """The revision in force (0: none yet)."""
        value = await self._pool.fetchval("SELECT max(revision) FROM metering.price_catalogs")
        return int(value or 0)

    async def current(self, conn: asyncpg.Connection | None = None) -> Revision | None:
        row = await (conn or self._pool).fetchrow(
            "SELECT * FROM metering.price_catalogs ORDER BY revision DESC LIMIT 1"
        )
        # parsing a stored catalog of megabytes takes a while: not on the event loop
        return await asyncio.to_thread(_revision, row) if row else None

    async def history(self, model: str, after: int, limit: int) -> list[LoadRecord]:
        """Up to `limit` revisions after revision `after`, oldest first, without their
        catalogs; with `model`, only those that changed it, each with that model's
        change lines only (those starting `<model>: `)."""
        if not model:
            rows = await self._pool.fetch(
                """
                SELECT revision, loaded_at, loaded_by, mode, source, changes
                FROM metering.price_catalogs WHERE revision > $1 ORDER BY revision LIMIT $2
                """,
                after, limit,
            )  # fmt: skip
            return [_record(r) for r in rows]
        rows = await self._pool.fetch(
            """
            SELECT revision, loaded_at, loaded_by, mode, source,
                ARRAY(SELECT c FROM unnest(changes) WITH ORDINALITY AS u(c, n)
                      WHERE starts_with(c, $3) ORDER BY n) AS changes
            FROM metering.price_catalogs
            WHERE revision > $1
              AND EXISTS (SELECT 1 FROM unnest(changes) AS c WHERE starts_with(c, $3))
            ORDER BY revision LIMIT $2
            """,
            after, limit, f"{model}: ",
        )  # fmt: skip
        return [_record(r) for r in rows]

    async def seed(self, catalog: PriceCatalog, source: str) -> Revision:
        """The revision in force; `catalog` becomes revision 1 when there is none."""
        now = datetime.now(UTC)
        revision, diff = await self.load(catalog, False, False, "seed", source, now, seed=True)
        assert revision is not None
        if not diff and revision.catalog.to_mapping() != catalog.to_mapping():
            log.warning(
                "prices: %s differs from catalog revision %d in force, and only seeds an empty"
                " catalog; to use it: python -m services.metering.cli prices load %s",
                source, revision.revision, source,
            )  # fmt: skip
        return revision

    async def load(
        self,
        doc: CatalogDocument | PriceCatalog,
        replace: bool,
        dry_run: bool,
        actor: str,
        source: str,
        now: datetime,
        seed: bool = False,
    ) -> tuple[Revision | None, list[str]]:
        """(the revision in force afterwards, the changes); CatalogError if `doc` can't
        be loaded. Writes nothing when nothing changes, on a dry run, or (seed) when
        a catalog exists."""
        if isinstance(doc, PriceCatalog):
            # aliases too: a seed without them made every later seed of the same file
            # (the Cost API's, a restart's) warn that the file differs
            doc = CatalogDocument(doc.fallback, doc.models, doc.aliases)
        async with self._pool.acquire() as conn, conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock($1)", _LOCK)
            old = await self.current(conn)
            if seed and old is not None:
                return old, []
            new, diff, stored = await asyncio.to_thread(_plan, old, doc, replace, now)
            if dry_run or not diff:
                return old, diff
            mode = "seed" if seed else ("replace" if replace else "load")
            row = await conn.fetchrow(
                """
                INSERT INTO metering.price_catalogs (loaded_at, loaded_by, mode, source,
                    changes, catalog)
                VALUES ($1, $2, $3, $4, $5, $6::jsonb) RETURNING *
                """,
                now, actor, mode, source, diff, stored,
            )  # fmt: skip
            return Revision(**vars(_record(row)), catalog=new), diff


class Follower:
    """Keeps a worker on the newest catalog revision: `poll()` calls `apply` with the new
    catalog when max(revision) has moved (between batches: a batch is planned with one
    catalog). The caller starts with `current`'s catalog."""

    def __init__(
        self, store: CatalogStore, current: Revision, apply: Callable[[PriceCatalog], None]
    ) -> None:
        self._store = store
        self.revision = current.revision
        self._apply = apply

    async def poll(self) -> Revision | None:
        """The new revision when there was one."""
        if await self._store.newest() == self.revision:
            return None
        current = await self._store.current()
        if current is None or current.revision == self.revision:
            return None
        self._apply(current.catalog)
        self.revision = current.revision
        return current
