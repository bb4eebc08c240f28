"""The price catalog in Postgres: PriceCatalogService (load, list, history), its CLI,
and a running metering worker pricing with a newly loaded revision without restart.

Tests share one catalog (one Postgres per session), so each loads only models of its
own (`m-<random>`); the replace test puts the catalog back as it found it minus them.
"""

from __future__ import annotations

import asyncio
import io
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING

import asyncpg
import grpc
import pytest
import yaml

from devtools.localinfra.stack import Infra
from quartermaster.v1 import prices_pb2, prices_pb2_grpc
from services.metering import api, cli
from services.metering.settings import MeteringSettings
from services.metering.stores.catalog import CatalogStore
from tests.conftest import PRICES_METADATA, MeteringWorker
from tests.helpers import TOKENS, channel, eventually, new_user, produce_usage, usage

pytestmark = pytest.mark.infra
ADMIN = PRICES_METADATA  # the actor "tests-prices"
if TYPE_CHECKING:
    from quartermaster.v1.prices_pb2_grpc import PriceCatalogServiceAsyncStub as Stub


def catalog_yaml(model: str, *versions: tuple[str, int]) -> str:
    """`model` with (effective_from, input price) versions; output 4x input."""
    rows = [
        {"effective_from": start, "input": p, "cached_input": p // 10, "output": 4 * p}
        for start, p in versions
    ]
    return yaml.safe_dump({"models": {model: rows}})


@pytest.fixture
async def running(infra: Infra, service_env: dict[str, str]) -> AsyncIterator[int]:
    running = await api.start(MeteringSettings.from_env(service_env), addr="127.0.0.1:0")
    try:
        yield running.served.port
    finally:
        await running.stop(1)


@pytest.fixture
async def stub(running: int) -> AsyncIterator[Stub]:
    async with channel(f"127.0.0.1:{running}", "reader") as ch:
        yield prices_pb2_grpc.PriceCatalogServiceStub(ch)


def load(
    document: str, replace: bool = False, dry_run: bool = False
) -> prices_pb2.LoadPricesRequest:
    return prices_pb2.LoadPricesRequest(
        document=document, format=prices_pb2.CATALOG_FORMAT_YAML, source="t.yaml",
        replace=replace, dry_run=dry_run,
    )  # fmt: skip


async def test_loading_prices_needs_role_prices_and_a_valid_document(stub: Stub) -> None:
    doc = catalog_yaml("m-auth", ("2026-01-01T00:00:00Z", 1_000_000))
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stub.LoadPrices(load(doc), metadata=(("authorization", "Bearer " + "x" * 20),))
    assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stub.LoadPrices(load(doc))  # the channel's reader token
    assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert info.value.details() == (
        "PriceCatalogService/LoadPrices needs role prices; credential 'tests-reader' has reader"
    )
    empty = prices_pb2.LoadPricesRequest()
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stub.LoadPrices(empty, metadata=ADMIN)
    assert info.value.details() == (
        "document: empty; format: required, CATALOG_FORMAT_YAML or CATALOG_FORMAT_CSV"
    )
    bad = {
        doc.replace("1000000", "-5"): "t.yaml: models.m-auth[0].input: expected a whole number",
        doc.replace("2026-01-01T00:00:00Z", "soon"): "models.m-auth[0].effective_from: not an ISO",
        "models: [1, 2]": "t.yaml: models must map model names to price versions",
    }
    for document, message in bad.items():
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await stub.LoadPrices(load(document), metadata=ADMIN)
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert message in str(info.value.details())
    listed = await stub.ListPrices(prices_pb2.ListPricesRequest())
    assert "m-auth" not in {p.model for p in listed.prices}, "nothing refused was loaded"


async def test_a_load_is_a_new_revision_listed_by_time_with_its_history(
    stub: Stub, infra: Infra
) -> None:
    model = f"m-{uuid.uuid4().hex[:8]}"
    doc = catalog_yaml(model, ("2026-01-01T00:00:00Z", 1_000_000))
    before = (await stub.ListPrices(prices_pb2.ListPricesRequest())).revision
    assert before >= 1, "the API seeded the catalog from QM_METERING_PRICES"

    dry = await stub.LoadPrices(load(doc, dry_run=True), metadata=ADMIN)
    assert (dry.revision, dry.dry_run) == (before, True)
    assert dry.changes == [
        f"{model}: new version from 2026-01-01T00:00:00+00:00: input 1000000, cached_input"
        " 100000, output 4000000, reasoning 4000000, cache_write 1000000, cache_write_1h"
        " 1000000, audio_input 1000000, audio_output 4000000 (already in force: it prices"
        " events counted from now on, not those counted before)"
    ]
    first = await stub.LoadPrices(load(doc), metadata=ADMIN)
    assert first.revision > before
    again = await stub.LoadPrices(load(doc), metadata=ADMIN)
    assert (again.revision, list(again.changes)) == (first.revision, []), "nothing new: no row"

    # a cheaper version from June, and January's corrected: one revision, two lines
    doc2 = catalog_yaml(
        model, ("2026-01-01T00:00:00Z", 1_200_000), ("2026-06-01T00:00:00Z", 500_000)
    )
    second = await stub.LoadPrices(load(doc2), metadata=ADMIN)
    assert second.changes[0] == (
        f"{model}: version from 2026-01-01T00:00:00+00:00: input 1000000 -> 1200000, "
        "cached_input 100000 -> 120000, output 4000000 -> 4800000, reasoning 4000000 -> "
        "4800000, cache_write 1000000 -> 1200000, cache_write_1h 1000000 -> 1200000, "
        "audio_input 1000000 -> 1200000, audio_output 4000000 -> 4800000 (already in force: "
        "it prices events counted from now on, not those counted before)"
    )
    assert second.changes[1].startswith(f"{model}: new version from 2026-06-01T00:00:00+00:00")

    def at(text: str) -> prices_pb2.ListPricesRequest:
        req = prices_pb2.ListPricesRequest(models=[model])
        req.at.FromDatetime(datetime.fromisoformat(text))
        return req

    assert [p.input for p in (await stub.ListPrices(at("2026-05-31T23:59:59+00:00"))).prices] == [
        1_200_000
    ]
    june = await stub.ListPrices(at("2026-06-01T00:00:00+00:00"))
    assert (june.revision, [p.input for p in june.prices]) == (second.revision, [500_000])
    assert june.fallback.input == 5_000_000, "the shipped fallback"
    assert list((await stub.ListPrices(at("2025-12-31T00:00:00+00:00"))).prices) == []
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stub.ListPrices(prices_pb2.ListPricesRequest(models=["no-such-model"]))
    assert info.value.code() == grpc.StatusCode.NOT_FOUND

    history = await stub.PriceHistory(prices_pb2.PriceHistoryRequest(model=model))
    assert [v.input for v in history.versions] == [1_200_000, 500_000]
    revisions = [(r.revision, r.loaded_by, r.mode, r.source, len(r.changes))
                 for r in history.revisions]  # fmt: skip
    assert revisions == [
        (first.revision, "tests-prices", "load", "t.yaml", 1),
        (second.revision, "tests-prices", "load", "t.yaml", 2),
    ]
    everything = await stub.PriceHistory(prices_pb2.PriceHistoryRequest())
    assert (everything.revisions[0].mode, everything.revisions[0].loaded_by) == ("seed", "seed")
    assert any(c.startswith("gpt-5: new version") for c in everything.revisions[0].changes)

    conn = await asyncpg.connect(infra.database_url)
    try:
        with pytest.raises(asyncpg.RaiseError, match="append-only"):
            await conn.execute("DELETE FROM metering.price_catalogs WHERE revision = $1", 1)
    finally:
        await conn.close()


async def test_replace_makes_the_document_the_whole_catalog(stub: Stub, infra: Infra) -> None:
    model = f"m-{uuid.uuid4().hex[:8]}"
    await stub.LoadPrices(load(catalog_yaml(model, ("2026-01-01T00:00:00Z", 7))), metadata=ADMIN)
    pool = await asyncpg.create_pool(infra.database_url)
    try:
        current = await CatalogStore(pool).current()
    finally:
        await pool.close()
    assert current is not None
    whole = current.catalog.to_mapping()
    del whole["models"][model]
    with pytest.raises(grpc.aio.AioRpcError) as info:  # a whole catalog needs its fallback
        await stub.LoadPrices(load(yaml.safe_dump({"models": whole["models"]}), replace=True),
                              metadata=ADMIN)  # fmt: skip
    assert "a whole catalog needs a 'fallback' price" in str(info.value.details())
    done = await stub.LoadPrices(load(yaml.safe_dump(whole), replace=True), metadata=ADMIN)
    assert list(done.changes) == [f"{model}: removed (1 version(s)); the fallback prices it now"]
    history = await stub.PriceHistory(prices_pb2.PriceHistoryRequest(model=model))
    assert [r.mode for r in history.revisions] == ["load", "replace"]
    assert list(history.versions) == []


async def test_a_running_worker_prices_with_a_new_revision_at_each_events_time(
    stub: Stub, infra: Infra, metering: MeteringWorker
) -> None:
    model = f"m-{uuid.uuid4().hex[:8]}"
    now = datetime.now(UTC).replace(microsecond=0)
    switch = now - timedelta(hours=1)
    doc = catalog_yaml(model, ("2020-01-01T00:00:00Z", 1_000_000), (switch.isoformat(), 2_000_000))
    await stub.LoadPrices(load(doc), metadata=ADMIN)

    conn = await asyncpg.connect(infra.database_url)
    try:

        async def spent(user: str) -> int:
            value = await conn.fetchval(
                "SELECT coalesce(sum(micros), 0) FROM metering.rollups_hourly WHERE user_id = $1",
                user,
            )
            return int(value)

        # The worker polls every 0.5 s (QM_METERING_PRICES_POLL_SECONDS in the tests):
        # probe until an event of the new model is priced from the catalog (1000 in x 2 +
        # 500 out x 8 = 6,000), not by the fallback (15,000) as before the pick-up.
        priced: list[int] = []
        while 6_000 not in priced:
            assert len(priced) < 20, f"the new revision was never picked up: {priced}"
            probe = new_user()
            produce_usage(infra.kafka_bootstrap, [usage(probe, model=model)])
            # The first probe also waits for a worker started for this test alone to
            # join its group (tens of seconds on a loaded machine).
            deadline = asyncio.get_running_loop().time() + (60 if not priced else 10)
            while not (cost := await spent(probe)):
                assert asyncio.get_running_loop().time() < deadline, "probe never counted"
                await asyncio.sleep(0.05)
            priced.append(cost)
        assert set(priced) <= {6_000, 15_000}
        user = new_user()
        produce_usage(infra.kafka_bootstrap, [
            usage(user, model=model, occurred_at=switch - timedelta(minutes=30)),  # old price
            usage(user, model=model, occurred_at=switch + timedelta(minutes=30)),  # new price
        ])  # fmt: skip
        # 1000 x 1 + 500 x 4 = 3,000 before the switch; 6,000 after it
        await eventually(lambda: spent(user), 3_000 + 6_000, within=20)
    finally:
        await conn.close()
    assert "prices: catalog revision" in metering.log_tail(400)


async def test_the_cli_loads_lists_and_shows_history(running: int, tmp_path: Path) -> None:
    model = f"m-{uuid.uuid4().hex[:8]}"
    path = tmp_path / "more.csv"
    path.write_text(
        "model,effective_from,input,cached_input,cache_write,output,reasoning\n"
        f"{model},2026-02-01T00:00:00Z,3000000,300000,3750000,15000000,\n"
    )
    addr = ["--addr", f"127.0.0.1:{running}"]
    reader = ("--token", TOKENS["reader"])

    def run(*argv: str) -> tuple[int, str]:
        out = io.StringIO()
        return cli.main([*addr, *argv], out), out.getvalue()

    code, _ = await asyncio.to_thread(run, "prices", "load", str(path), "--token", "wrong" * 4)
    assert code == 2
    code, out = await asyncio.to_thread(
        run, "prices", "load", str(path), "--token", TOKENS["prices"], "--dry-run"
    )
    assert (code, out.splitlines()[-1]) == (0, "dry run: 1 change(s), nothing written")
    code, out = await asyncio.to_thread(
        run, "prices", "load", str(path), "--token", TOKENS["prices"]
    )
    assert code == 0
    assert out.splitlines()[-1].startswith("revision ")
    code, out = await asyncio.to_thread(
        run, "prices", "list", "--model", model, "--format", "csv", *reader
    )
    assert out.splitlines() == [
        "model,effective_from,input,cached_input,cache_write,output,reasoning,"
        "cache_write_1h,audio_input,audio_output",
        f"{model},2026-02-01T00:00:00+00:00,3000000,300000,3750000,15000000,15000000,"
        "3750000,3000000,15000000",
        "*,,5000000,2500000,5000000,20000000,20000000,5000000,5000000,20000000",
    ]
    tiered = tmp_path / "tiered.yaml"
    version = {"effective_from": "2026-02-01T00:00:00Z", "input": 1_250_000,
               "cached_input": 125_000, "output": 10_000_000,
               "service_tiers": {"batch": {"input": 625_000, "cached_input": 62_500,
                                           "output": 5_000_000}}}  # fmt: skip
    tiered.write_text(yaml.safe_dump({"models": {f"{model}-t": [version]}}))
    code, _ = await asyncio.to_thread(run, "prices", "load", str(tiered), "--token",
                                      TOKENS["prices"])  # fmt: skip
    assert code == 0
    code, out = await asyncio.to_thread(run, "prices", "list", "--model", f"{model}-t", *reader)
    listed = out.splitlines()
    assert listed[0].split()[:5] == ["model", "effective_from", "input", "cached_input",
                                     "cache_write"]  # fmt: skip
    assert [line.split()[:4] for line in listed[1:3]] == [
        [f"{model}-t", "2026-02-01T00:00:00+00:00", "1250000", "125000"],
        [f"{model}-t", "[batch]", "625000", "62500"],
    ]
    assert "prices: micro-credits per million tokens (1 credit = 1,000,000 micros)" in listed
    code, out = await asyncio.to_thread(run, "prices", "history", model, *reader)
    assert code == 0
    assert "load by tests-prices at " in out
    assert "from more.csv" in out


async def test_history_comes_in_pages_that_always_fit_a_grpc_answer(
    stub: Stub, running: int, infra: Infra
) -> None:
    """Three loads of a 1.2 MB catalog made PriceHistory answer RESOURCE_EXHAUSTED (past
    gRPC's 4 MiB). Rows as such loads write them (1.4 MB of change lines each, the
    catalog as it is) are put straight in the table: parsing three such documents would
    take the test half a minute and tell nothing more."""
    model = f"m-{uuid.uuid4().hex[:8]}"
    lines = [f"{model}: new version from 2026-01-01T00:00:00+00:00: input {i} " + "x" * 100
             for i in range(12_000)]  # fmt: skip
    conn = await asyncpg.connect(infra.database_url)
    try:
        for _ in range(3):
            await conn.execute(
                """
                INSERT INTO metering.price_catalogs (loaded_at, loaded_by, mode, source,
                    changes, catalog)
                SELECT now(), 'tests-prices', 'load', 'big.yaml', $1, catalog
                FROM metering.price_catalogs ORDER BY revision DESC LIMIT 1
                """,
                lines,
            )
        total = await conn.fetchval("SELECT count(*) FROM metering.price_catalogs")
    finally:
        await conn.close()
    for asked in (model, ""):
        token, pages = "", 0
        seen: list[prices_pb2.PriceRevision] = []
        while True:
            page = await stub.PriceHistory(
                prices_pb2.PriceHistoryRequest(model=asked, page_token=token)
            )
            assert page.ByteSize() < 2 * 1024 * 1024
            pages += 1
            seen.extend(page.revisions)
            token = page.next_page_token
            if not token:
                break
        big = [r for r in seen if r.source == "big.yaml"][-3:]
        assert [len(r.changes) + r.changes_omitted for r in big] == [12_000] * 3
        assert all(0 < r.changes_omitted < 12_000 for r in big)
        assert pages >= 3
        if not asked:
            assert len(seen) == total
            assert [r.revision for r in seen] == sorted(r.revision for r in seen)
    one = await stub.PriceHistory(prices_pb2.PriceHistoryRequest(model=model, page_size=1))
    assert len(one.revisions) == 1
    assert one.next_page_token
    for bad, said in (({"page_size": 101}, "page_size: must be between 1 and 100"),
                      ({"page_token": "bm90IGEgdG9rZW4"}, "page_token: not a token")):  # fmt: skip
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await stub.PriceHistory(prices_pb2.PriceHistoryRequest(model=model, **bad))
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert said in str(info.value.details())

    def run() -> tuple[int, str]:
        out = io.StringIO()
        argv = ["--addr", f"127.0.0.1:{running}", "prices", "history", model,
                "--token", TOKENS["reader"]]  # fmt: skip
        return cli.main(argv, out), out.getvalue()

    code, out = await asyncio.to_thread(run)
    assert code == 0
    assert out.count("by tests-prices at ") == 3
    assert out.count(" more change line(s): one answer holds about 1 MiB of them") == 3
