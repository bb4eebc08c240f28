"""A breaker's attempts on pricing (issue 13), against the real metering worker, Cost
API process (the price catalog's server), policy, PostgreSQL and broker: bad and huge
token classes, contradictory catalogs, a price version starting in the future, the last
nanosecond before a price change, and the CLI given bad files. The same kinds without
infrastructure: test_catalog_refusals.py."""

from __future__ import annotations

import asyncio
import io
import json
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING

import asyncpg
import grpc
import pytest
from google.protobuf import json_format

from devtools.localinfra.stack import Infra
from quartermaster.topics import CONTENT_TYPE, JSON, PROTOBUF
from quartermaster.v1 import prices_pb2, prices_pb2_grpc, usage_pb2
from services.metering import api, cli
from services.metering.bounds import MAX_EVENT_TOKENS
from services.metering.settings import MeteringSettings
from tests.conftest import PRICES_METADATA, MeteringWorker
from tests.helpers import TOKENS, channel, eventually, new_user, produce, produce_usage, usage
from tests.metering.test_metering import used_of
from tests.metering.test_poison import dlq_reasons

if TYPE_CHECKING:
    from quartermaster.v1.policy_pb2_grpc import PolicyServiceAsyncStub as Policy
    from quartermaster.v1.prices_pb2_grpc import PriceCatalogServiceAsyncStub as Stub

pytestmark = pytest.mark.infra


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


def load(document: str) -> prices_pb2.LoadPricesRequest:
    return prices_pb2.LoadPricesRequest(
        document=document, format=prices_pb2.CATALOG_FORMAT_YAML, source="attack.yaml"
    )


def as_json(event: usage_pb2.UsageEvent, **fields: object) -> bytes:
    raw = json.loads(json_format.MessageToJson(event))
    raw.update(fields)
    return json.dumps(raw).encode()


async def test_bad_and_huge_token_classes_never_stop_the_others(
    infra: Infra, metering: MeteringWorker, policy: Policy
) -> None:
    user = new_user()
    jsonh = [(CONTENT_TYPE, JSON.encode())]
    pbh = [(CONTENT_TYPE, PROTOBUF.encode())]
    past = usage(user, input_tokens=MAX_EVENT_TOKENS + 1, output_tokens=MAX_EVENT_TOKENS + 1)
    for name in ("cached_input_tokens", "cache_write_input_tokens", "reasoning_tokens"):
        setattr(past, name, 0)
    past.cache_write_1h_input_tokens = MAX_EVENT_TOKENS + 1
    past.audio_input_tokens = past.audio_output_tokens = MAX_EVENT_TOKENS + 1
    # at the bound in every class it can hold at once on gpt-audio: counted, exactly
    # 10^9 audio in x 32 + 10^9 audio out x 64 = 96,000,000,000 micros
    most = usage(user, model="gpt-audio", input_tokens=MAX_EVENT_TOKENS,
                 audio_input_tokens=MAX_EVENT_TOKENS, output_tokens=MAX_EVENT_TOKENS,
                 audio_output_tokens=MAX_EVENT_TOKENS)  # fmt: skip
    records = [
        (user.encode(), as_json(usage(user), audioInputTokens=-5), jsonh),
        (user.encode(), as_json(usage(user), serviceTier="SERVICE_TIER_BACTH"), jsonh),
        (user.encode(), past.SerializeToString(), pbh),
        (user.encode(), most.SerializeToString(), pbh),
        # classes missing from the JSON mapping are none of them: 6,250 micros
        (user.encode(), as_json(usage(user)), jsonh),
        (user.encode(), usage(user).SerializeToString(), pbh),
    ]
    produce(infra.kafka_bootstrap, records)
    await eventually(used_of(policy, user), 96_000_000_000 + 2 * 6_250, within=30)
    reasons = await dlq_reasons(infra, user, 3)
    assert any(r.startswith("audio_input_tokens: must not be negative") for r in reasons)
    assert any("service_tier: unknown tier 'SERVICE_TIER_BACTH'" in r for r in reasons)
    [huge] = [r for r in reasons if "more than 1,000,000,000" in r]
    for name in ("input_tokens", "output_tokens", "cache_write_1h_input_tokens",
                 "audio_input_tokens", "audio_output_tokens"):  # fmt: skip
        assert f"{name}: more than 1,000,000,000" in huge, huge


async def test_a_load_contradicting_itself_is_refused_and_changes_nothing(stub: Stub) -> None:
    model = f"m-{uuid.uuid4().hex[:8]}"
    version = '[{effective_from: "2026-01-01T00:00:00Z", input: 1, cached_input: 1, output: 1}]'
    before = await stub.ListPrices(prices_pb2.ListPricesRequest())
    bad = {
        f"models:\n  {model}: {version}\naliases:\n  {model}-a: {model}\n  {model}-a: gpt-5\n":
            f"line 5: '{model}-a' is written twice in one mapping (first on line 4)",
        f"models:\n  {model}: {version}\naliases:\n  {model.upper()}-A: {model}\n  {model}-a: o3\n":
            "are one alias (aliases ignore case) claimed by two models",
        f"models:\n  {model}: {version}\naliases:\n  gpt-5: {model}\n":
            f"alias gpt-5 -> {model}: gpt-5 is a model of the catalog",
        f"models:\n  {model}: {version}\naliases:\n  '*': {model}\n":
            "a glob of wildcards alone names every model id",
        f"models:\n  {model}: [{{effective_from: '9999-12-31T23:00:00-05:00', input: 1,"
        " cached_input: 1, output: 1}]\n": "is outside years 1 to 9999 in UTC",
    }  # fmt: skip
    for document, message in bad.items():
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await stub.LoadPrices(load(document), metadata=PRICES_METADATA)
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT, document
        assert message in str(info.value.details()), info.value.details()
    after = await stub.ListPrices(prices_pb2.ListPricesRequest())
    assert (after.revision, dict(after.aliases)) == (before.revision, dict(before.aliases))


async def _picked_up(infra: Infra, model: str, micros: int) -> None:
    """Wait until the worker prices `model` from the catalog (an event of it costing
    `micros`, not the fallback's), probing with fresh users."""
    conn = await asyncpg.connect(infra.database_url)
    try:
        for attempt in range(20):
            probe = new_user()
            produce_usage(infra.kafka_bootstrap, [usage(probe, model=model)])
            deadline = asyncio.get_running_loop().time() + (60 if attempt == 0 else 10)
            cost = 0
            while not cost:
                assert asyncio.get_running_loop().time() < deadline, "probe never counted"
                cost = await conn.fetchval(
                    "SELECT coalesce(sum(micros), 0) FROM metering.rollups_15m"
                    " WHERE user_id = $1", probe,
                )  # fmt: skip
                await asyncio.sleep(0.05)
            if cost == micros:
                return
        raise AssertionError("the worker never priced the new revision")
    finally:
        await conn.close()


def at_ns(event: usage_pb2.UsageEvent, ns: int) -> usage_pb2.UsageEvent:
    event.occurred_at.seconds, event.occurred_at.nanos = divmod(ns, 1_000_000_000)
    return event


async def test_a_future_price_waits_for_its_instant_and_the_last_nanosecond_pays_the_old(
    stub: Stub, infra: Infra, metering: MeteringWorker
) -> None:
    """One model priced 1 then 2 credits per million input tokens (switching an hour
    ago, to the second) and 3 from an hour ahead; another whose only price starts an
    hour ahead (the fallback prices it until then, flagged as unpriced)."""
    model, later = f"m-{uuid.uuid4().hex[:8]}", f"m-{uuid.uuid4().hex[:8]}"
    now = datetime.now(UTC).replace(microsecond=0)
    switch, ahead = now - timedelta(hours=1), now + timedelta(hours=1)

    def version(start: datetime, p: int) -> str:
        return (f"{{effective_from: '{start.isoformat()}', input: {p}, cached_input: 0,"
                f" output: {4 * p}}}")  # fmt: skip

    document = (
        f"models:\n  {model}: [{version(now - timedelta(days=30), 1_000_000)},"
        f" {version(switch, 2_000_000)}, {version(ahead, 3_000_000)}]\n"
        f"  {later}: [{version(ahead, 1_000_000)}]\n"
    )
    done = await stub.LoadPrices(load(document), metadata=PRICES_METADATA)
    assert any(f"{model}: new version from {ahead.isoformat()}" in c for c in done.changes)
    listed = await stub.ListPrices(prices_pb2.ListPricesRequest(models=[model, later]))
    assert [(p.model, p.input) for p in listed.prices] == [(model, 2_000_000)], (
        "in force now: the switched price, not the future one; nothing for the later model"
    )
    # 1000 in x 2 + 500 out x 8 = 6,000 micros now
    await _picked_up(infra, model, 6_000)
    user = new_user()
    edge = int(switch.timestamp()) * 1_000_000_000
    produce_usage(infra.kafka_bootstrap, [
        at_ns(usage(user, model=model), edge - 1),  # the last ns of the old price: 3,000
        at_ns(usage(user, model=model), edge),  # the switch itself: 6,000
        usage(user, model=model),  # now, an hour before the future price: 6,000
        usage(user, model=later),  # no price yet: the fallback's 15,000, flagged
    ])  # fmt: skip
    conn = await asyncpg.connect(infra.database_url)
    try:

        async def counted() -> list[tuple[str, int, int]]:
            rows = await conn.fetch(
                "SELECT model, sum(micros)::bigint AS m, sum(fallback_events)::bigint AS f"
                " FROM metering.rollups_15m WHERE user_id = $1 GROUP BY model ORDER BY model",
                user,
            )
            return [(r["model"], r["m"], r["f"]) for r in rows]

        want = sorted([(model, 3_000 + 6_000 + 6_000, 0), (later, 15_000, 1)])
        await eventually(counted, want, within=20)
    finally:
        await conn.close()


async def test_the_cli_given_bad_files_says_what_is_wrong(running: int, tmp_path: Path) -> None:
    def run(*argv: str) -> tuple[int, str]:
        out = io.StringIO()
        try:
            code = cli.main(["--addr", f"127.0.0.1:{running}", *argv], out)
        except SystemExit as exc:  # what the command line prints and exits with
            return 1, str(exc.code)
        return code, out.getvalue()

    token = ("--token", TOKENS["prices"])
    xlsx = tmp_path / "prices.xlsx"
    xlsx.write_bytes(b"PK\x03\x04\x14\x00\x06\x00\xff\xfe")
    code, said = await asyncio.to_thread(run, "prices", "load", str(xlsx), *token)
    assert (code, said) == (1, f"{xlsx}: not UTF-8 text (byte 8): save it as CSV UTF-8 or YAML")
    code, said = await asyncio.to_thread(run, "prices", "load", str(tmp_path), *token)
    assert code == 1
    assert said.startswith(f"{tmp_path}: [Errno 21] Is a directory")
    code, said = await asyncio.to_thread(run, "prices", "load", str(tmp_path / "no.yaml"), *token)
    assert code == 1
    assert "No such file or directory" in said
    # a spreadsheet's CSV UTF-8 (a byte-order mark first) loads as a dry run
    model = f"m-{uuid.uuid4().hex[:8]}"
    csv_file = tmp_path / "prices.csv"
    csv_file.write_text("\ufeffmodel,effective_from,input,cached_input,output\n"
                        f"{model},2026-01-01T00:00:00Z,1000000,100000,4000000\n",
                        encoding="utf-8")  # fmt: skip
    code, said = await asyncio.to_thread(run, "prices", "load", str(csv_file), "--dry-run", *token)
    assert (code, said.splitlines()[-1]) == (0, "dry run: 1 change(s), nothing written")
    csv_file.write_text(f"model;effective_from;input;cached_input;output\n{model};x;1;1;1\n")
    code, said = await asyncio.to_thread(run, "prices", "load", str(csv_file), *token)
    assert code == 2  # INVALID_ARGUMENT, printed to stderr with the hint
