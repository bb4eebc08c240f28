"""The price catalog servicer in process: the real PriceCatalogServicer behind a real
grpc.aio server, with a small fake of its revisions store (loading against Postgres,
and the CLI, are tested in tests/metering/test_prices.py)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime

import grpc
import pytest

from quartermaster.v1 import prices_pb2, prices_pb2_grpc
from services.metering.price_servicer import PriceCatalogServicer
from services.metering.pricing import CatalogDocument, CatalogError, Price, PriceCatalog
from services.metering.revisions import LoadRecord, Revision, changes, merge
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

    async def history(self, model: str, after: int, limit: int) -> list[LoadRecord]:
        """As stores.catalog.CatalogStore.history: after `after`, `model`'s lines only."""
        out: list[LoadRecord] = []
        for r in self.revisions:
            lines = [c for c in r.changes if c.startswith(f"{model}: ")] if model else r.changes
            if r.revision > after and lines:
                out.append(LoadRecord(r.revision, r.loaded_at, r.loaded_by, r.mode, r.source,
                                      lines))  # fmt: skip
        return out[:limit]


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
         "p: line 2.output: expected a whole number >= 0 and <= 1000000000000"),
        # Said "Exceeds the limit (4300 digits)", naming no field.
        ("fallback: {input: " + "9" * 5000 + "}", prices_pb2.CATALOG_FORMAT_YAML,
         "p: fallback.input: expected a whole number >= 0 and <= 1000000000000 (micro-credits"
         " per million tokens), got 9999999999999999999999999999999999999999... (5000 char"),
        ("model,effective_from,input,cached_input,output\n*,,1,0," + "9" * 5000 + "\n",
         prices_pb2.CATALOG_FORMAT_CSV, "p: line 2.output: expected a whole number >= 0"),
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


VERSION = "{effective_from: '2026-01-01T00:00:00Z', input: 2, cached_input: 1, output: 3}"
CSV_HEADER = "model,effective_from,input,cached_input,output\n"
# The breaker's second pass: each was INTERNAL, accepted silently, or refused without
# saying where. Each kind is refused naming the place (line, model, field) and value.
BREAKER = [
    # A ~480-byte "billion laughs" of merge keys: it held the event loop for minutes.
    ("a: &a {x: 1}\n" + "".join(
        f"{chr(98 + i)}: &{chr(98 + i)} {{<<: [{', '.join(['*' + chr(97 + i)] * 9)}]}}\n"
        for i in range(9)), prices_pb2.CATALOG_FORMAT_YAML,
     "p: line 7: more than 500,000 YAML nodes once aliases and merge keys (<<) are expanded"),
    # The same with plain aliases of lists.
    ("a: &a [1, 1, 1, 1, 1, 1, 1, 1, 1, 1]\n" + "".join(
        f"{chr(98 + i)}: &{chr(98 + i)} [{', '.join(['*' + chr(97 + i)] * 10)}]\n"
        for i in range(6)), prices_pb2.CATALOG_FORMAT_YAML,
     "p: line 6: more than 500,000 YAML nodes"),
    ("models: &m {gpt-5: [*m]}\n", prices_pb2.CATALOG_FORMAT_YAML,
     "p: line 1: alias *m is inside the node it names"),
    # INTERNAL: stored, then ListPrices/PriceHistory could not send it as an int64.
    ("models:\n  m: [{effective_from: '2026-01-01T00:00:00Z', input: 2, cached_input: 1, "
     "output: 3, long_context: {above_input_tokens: 99999999999999999999999, input: 2, "
     "cached_input: 1, output: 3}}]\n", prices_pb2.CATALOG_FORMAT_YAML,
     "p: models.m[0].long_context.above_input_tokens: expected a whole number >= 1 and <= "
     "1,000,000,000 (input tokens), got 99999999999999999999999"),
    # INTERNAL at the load (PostgreSQL's text holds no NUL) while the dry run said OK.
    (f'models:\n  "gpt\\0x": [{VERSION}]\n', prices_pb2.CATALOG_FORMAT_YAML,
     "p: models: 'gpt\\x00x' is not a name: must not contain NUL (U+0000)"),
    (f'models:\n  m: [{VERSION}]\naliases:\n  "m\\ud800": m\n', prices_pb2.CATALOG_FORMAT_YAML,
     "p: aliases: 'm\\ud800' is not a name: must be valid Unicode"),
    (f"{CSV_HEADER}*,,2,1,3\nm\0,2026-01-01T00:00:00Z,2,1,3\n", prices_pb2.CATALOG_FORMAT_CSV,
     "p: line 3.model: 'm\\x00' is not a name: must not contain NUL"),
    # INTERNAL downstream (date arithmetic past year 9999); now years 2000 to 2200.
    (f"models:\n  m: [{VERSION.replace('2026', '9999')}]\n", prices_pb2.CATALOG_FORMAT_YAML,
     "p: models.m[0].effective_from: 9999-01-01T00:00:00+00:00 is outside years 2000 to 2200"),
    (f"{CSV_HEADER}m,1999-12-31T23:59:59Z,2,1,3\n", prices_pb2.CATALOG_FORMAT_CSV,
     "p: line 2.effective_from: 1999-12-31T23:59:59+00:00 is outside years 2000 to 2200"),
    # Said "year 0 is out of range", naming no field.
    ("models:\n  m: [{effective_from: 0000-01-01T00:00:00Z, input: 2, cached_input: 1, "
     "output: 3}]\n", prices_pb2.CATALOG_FORMAT_YAML,
     "p: models.m[0].effective_from: not an ISO-8601 time: '0000-01-01T00:00:00Z' (year 0 is "
     "out of range)"),
    # `1:` and `"1":` were one model "1"; `null:` the model "None".
    (f'models:\n  1: [{VERSION}]\n  "1": [{VERSION}]\n', prices_pb2.CATALOG_FORMAT_YAML,
     "p: line 2: the key 1 is not text (YAML reads '1' as int): quote it"),
    (f"models:\n  null: [{VERSION}]\n", prices_pb2.CATALOG_FORMAT_YAML,
     "p: line 2: the key None is not text (YAML reads 'null' as NoneType)"),
    (f"models:\n  m: [{VERSION}]\n  m: [{VERSION}]\n", prices_pb2.CATALOG_FORMAT_YAML,
     "p: line 3: 'm' is written twice in one mapping (first on line 2)"),
    # int() took Arabic-Indic digits and "1_000".
    (f"{CSV_HEADER}*,,\u0661\u0662,1,3\n", prices_pb2.CATALOG_FORMAT_CSV,
     "p: line 2.input: not a whole number of micro-credits per million tokens (ASCII digits 0-9"
     " only): '\u0661\u0662'"),
    (f"{CSV_HEADER}*,,1_000,1,3\n", prices_pb2.CATALOG_FORMAT_CSV,
     "p: line 2.input: not a whole number of micro-credits per million tokens"),
    (f"{CSV_HEADER}*,,1.5,1,3\n", prices_pb2.CATALOG_FORMAT_CSV,
     "p: line 2.input: not a whole number of micro-credits per million tokens"),
    # The fallback's effective_from was ignored silently, in both formats.
    (f"{CSV_HEADER}*,2026-01-01T00:00:00Z,2,1,3\n", prices_pb2.CATALOG_FORMAT_CSV,
     "p: line 2.effective_from: the fallback row (*) has one price for every time"),
    ("fallback: {effective_from: '2026-01-01T00:00:00Z', input: 2, cached_input: 1, output: 3}",
     prices_pb2.CATALOG_FORMAT_YAML,
     "p: fallback.effective_from: the fallback has one price for every time"),
    # A cached read priced above input (columns swapped), in both formats alike.
    (f"{CSV_HEADER}*,,2,1,3\nm,2026-01-01T00:00:00Z,1,2,3\n", prices_pb2.CATALOG_FORMAT_CSV,
     "p: line 3.cached_input: 2 is more than input 1"),
    (f"models:\n  m: [{VERSION.replace('input: 2', 'input: 0')}]\n",
     prices_pb2.CATALOG_FORMAT_YAML, "p: models.m[0].cached_input: 1 is more than input 0"),
    ("fallback: {input: 2, cached_input: 1, output: 3, service_tiers: {batch: {input: 1, "
     "cached_input: 2, output: 3}}}", prices_pb2.CATALOG_FORMAT_YAML,
     "p: fallback.service_tiers.batch.cached_input: 2 is more than input 1"),
]  # fmt: skip


@pytest.mark.parametrize(("document", "fmt", "said"), BREAKER)
@pytest.mark.parametrize("dry_run", [True, False])
async def test_each_kind_the_breaker_found_is_refused_naming_it_on_a_dry_run_and_a_load(
    stub: prices_pb2_grpc.PriceCatalogServiceAsyncStub,
    catalogs: FakeCatalogs,
    document: str,
    fmt: prices_pb2.CatalogFormat.ValueType,
    said: str,
    dry_run: bool,
) -> None:
    request = prices_pb2.LoadPricesRequest(document=document, format=fmt, source="p",
                                           dry_run=dry_run)  # fmt: skip
    code, details = await refusal(stub.LoadPrices(request, metadata=ADMIN))
    assert (code, details[: len(said)]) == (grpc.StatusCode.INVALID_ARGUMENT, said)
    assert len(details) < 400
    assert catalogs.loads == []


async def test_a_source_postgresql_cannot_store_is_refused(
    stub: prices_pb2_grpc.PriceCatalogServiceAsyncStub, catalogs: FakeCatalogs
) -> None:
    request = prices_pb2.LoadPricesRequest(
        document=f"models:\n  m: [{VERSION}]\n", format=prices_pb2.CATALOG_FORMAT_YAML,
        source="a\0b",
    )  # fmt: skip
    assert await refusal(stub.LoadPrices(request, metadata=ADMIN)) == (
        grpc.StatusCode.INVALID_ARGUMENT,
        "source: must not contain NUL (U+0000)",
    )


async def test_a_large_document_is_parsed_off_the_event_loop(
    stub: prices_pb2_grpc.PriceCatalogServiceAsyncStub, catalogs: FakeCatalogs
) -> None:
    """The Cost API shares the event loop: a load of a large catalog (about a second
    of parsing here) must not stop it answering meanwhile."""
    rows = "".join(f"  m{i}: [{VERSION}]\n" for i in range(2500))
    document = "fallback: {input: 2, cached_input: 1, output: 3}\nmodels:\n" + rows
    loop = asyncio.get_running_loop()
    gaps: list[float] = []

    async def ticks() -> None:
        last = loop.time()
        while True:
            await asyncio.sleep(0.01)
            gaps.append(loop.time() - last)
            last = loop.time()

    ticker = asyncio.create_task(ticks())
    request = prices_pb2.LoadPricesRequest(document=document, dry_run=True,
                                           format=prices_pb2.CATALOG_FORMAT_YAML)  # fmt: skip
    started = loop.time()
    await stub.LoadPrices(request, metadata=ADMIN)
    took = loop.time() - started
    ticker.cancel()
    assert len(catalogs.loads[0][0].models) == 2500
    assert max(gaps) < max(0.25, took / 3), (max(gaps), took)


async def test_a_stored_threshold_past_int64_is_still_listed_and_traced(
    stub: prices_pb2_grpc.PriceCatalogServiceAsyncStub, catalogs: FakeCatalogs
) -> None:
    """Loads bound above_input_tokens now; a revision stored before may hold 10^30, and
    ListPrices and PriceHistory answered INTERNAL for it (past int64). Reads take what
    is stored; a load of the same is refused."""
    raw = {"fallback": {"input": 2, "cached_input": 1, "output": 3},
           "models": {"m": [{"effective_from": "2026-01-01T00:00:00Z", "input": 2,
                             "cached_input": 1, "output": 3,
                             "long_context": {"above_input_tokens": 10**30, "input": 4,
                                              "cached_input": 2, "output": 6}}]}}  # fmt: skip
    with pytest.raises(CatalogError, match="above_input_tokens: expected a whole number >= 1"):
        PriceCatalog.from_mapping(raw)
    stored = PriceCatalog.from_mapping(raw, stored=True)
    catalogs.revisions.append(Revision(1, T0, "seed", "seed", "old", ["m: new version"], stored))
    listed = await stub.ListPrices(prices_pb2.ListPricesRequest(), metadata=ADMIN)
    assert listed.prices[0].long_context_above_input_tokens == 2**63 - 1
    history = await stub.PriceHistory(prices_pb2.PriceHistoryRequest(model="m"), metadata=ADMIN)
    assert history.versions[0].long_context.input == 4


async def test_ids_resolve_in_history_as_in_listings_and_every_version_is_listed(
    stub: prices_pb2_grpc.PriceCatalogServiceAsyncStub, catalogs: FakeCatalogs
) -> None:
    """Issue 13: `prices history gpt-5-2025-08-07` was NOT_FOUND "was never priced" while
    its events are priced as gpt-5 and ListPrices resolved it."""
    yaml_doc = (
        "fallback: {input: 2, cached_input: 1, output: 3}\n"
        "models:\n  gpt-5:\n"
        "    - {effective_from: '2025-08-07T00:00:00Z', input: 2, cached_input: 1, output: 3}\n"
        "    - {effective_from: '2026-01-01T00:00:00Z', input: 4, cached_input: 1, output: 3}\n"
    )
    whole = prices_pb2.LoadPricesRequest(
        document=yaml_doc, format=prices_pb2.CATALOG_FORMAT_YAML, replace=True
    )
    await stub.LoadPrices(whole, metadata=ADMIN)
    history = await stub.PriceHistory(prices_pb2.PriceHistoryRequest(model="gpt-5-2025-08-07"))
    assert history.model == "gpt-5"
    assert [p.input for p in history.versions] == [2, 4]
    assert len(history.revisions) == 1
    listed = await stub.ListPrices(prices_pb2.ListPricesRequest(models=["openai/gpt-5", "gpt-5"]))
    assert dict(listed.resolved) == {"openai/gpt-5": "gpt-5"}
    every = await stub.ListPrices(prices_pb2.ListPricesRequest(every_version=True))
    assert [(p.model, p.input) for p in every.prices] == [("gpt-5", 2), ("gpt-5", 4)]
    both = prices_pb2.ListPricesRequest(every_version=True)
    both.at.FromDatetime(T0)
    assert await refusal(stub.ListPrices(both)) == (
        grpc.StatusCode.INVALID_ARGUMENT,
        "at: not with every_version (every version is listed, whenever in force)",
    )


async def test_a_csv_load_removing_tiers_is_refused_unless_asked(
    stub: prices_pb2_grpc.PriceCatalogServiceAsyncStub, catalogs: FakeCatalogs
) -> None:
    tiered = (
        "fallback: {input: 2, cached_input: 1, output: 3}\n"
        "models:\n  gpt-5:\n    - {effective_from: '2025-08-07T00:00:00Z', input: 2, "
        "cached_input: 1, output: 3, service_tiers: {batch: {input: 1, cached_input: 1, "
        "output: 1}}}\n"
    )
    whole = prices_pb2.LoadPricesRequest(
        document=tiered, format=prices_pb2.CATALOG_FORMAT_YAML, replace=True
    )
    await stub.LoadPrices(whole, metadata=ADMIN)
    csv = "model,effective_from,input,cached_input,output\ngpt-5,2025-08-07T00:00:00Z,2,1,3\n"
    request = prices_pb2.LoadPricesRequest(document=csv, format=prices_pb2.CATALOG_FORMAT_CSV,
                                           source="list.csv", dry_run=True)  # fmt: skip
    code, details = await refusal(stub.LoadPrices(request, metadata=ADMIN))
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert details.startswith("list.csv: this CSV load would remove prices and aliases CSV "
                              "cannot write"), details  # fmt: skip
    assert "gpt-5 version from 2025-08-07T00:00:00+00:00: service_tiers.batch." in details
    request.drop_yaml_only = True
    dry = await stub.LoadPrices(request, metadata=ADMIN)
    assert "service_tiers.batch.input 1 -> (none)" in dry.changes[0]
