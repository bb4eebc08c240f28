"""The DLQ as an operator's tool (issue 12, item 5): events rejected for an unknown model
(QM_METERING_UNPRICED=reject) are listed, replayed with `cli dlq replay` after the
price is loaded, and count once, however often they are replayed. Plus the pure parts:
a DLQ record's view, the selection, and the record that replays it."""

from __future__ import annotations

import asyncio
import io
import json
import uuid
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

import pytest
from google.protobuf import json_format

from devtools.localinfra.stack import Infra
from quartermaster.topics import CONTENT_TYPE, JSON, PROTOBUF, SOURCE_HEADER
from quartermaster.v1 import policy_pb2, prices_pb2, prices_pb2_grpc
from services.metering import api, cli
from services.metering.aggregate import Reject
from services.metering.dead_letter import (
    REPLAYED_FROM_HEADER,
    Selection,
    dead_letter,
    replay_record,
    view_of,
)
from services.metering.settings import MeteringSettings
from tests.conftest import PRICES_METADATA, MeteringWorker
from tests.helpers import channel, eventually, new_user, produce, usage

if TYPE_CHECKING:
    from quartermaster.v1.policy_pb2_grpc import PolicyServiceAsyncStub as Stub
    from quartermaster.v1.prices_pb2_grpc import PriceCatalogServiceAsyncStub as PriceStub

EVENT_MICROS = 6_250  # tests.helpers.usage: gpt-5, 1000 in / 500 out


def as_view(record: tuple[str, bytes | None, bytes, list[tuple[str, str | bytes | None]]]):  # type: ignore[no-untyped-def]
    headers = {k: v if isinstance(v, bytes) else (v or "").encode() for k, v in record[3]}
    return view_of(0, 7, 1_764_460_800_000, record[1], record[2], headers)


def test_a_dlq_copy_keeps_what_replaying_it_needs() -> None:
    value = b'{"userId": "ann"}'
    record = dead_letter(Reject(3, b"ann", value, "no price for model 'x'", "gw", JSON), 2)
    view = as_view(record)
    assert (view.where, view.origin, view.source, view.content_type) == (
        "0@7", "qm.usage.v1[2]@3", "gw", JSON,
    )  # fmt: skip
    assert view.at == datetime(2025, 11, 30, tzinfo=UTC)
    topic, key, replayed, headers = replay_record(view)
    assert (topic, key, replayed) == ("qm.usage.v1", b"ann", value)
    assert headers == [
        (CONTENT_TYPE, JSON.encode()), (REPLAYED_FROM_HEADER, b"0@7"), (SOURCE_HEADER, b"gw")
    ]  # fmt: skip


def test_a_cut_copy_is_listed_but_never_replayed() -> None:
    view = as_view(dead_letter(Reject(0, None, b"x" * (600 * 1024), "too big"), 0))
    assert view.cut
    with pytest.raises(ValueError, match="0@7: the DLQ holds only the first bytes"):
        replay_record(view)


def test_a_selection_needs_every_criterion() -> None:
    view = as_view(dead_letter(Reject(3, b"k", b"v", "No price for model 'gpt-9'", "gw"), 1))
    assert Selection().matches(view)
    assert Selection(reason="no PRICE", source="gw", where=frozenset({"0@7"})).matches(view)
    assert not Selection(reason="not JSON").matches(view)
    assert not Selection(source="other").matches(view)
    assert not Selection(since=view.at + timedelta(seconds=1)).matches(view)
    assert not Selection(until=view.at).matches(view)
    assert not Selection(where=frozenset({"0@8"})).matches(view)


@pytest.fixture
def unpriced_rejected(metering: MeteringWorker) -> Iterator[None]:
    """The session's worker, restarted to reject unpriced events; as it was after."""
    metering.kill()
    metering.start(QM_METERING_UNPRICED="reject")
    try:
        yield
    finally:
        metering.kill()
        metering.start()


@pytest.fixture
async def prices(
    service_env: dict[str, str],
) -> AsyncIterator[PriceStub]:
    running = await api.start(MeteringSettings.from_env(service_env), addr="127.0.0.1:0")
    try:
        async with channel(f"127.0.0.1:{running.served.port}", "prices") as ch:
            yield prices_pb2_grpc.PriceCatalogServiceStub(ch)
    finally:
        await running.stop(1)


async def replay(why: str, *argv: str) -> tuple[int, str]:
    return await run_cli("dlq", "replay", "--by", "ann", "--reason", why, *argv)


async def run_cli(*argv: str) -> tuple[int, str]:
    """The metering CLI in a thread (it runs an event loop of its own)."""
    out = io.StringIO()
    code = await asyncio.to_thread(cli.main, list(argv), out)
    return code, out.getvalue()


@pytest.mark.infra
async def test_events_rejected_for_an_unknown_model_are_replayed_once_priced(
    infra: Infra, policy: Stub, prices: PriceStub,
    service_env: dict[str, str], unpriced_rejected: None, monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    for name, value in service_env.items():
        if name.startswith("QM_"):
            monkeypatch.setenv(name, value)
    user, model = new_user(), f"m-{uuid.uuid4().hex[:8]}"
    unknown = [usage(user, model=model) for _ in range(5)]
    records = [
        (user.encode(), json.dumps(json_format.MessageToDict(e)).encode(),
         [(CONTENT_TYPE, JSON.encode())])
        for e in unknown[:3]
    ] + [
        (user.encode(), e.SerializeToString(), [(CONTENT_TYPE, PROTOBUF.encode())])
        for e in [*unknown[3:], usage(user)]
    ]  # fmt: skip

    async def used() -> int:
        reply = await policy.GetBudget(policy_pb2.GetBudgetRequest(user_id=user))
        return reply.used_micros

    produce(infra.kafka_bootstrap, records)
    await eventually(used, EVENT_MICROS, within=60)  # the gpt-5 event; the others rejected

    async def listed() -> int:
        code, out = await run_cli("dlq", "list", "--reason-contains", model)
        assert code == 0, out
        return out.count(f"no price for model '{model}'")

    await eventually(listed, 5, within=30)
    code, out = await replay("t", "--reason-contains", model, "--dry-run")
    assert (code, out.startswith("would replay 5 record(s)")) == (0, True), out

    # 1,000,000 micro-credits per million input tokens, 4,000,000 per million output
    classes = "input: 1000000, cached_input: 0, output: 4000000"
    version = f"{{effective_from: '2020-01-01T00:00:00Z', {classes}}}"
    doc = f"models:\n  {model}:\n  - {version}\n"
    request = prices_pb2.LoadPricesRequest(
        document=doc, format=prices_pb2.CATALOG_FORMAT_YAML, source="t.yaml"
    )
    await prices.LoadPrices(request, metadata=PRICES_METADATA)
    await asyncio.sleep(1.5)  # the worker polls the catalog every 0.5 s
    code, out = await replay("priced", "--reason-contains", model)
    assert (code, out) == (0, "replayed 5 record(s) into qm.usage.v1\n")
    priced = 1_000 * 1 + 500 * 4  # micros of one event: 1000 in, 500 out
    await eventually(used, EVENT_MICROS + 5 * priced, within=60)

    code, _ = await replay("again", "--reason-contains", model)
    assert code == 2, "each was replayed before: nothing to replay"
    code, out = await replay("x", "--again", "--reason-contains", model)
    assert (code, out) == (0, "replayed 5 record(s) into qm.usage.v1\n")
    await asyncio.sleep(2)  # a second count would show by now
    assert await used() == EVENT_MICROS + 5 * priced, "replayed twice, counted once"
    code, out = await run_cli("dlq", "list", "--reason-contains", model)
    assert out.endswith("5 record(s) selected, 5 replayed before\n"), out
