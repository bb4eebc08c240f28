"""`PriceCatalogService`: load, list and trace the price catalog's revisions.

Loading needs role prices (quartermaster.roles, checked by quartermaster.auth); the
load itself, its validation and its change lines live in `revisions` and
`stores.catalog`.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, Protocol

import grpc

from quartermaster.auth import caller
from quartermaster.grpcserver import abort
from quartermaster.v1 import prices_pb2, prices_pb2_grpc
from quartermaster.wire import in_request
from services.metering import mapping
from services.metering.pricing import CatalogDocument, CatalogError
from services.metering.revisions import Revision

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

    async def history(self) -> list[Revision]: ...


class PriceCatalogServicer(prices_pb2_grpc.PriceCatalogServiceServicer):
    """LoadPrices (role prices; a new revision, or the changes on a dry run), ListPrices
    (in force now or `at`), PriceHistory (every revision, or one model's)."""

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
            current, diff = await self._store.load(
                load.parse(), load.replace, load.dry_run, actor, load.source, datetime.now(UTC)
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
        at = in_request("at", request.at) if request.HasField("at") else datetime.now(UTC)
        out = prices_pb2.ListPricesResponse(
            revision=current.revision,
            fallback=mapping.model_price("", None, current.catalog.fallback),
        )
        listed = {key for key in asked.values() if key is not None} or models.keys()
        for model in sorted(listed):
            in_force = [(t, p) for t, p in models[model] if t <= at]
            if in_force:
                out.prices.append(mapping.model_price(model, *in_force[-1]))
        out.aliases.update({a: m for a, m in catalog.aliases.items() if m in listed})
        return out

    async def PriceHistory(
        self, request: prices_pb2.PriceHistoryRequest, context: Context
    ) -> prices_pb2.PriceHistoryResponse:
        revisions = await self._store.history()
        out = prices_pb2.PriceHistoryResponse()
        model = request.model.strip()
        if not model:
            out.revisions.extend(mapping.revision_message(r, r.changes) for r in revisions)
            return out
        prefix = f"{model}: "
        for r in revisions:
            lines = [c for c in r.changes if c.startswith(prefix)]
            if lines:
                out.revisions.append(mapping.revision_message(r, lines))
        versions = revisions[-1].catalog.models.get(model, []) if revisions else []
        out.versions.extend(mapping.model_price(model, t, p) for t, p in versions)
        if not out.revisions:
            await abort(context, grpc.StatusCode.NOT_FOUND, f"model: {model!r} was never priced")
        return out
