"""`PriceCatalogService`: load, list and trace the price catalog's revisions.

Loading needs role prices (quartermaster.roles, checked by quartermaster.auth); the
load itself, its validation and its change lines live in `revisions` and
`stores.catalog`.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import Any, Protocol

import grpc

from quartermaster.auth import caller
from quartermaster.grpcserver import abort
from quartermaster.v1 import prices_pb2, prices_pb2_grpc
from quartermaster.wire import in_request
from services.metering import mapping
from services.metering.pricing import CatalogDocument, CatalogError
from services.metering.revisions import (
    BadPage,
    LoadRecord,
    Revision,
    history_page,
    history_page_size,
    history_position,
    history_token,
)

Context = grpc.aio.ServicerContext[Any, Any]


class Catalogs(Protocol):
    """The revisions the servicer reads and writes (`stores.catalog.CatalogStore`)."""

    async def load(
        self,
        doc: CatalogDocument,
        replace: bool,
        dry_run: bool,
        actor: str,
        source: str,
        now: datetime,
    ) -> tuple[Revision | None, list[str]]: ...

    async def current(self) -> Revision | None: ...

    async def history(self, model: str, after: int, limit: int) -> list[LoadRecord]: ...


class PriceCatalogServicer(prices_pb2_grpc.PriceCatalogServiceServicer):
    """LoadPrices (role prices; a new revision, or the changes on a dry run), ListPrices
    (in force now or `at`), PriceHistory (every revision, or one model's, a page at a
    time)."""

    def __init__(self, store: Catalogs) -> None:
        self._store = store

    async def LoadPrices(
        self, request: prices_pb2.LoadPricesRequest, context: Context
    ) -> prices_pb2.LoadPricesResponse:
        actor = caller().name  # the credential's name; its role was checked
        load = mapping.price_load(request)
        problems = load.problems()
        if problems:
            await abort(context, grpc.StatusCode.INVALID_ARGUMENT, "; ".join(problems))
        try:
            # Parsing a document is CPU-bound (seconds for 4 MB): in a thread, so the
            # Cost API sharing this event loop keeps answering meanwhile.
            doc = await asyncio.to_thread(load.parse)
            current, diff = await self._store.load(
                doc, load.replace, load.dry_run, actor, load.source, datetime.now(UTC)
            )
        except CatalogError as exc:
            await abort(context, grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        return prices_pb2.LoadPricesResponse(
            revision=current.revision if current else 0, changes=diff, dry_run=load.dry_run
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
        return current

    async def ListPrices(
        self, request: prices_pb2.ListPricesRequest, context: Context
    ) -> prices_pb2.ListPricesResponse:
        current = await self._current(context)
        catalog = current.catalog
        models = catalog.models
        asked = {m: catalog.resolve(m) for m in request.models}
        unknown = sorted(m for m, key in asked.items() if key is None)
        if unknown:
            await abort(
                context,
                grpc.StatusCode.NOT_FOUND,
                f"models: not in the catalog (the fallback prices them): {unknown}",
            )
        if request.every_version and request.HasField("at"):
            await abort(
                context, grpc.StatusCode.INVALID_ARGUMENT,
                "at: not with every_version (every version is listed, whenever in force)",
            )  # fmt: skip
        at = in_request("at", request.at) if request.HasField("at") else datetime.now(UTC)
        out = prices_pb2.ListPricesResponse(
            revision=current.revision,
            fallback=mapping.model_price("", None, current.catalog.fallback),
        )
        out.resolved.update({m: key for m, key in asked.items() if key is not None and key != m})
        listed = {key for key in asked.values() if key is not None} or models.keys()
        for model in sorted(listed):
            if request.every_version:
                out.prices.extend(mapping.model_price(model, t, p) for t, p in models[model])
                continue
            in_force = [(t, p) for t, p in models[model] if t <= at]
            if in_force:
                out.prices.append(mapping.model_price(model, *in_force[-1]))
        out.aliases.update({a: m for a, m in catalog.aliases.items() if m in listed})
        return out

    async def PriceHistory(
        self, request: prices_pb2.PriceHistoryRequest, context: Context
    ) -> prices_pb2.PriceHistoryResponse:
        """A page of revisions (oldest first) and, on the first page of one model's
        history, its versions in force now. Bounded in revisions (page_size) and in
        bytes of change lines (revisions.MAX_HISTORY_BYTES): INVALID_ARGUMENT for a bad
        page_size or page_token, NOT_FOUND for a model never priced. The model is the
        one the asked id names (`model` in the answer)."""
        try:
            size = history_page_size(request.page_size)
            after = history_position(request.page_token) if request.page_token else 0
        except BadPage as exc:
            await abort(context, grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        asked = request.model.strip()
        current = await self._store.current()
        # the model the id names, as ListPrices and pricing resolve it (a dated snapshot
        # or routed id: its model); an id the catalog no longer names: as given
        resolved = current.catalog.resolve(asked) if current and asked else None
        model = resolved or asked
        records = await self._store.history(model, after, size + 1)
        page, more = history_page(records, size)
        out = prices_pb2.PriceHistoryResponse(model=model)
        for r, lines, omitted in page:
            message = mapping.revision_message(r, lines)
            message.changes_omitted = omitted
            out.revisions.append(message)
        if more:
            out.next_page_token = history_token(page[-1][0].revision)
        if not model or request.page_token:
            return out
        if not records:
            await abort(context, grpc.StatusCode.NOT_FOUND, f"model: {model!r} was never priced")
        versions = current.catalog.models.get(model, []) if current else []
        out.versions.extend(mapping.model_price(model, t, p) for t, p in versions)
        return out
