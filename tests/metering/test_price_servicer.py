"""The price catalog servicer in process: the real PriceCatalogServicer behind a real
grpc.aio server, with a small fake of its revisions store (loading against Postgres,
and the CLI, are tested in tests/metering/test_prices.py)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime

import grpc
import pytest

from quartermaster.v1 import prices_pb2, prices_pb2_grpc
from services.metering.price_servicer import PriceCatalogServicer
from services.metering.pricing import CatalogDocument, Price, PriceCatalog
from services.metering.revisions import Revision, changes, merge
from tests.helpers import in_process_server, metadata, refusal

ADMIN = metadata("prices")  # the actor "tests-prices"
T0 = datetime(2026, 1, 1, tzinfo=UTC)
PRICE = Price(input=1_250_000, cached_input=125_000, output=10_000_000, reasoning=10_000_000,
              cache_write=1_250_000)  # fmt: skip


@dataclass
class FakeCatalogs:
    revisions: list[Revision] = field(default_factory=list)
    loads: list[tuple[CatalogDocument, bool, bool, str, str]] = field(default_factory=list)

    async def load(
        self, doc: CatalogDocument, replace: bool, dry_run: bool, actor: str, source: str,
        now: datetime,
    ) -> tuple[Revision | None, list[str]]:  # fmt: skip
        self.loads.append((doc, replace, dry_run, actor, source))
        old = self.revisions[-1].catalog if self.revisions else None
        new = merge(old, doc, replace)
        diff = changes(old, new, now)
        if not dry_run:
            self.revisions.append(
                Revision(len(self.revisions) + 1, now, actor, "load", source, diff, new)
            )
        return (self.revisions[-1] if self.revisions else None), diff

    async def current(self) -> Revision | None:
        return self.revisions[-1] if self.revisions else None

    async def history(self) -> list[Revision]:
        return list(self.revisions)


@pytest.fixture
async def catalogs() -> FakeCatalogs:
    return FakeCatalogs()


@pytest.fixture
async def stub(
    catalogs: FakeCatalogs,
) -> AsyncIterator[prices_pb2_grpc.PriceCatalogServiceAsyncStub]:
    servicer = PriceCatalogServicer(catalogs)
    async with in_process_server(
        lambda s: prices_pb2_grpc.add_PriceCatalogServiceServicer_to_server(servicer, s)
    ) as channel:
        yield prices_pb2_grpc.PriceCatalogServiceStub(channel)


async def test_a_load_names_every_bad_field_and_needs_role_prices(
    stub: prices_pb2_grpc.PriceCatalogServiceAsyncStub, catalogs: FakeCatalogs
) -> None:
    call = stub.LoadPrices(prices_pb2.LoadPricesRequest(), metadata=metadata("admin"))
    assert await refusal(call) == (
        grpc.StatusCode.PERMISSION_DENIED,
        "PriceCatalogService/LoadPrices needs role prices; credential 'tests-admin' has admin",
    )
    empty = prices_pb2.LoadPricesRequest(document=" ")
    assert await refusal(stub.LoadPrices(empty, metadata=ADMIN)) == (
        grpc.StatusCode.INVALID_ARGUMENT,
        "document: empty; format: required, CATALOG_FORMAT_YAML or CATALOG_FORMAT_CSV",
    )
    request = prices_pb2.LoadPricesRequest(
        document="models: {gpt-5: nope}", format=prices_pb2.CATALOG_FORMAT_YAML, source="p.yaml"
    )
    assert await refusal(stub.LoadPrices(request, metadata=ADMIN)) == (
        grpc.StatusCode.INVALID_ARGUMENT,
        "p.yaml: models.gpt-5: expected a list of versions",
    )
    assert catalogs.loads == []


async def test_load_list_and_history_map_to_messages(
    stub: prices_pb2_grpc.PriceCatalogServiceAsyncStub, catalogs: FakeCatalogs
) -> None:
    code, _ = await refusal(stub.ListPrices(prices_pb2.ListPricesRequest()))
    assert code == grpc.StatusCode.FAILED_PRECONDITION
    csv = (
        "model,effective_from,input,cached_input,cache_write,output,reasoning\n"
        "*,,1,1,1,1,1\n"
        "gpt-5,2026-01-01T00:00:00Z,1250000,125000,,10000000,\n"
    )
    loaded = await stub.LoadPrices(
        prices_pb2.LoadPricesRequest(
            document=csv, format=prices_pb2.CATALOG_FORMAT_CSV, source="all.csv", replace=True
        ),
        metadata=ADMIN,
    )
    assert loaded.revision == 1
    [(doc, replace, dry_run, actor, source)] = catalogs.loads
    assert (replace, dry_run, actor, source) == (True, False, "tests-prices", "all.csv")
    assert doc.models == {"gpt-5": [(T0, PRICE)]}
    listed = await stub.ListPrices(prices_pb2.ListPricesRequest(models=["gpt-5"]))
    assert [(p.model, p.input, p.cache_write) for p in listed.prices] == [
        ("gpt-5", 1_250_000, 1_250_000)
    ]
    assert listed.fallback.model == ""
    code, details = await refusal(
        stub.ListPrices(prices_pb2.ListPricesRequest(models=["nope", "gpt-5-2025-08-07"]))
    )
    assert code == grpc.StatusCode.NOT_FOUND
    assert details.endswith("['nope']"), details  # a dated gpt-5 names gpt-5
    snapshot = await stub.ListPrices(prices_pb2.ListPricesRequest(models=["openai/gpt-5"]))
    assert [p.model for p in snapshot.prices] == ["gpt-5"]
    history = await stub.PriceHistory(prices_pb2.PriceHistoryRequest(model="gpt-5"))
    assert [(r.revision, r.loaded_by, r.source) for r in history.revisions] == [
        (1, "tests-prices", "all.csv")
    ]
    assert all(line.startswith("gpt-5: ") for line in history.revisions[0].changes)
    assert isinstance(catalogs.revisions[0].catalog, PriceCatalog)


HOSTILE = [
        # A tester's: accepted once, then every event of the model went to the DLQ.
        ("fallback: {input: 99999999999999999999999, cached_input: 0, output: 1}",
         prices_pb2.CATALOG_FORMAT_YAML,
         "p: fallback.input: expected a whole number >= 0 and <= 1000000000000"),
        ("model,effective_from,input,cached_input,output\n"
         "*,,1,0,1000000000001\n",
         prices_pb2.CATALOG_FORMAT_CSV,
         "p: fallback.output: expected a whole number >= 0 and <= 1000000000000"),
        ("fallback: {input: " + "9" * 5000 + "}", prices_pb2.CATALOG_FORMAT_YAML,
         "p: Exceeds the limit (4300 digits)"),
        # A tester's: INTERNAL after 7.4 s of CPU.
        ("[" * 2000 + "]" * 2000, prices_pb2.CATALOG_FORMAT_YAML, "p: nested more than 16 deep"),
        ("fallback: {input: [1", prices_pb2.CATALOG_FORMAT_YAML,
         "p: not a YAML document the catalog reads"),
]  # fmt: skip


@pytest.mark.parametrize(("document", "fmt", "said"), HOSTILE)
async def test_out_of_bounds_prices_and_hostile_documents_are_invalid_arguments(
    stub: prices_pb2_grpc.PriceCatalogServiceAsyncStub,
    catalogs: FakeCatalogs,
    document: str,
    fmt: prices_pb2.CatalogFormat.ValueType,
    said: str,
) -> None:
    request = prices_pb2.LoadPricesRequest(document=document, format=fmt, source="p")
    code, details = await refusal(stub.LoadPrices(request, metadata=ADMIN))
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert details.startswith(said), details
    assert len(details) < 400  # the 5000-digit number is not repeated whole
    assert catalogs.loads == []
