"""The price catalog's revisions in Postgres, and `PriceCatalogService` over them.

Every load is a new row of `metering.price_catalogs` holding the whole catalog
after it, kept for ever (a trigger refuses UPDATE and DELETE): the newest row is
in force. The first revision is seeded from QM_METERING_PRICES by whichever
metering process starts first; after that, prices change only by `LoadPrices`
(`python -m services.metering.cli prices load FILE`).

A new version applies to the events a worker counts after it picks the revision
up (within QM_METERING_PRICES_POLL_SECONDS), each priced with the version in force
at its occurred_at. Totals already counted are absolute and published: they are
not re-priced.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Any

import asyncpg
import grpc

from quartermaster.credentials import Credentials
from quartermaster.grpcserver import abort
from quartermaster.v1 import prices_pb2, prices_pb2_grpc
from quartermaster.wire import from_timestamp, timestamp
from services.metering.pricing import (
    CatalogDocument,
    CatalogError,
    Price,
    PriceCatalog,
    parse_csv,
    parse_yaml,
)

log = logging.getLogger("qm.metering.prices")
# pg_advisory_xact_lock key serialising loads (and the seed) across processes
_LOCK = 0x71_6D_70_72_69_63_65  # "qmprice"
_FORMATS = {
    prices_pb2.CATALOG_FORMAT_YAML: parse_yaml,
    prices_pb2.CATALOG_FORMAT_CSV: parse_csv,
}
MAX_DOCUMENT = 4 * 1024 * 1024
Context = grpc.aio.ServicerContext[Any, Any]


@dataclass(frozen=True)
class Revision:
    revision: int
    loaded_at: datetime
    loaded_by: str
    mode: str
    source: str
    changes: list[str]
    catalog: PriceCatalog


def _prices(p: Price) -> str:
    return ", ".join(f"{k} {v}" for k, v in asdict(p).items())


def _price_diff(a: Price, b: Price) -> str:
    old, new = asdict(a), asdict(b)
    return ", ".join(f"{k} {old[k]} -> {new[k]}" for k in old if old[k] != new[k])


def merge(old: PriceCatalog | None, doc: CatalogDocument, replace: bool) -> PriceCatalog:
    """The catalog after loading `doc` on top of `old` (or instead of it)."""
    if replace or old is None:
        where = "document" if replace else "document (the first catalog)"
        return PriceCatalog.whole(doc, where)
    models = {m: list(v) for m, v in old.models.items()}
    for model, versions in doc.models.items():
        by_start = dict(models.get(model, []))
        by_start.update(versions)  # the same effective_from: the document's price wins
        models[model] = sorted(by_start.items())
    return PriceCatalog(models, doc.fallback or old.fallback)


def changes(old: PriceCatalog | None, new: PriceCatalog, now: datetime) -> list[str]:
    """One line a person can read per difference between two catalogs."""
    out: list[str] = []
    if old is None:
        out.append(f"fallback: {_prices(new.fallback)}")
    elif old.fallback != new.fallback:
        out.append(f"fallback: {_price_diff(old.fallback, new.fallback)}")
    before = old.models if old is not None else {}
    for model in sorted(before.keys() | new.models.keys()):
        a, b = dict(before.get(model, [])), dict(new.models.get(model, []))
        if not b:
            out.append(f"{model}: removed ({len(a)} version(s)); the fallback prices it now")
            continue
        for start in sorted(a.keys() | b.keys()):
            when = start.isoformat()
            late = (
                " (already in force: it prices events counted from now on, not those counted"
                " before)"
                if start <= now and old is not None
                else ""
            )
            if start not in b:
                out.append(f"{model}: version from {when} removed")
            elif start not in a:
                out.append(f"{model}: new version from {when}: {_prices(b[start])}{late}")
            elif a[start] != b[start]:
                out.append(f"{model}: version from {when}: {_price_diff(a[start], b[start])}{late}")
    return out


def _revision(row: asyncpg.Record) -> Revision:
    return Revision(
        row["revision"], row["loaded_at"], row["loaded_by"], row["mode"], row["source"],
        list(row["changes"]), PriceCatalog.from_mapping(json.loads(row["catalog"])),
    )  # fmt: skip


class CatalogStore:
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
        return _revision(row) if row else None

    async def history(self) -> list[Revision]:
        rows = await self._pool.fetch("SELECT * FROM metering.price_catalogs ORDER BY revision")
        return [_revision(r) for r in rows]

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
            doc = CatalogDocument(doc.fallback, doc.models)
        async with self._pool.acquire() as conn, conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock($1)", _LOCK)
            old = await self.current(conn)
            if seed and old is not None:
                return old, []
            new = merge(old.catalog if old else None, doc, replace)
            diff = changes(old.catalog if old else None, new, now)
            if dry_run or not diff:
                return old, diff
            mode = "seed" if seed else ("replace" if replace else "load")
            row = await conn.fetchrow(
                """
                INSERT INTO metering.price_catalogs (loaded_at, loaded_by, mode, source,
                    changes, catalog)
                VALUES ($1, $2, $3, $4, $5, $6::jsonb) RETURNING *
                """,
                now, actor, mode, source, diff, json.dumps(new.to_mapping()),
            )  # fmt: skip
            return _revision(row), diff


def model_price(model: str, start: datetime | None, p: Price) -> prices_pb2.ModelPrice:
    out = prices_pb2.ModelPrice(model=model, **asdict(p))
    if start is not None:
        out.effective_from.CopyFrom(timestamp(start))
    return out


def _revision_message(r: Revision, lines: Sequence[str]) -> prices_pb2.PriceRevision:
    return prices_pb2.PriceRevision(
        revision=r.revision, loaded_at=timestamp(r.loaded_at), loaded_by=r.loaded_by,
        mode=r.mode, source=r.source, changes=list(lines),
    )  # fmt: skip


class PriceCatalogServicer(prices_pb2_grpc.PriceCatalogServiceServicer):
    def __init__(self, store: CatalogStore, credentials: Credentials) -> None:
        self._store = store
        self._credentials = credentials

    async def LoadPrices(
        self, request: prices_pb2.LoadPricesRequest, context: Context
    ) -> prices_pb2.LoadPricesResponse:
        actor = await self._credentials.require(context)
        problems = []
        if not request.document.strip():
            problems.append("document: empty")
        elif len(request.document) > MAX_DOCUMENT:
            problems.append(f"document: larger than {MAX_DOCUMENT} characters")
        if request.format not in _FORMATS:
            problems.append("format: required, CATALOG_FORMAT_YAML or CATALOG_FORMAT_CSV")
        if problems:
            await abort(context, grpc.StatusCode.INVALID_ARGUMENT, "; ".join(problems))
        where = request.source or "document"
        try:
            doc = _FORMATS[request.format](request.document, where)
            current, diff = await self._store.load(
                doc, request.replace, request.dry_run, actor, request.source, datetime.now(UTC)
            )
        except CatalogError as exc:
            await abort(context, grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        return prices_pb2.LoadPricesResponse(
            revision=current.revision if current else 0, changes=diff, dry_run=request.dry_run
        )

    async def _current(self, context: Context) -> Revision:
        current = await self._store.current()
        if current is None:
            await abort(
                context,
                grpc.StatusCode.FAILED_PRECONDITION,
                "no price catalog yet: metering seeds it from QM_METERING_PRICES when it "
                "first starts, or load one with LoadPrices",
            )
        assert current is not None
        return current

    async def ListPrices(
        self, request: prices_pb2.ListPricesRequest, context: Context
    ) -> prices_pb2.ListPricesResponse:
        current = await self._current(context)
        models = current.catalog.models
        unknown = sorted(set(request.models) - models.keys())
        if unknown:
            await abort(
                context,
                grpc.StatusCode.NOT_FOUND,
                f"models: not in the catalog (the fallback prices them): {unknown}",
            )
        at = from_timestamp(request.at) if request.HasField("at") else datetime.now(UTC)
        out = prices_pb2.ListPricesResponse(
            revision=current.revision, fallback=model_price("", None, current.catalog.fallback)
        )
        for model in sorted(request.models or models):
            in_force = [(t, p) for t, p in models[model] if t <= at]
            if in_force:
                out.prices.append(model_price(model, *in_force[-1]))
        return out

    async def PriceHistory(
        self, request: prices_pb2.PriceHistoryRequest, context: Context
    ) -> prices_pb2.PriceHistoryResponse:
        revisions = await self._store.history()
        out = prices_pb2.PriceHistoryResponse()
        model = request.model.strip()
        if not model:
            out.revisions.extend(_revision_message(r, r.changes) for r in revisions)
            return out
        prefix = f"{model}: "
        for r in revisions:
            lines = [c for c in r.changes if c.startswith(prefix)]
            if lines:
                out.revisions.append(_revision_message(r, lines))
        versions = revisions[-1].catalog.models.get(model, []) if revisions else []
        out.versions.extend(model_price(model, t, p) for t, p in versions)
        if not out.revisions:
            await abort(context, grpc.StatusCode.NOT_FOUND, f"model: {model!r} was never priced")
        return out


class Follower:
    """Keeps a worker on the newest catalog revision: `poll()` swaps it in when
    max(revision) has moved (between batches: a batch is planned with one catalog)."""

    def __init__(
        self, store: CatalogStore, current: Revision, apply: Callable[[PriceCatalog], None]
    ) -> None:
        self._store = store
        self.revision = current.revision
        self._apply = apply
        apply(current.catalog)

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
