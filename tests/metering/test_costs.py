"""The Cost API (UsageService) and its CLI against Postgres rollups."""

from __future__ import annotations

import asyncio
import io
import json
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import asyncpg
import grpc
import pytest

from devtools.localinfra import free_port
from devtools.localinfra.stack import Infra
from quartermaster.v1 import cost_pb2, cost_pb2_grpc, policy_pb2
from quartermaster.wire import from_timestamp, timestamp
from services.metering import api, cli
from services.metering.settings import MeteringSettings
from tests.conftest import ADMIN_METADATA, MeteringWorker, Replicas
from tests.helpers import TOKENS, channel, eventually, new_user, produce_usage, usage

pytestmark = pytest.mark.infra
T0 = datetime(2026, 10, 31, 14, tzinfo=UTC)  # 23:00 in Tokyo: the day flips an hour later


@pytest.fixture
async def seeded(infra: Infra) -> str:
    """A product name unique to this test, with rollups for three users over 3 hours."""
    product = f"cost-test-{uuid.uuid4().hex[:8]}"
    rows = [
        # hour, user, model, cost center, input, cached, output, reasoning, micros, events
        (T0, "ann", "gpt-5", "R&D", 1000, 100, 500, 0, 6_000, 2),
        (T0, "ben", "gpt-5", "Sales", 500, 0, 100, 0, 2_000, 1),
        (T0 + timedelta(hours=1), "ann", "o3", "R&D", 2000, 0, 800, 400, 10_000, 3),
        (T0 + timedelta(hours=2), "cat", "gpt-5", "", 100, 0, 10, 0, 500, 1),
    ]
    conn = await asyncpg.connect(infra.database_url)
    try:
        await conn.executemany(
            """
            INSERT INTO metering.rollups_15m (bucket, user_id, product, model, cost_center,
                workspace_id, partition, input_tokens, cached_input_tokens, output_tokens,
                reasoning_tokens, micros, events, fallback_events)
            VALUES ($1, $2, $3, $4, $5, 'ws', 0, $6, $7, $8, $9, $10, $11, 0)
            """,
            [(h, u, product, m, c, i, ci, o, r, mi, e) for h, u, m, c, i, ci, o, r, mi, e in rows],
        )
        # the daily rollups metering writes beside them, for a workspace in Tokyo
        await conn.execute(
            """
            INSERT INTO metering.rollups_daily (day, user_id, product, model, cost_center,
                workspace_id, partition, input_tokens, cached_input_tokens, output_tokens,
                reasoning_tokens, micros, events, fallback_events)
            SELECT date_trunc('day', bucket AT TIME ZONE 'Asia/Tokyo') AT TIME ZONE 'Asia/Tokyo',
                user_id, product, model, cost_center, 'ws', 0, sum(input_tokens),
                sum(cached_input_tokens), sum(output_tokens), sum(reasoning_tokens),
                sum(micros), sum(events), sum(fallback_events)
            FROM metering.rollups_15m WHERE product = $1 GROUP BY 1, 2, 3, 4, 5
            """,
            product,
        )
    finally:
        await conn.close()
    return product


@pytest.fixture
async def stub(
    infra: Infra, service_env: dict[str, str]
) -> AsyncIterator[cost_pb2_grpc.UsageServiceAsyncStub]:
    settings = MeteringSettings.from_env({**service_env, "QM_WORKSPACE_TIMEZONE": "Asia/Tokyo"})
    running = await api.start(settings, addr="127.0.0.1:0")
    try:
        async with channel(f"127.0.0.1:{running.served.port}", "reader") as ch:
            yield cost_pb2_grpc.UsageServiceStub(ch)
    finally:
        await running.stop(1)


def window(product: str, cost_centers: tuple[str, ...] = ()) -> cost_pb2.UsageFilter:
    # 23:00 Oct 31 to 00:00 Nov 2 in Tokyo: one hour from the hourly rollups, the
    # whole day of Nov 1 from the daily ones
    return cost_pb2.UsageFilter(
        start=timestamp(T0),
        end=timestamp(T0 + timedelta(hours=25)),
        products=[product],
        cost_centers=cost_centers,
    )


async def test_group_by_user_per_day_in_the_workspace_time_zone(
    stub: cost_pb2_grpc.UsageServiceAsyncStub, seeded: str
) -> None:
    resp = await stub.QueryUsage(
        cost_pb2.QueryUsageRequest(
            filter=window(seeded),
            group_by=[cost_pb2.DIMENSION_USER],
            granularity=cost_pb2.GRANULARITY_DAY,
        )
    )
    got = [(from_timestamp(r.bucket_start), r.user_id, r.micros, r.events) for r in resp.rows]
    oct31 = datetime(2026, 10, 30, 15, tzinfo=UTC)  # Tokyo midnight, Oct 31
    nov1 = datetime(2026, 10, 31, 15, tzinfo=UTC)
    assert got == [
        (oct31, "ann", 6_000, 2),
        (oct31, "ben", 2_000, 1),
        (nov1, "ann", 10_000, 3),
        (nov1, "cat", 500, 1),
    ]
    assert not resp.truncated


async def test_totals_by_model_with_tokens_by_class_and_filters(
    stub: cost_pb2_grpc.UsageServiceAsyncStub, seeded: str
) -> None:
    resp = await stub.QueryUsage(
        cost_pb2.QueryUsageRequest(
            filter=window(seeded, cost_centers=("R&D",)),
            group_by=[cost_pb2.DIMENSION_MODEL],
            granularity=cost_pb2.GRANULARITY_TOTAL,
        )
    )
    got = {r.model: (r.input_tokens, r.cached_input_tokens, r.output_tokens,
                     r.reasoning_tokens, r.micros) for r in resp.rows}  # fmt: skip
    assert got == {"o3": (2000, 0, 800, 400, 10_000), "gpt-5": (1000, 100, 500, 0, 6_000)}
    assert not resp.rows[0].HasField("bucket_start")


async def test_limit_cuts_and_says_so(
    stub: cost_pb2_grpc.UsageServiceAsyncStub, seeded: str
) -> None:
    resp = await stub.QueryUsage(
        cost_pb2.QueryUsageRequest(
            filter=window(seeded), group_by=[cost_pb2.DIMENSION_USER],
            granularity=cost_pb2.GRANULARITY_HOUR, limit=2,
        )
    )  # fmt: skip
    assert (len(resp.rows), resp.truncated) == (2, True)


async def test_top_spenders(stub: cost_pb2_grpc.UsageServiceAsyncStub, seeded: str) -> None:
    resp = await stub.TopSpenders(cost_pb2.TopSpendersRequest(filter=window(seeded), limit=2))
    assert [(s.user_id, s.micros, s.events) for s in resp.spenders] == [
        ("ann", 16_000, 5),
        ("ben", 2_000, 1),
    ]


async def test_bad_queries_name_every_field(stub: cost_pb2_grpc.UsageServiceAsyncStub) -> None:
    req = cost_pb2.QueryUsageRequest(
        filter=cost_pb2.UsageFilter(
            start=timestamp(T0), end=timestamp(T0 - timedelta(hours=1)), models=[" "]
        ),
        group_by=[cost_pb2.DIMENSION_USER, cost_pb2.DIMENSION_USER],
        limit=-1,
    )
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stub.QueryUsage(req)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert info.value.details() == (
        "filter.end: must be after filter.start; filter.models: empty values are not allowed; "
        "group_by[1]: DIMENSION_USER twice; granularity: must be HOUR, DAY, MONTH or TOTAL; "
        "limit: must be between 0 and 100000"
    )
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stub.TopSpenders(cost_pb2.TopSpendersRequest())
    assert info.value.details() == "filter.start: must be set; filter.end: must be set"


async def test_the_cli_writes_csv_for_finance(
    infra: Infra, service_env: dict[str, str], seeded: str
) -> None:
    settings = MeteringSettings.from_env(service_env)
    running = await api.start(settings, addr="127.0.0.1:0")
    try:
        out = io.StringIO()
        argv = ["--addr", f"127.0.0.1:{running.served.port}", "usage",
                "--from", "2026-10-31T14:00:00Z", "--to", "2026-11-01T14:00:00Z",
                "--product", seeded, "--group-by", "user,model", "--granularity", "total",
                "--format", "csv", "--token", TOKENS["reader"]]  # fmt: skip
        # the CLI is synchronous; run it off the loop that serves the API
        code = await asyncio.to_thread(cli.main, argv, out)
        table = io.StringIO()
        assert await asyncio.to_thread(cli.main, argv[:-4] + argv[-2:], table) == 0
    finally:
        await running.stop(1)
    # A person's table of one bucket has no bucket_start column (it would be empty).
    assert table.getvalue().splitlines()[0].split()[:4] == ["user", "model", "credits", "micros"]
    assert code == 0
    lines = out.getvalue().splitlines()
    assert lines[0] == (
        "bucket_start,user,model,credits,micros,input_tokens,cached_input_tokens,"
        "cache_write_tokens,output_tokens,reasoning_tokens,events,fallback_events,"
        "cache_write_1h_tokens,audio_input_tokens,audio_output_tokens"  # new ones last
    )
    assert lines[1] == ",ann,o3,0.01,10000,2000,0,0,800,400,3,0,0,0,0"
    assert len(lines) == 5


GROUPS = {
    "groups": [
        {"group_id": "eng", "kind": "department"},
        {"group_id": "ml", "kind": "team", "parent_id": "eng"},
        {"group_id": "sales", "kind": "department"},
    ],
    "users": [
        {"user_id": "ann", "groups": ["eng"]},
        {"user_id": "ben", "groups": ["sales"]},
        {"user_id": "cat", "groups": ["ml"]},  # in eng through ml
    ],
}


async def test_groups_filter_and_group_spend_with_their_members_now(
    service_env: dict[str, str], seeded: str, replicas: Replicas
) -> None:
    [policy] = await replicas.start(1)
    await replicas.admin(policy).ImportDirectory(
        policy_pb2.ImportDirectoryRequest(format="json", document=json.dumps(GROUPS).encode()),
        metadata=ADMIN_METADATA,
    )
    env = {**service_env, "QM_WORKSPACE_TIMEZONE": "Asia/Tokyo",
           "QM_DIRECTORY_ADDR": f"127.0.0.1:{policy.port}"}  # fmt: skip
    running = await api.start(MeteringSettings.from_env(env), addr="127.0.0.1:0")
    total = cost_pb2.GRANULARITY_TOTAL
    try:
        async with channel(f"127.0.0.1:{running.served.port}", "reader") as ch:
            stub = cost_pb2_grpc.UsageServiceStub(ch)
            f = window(seeded)
            f.group_ids.append("eng")
            eng = await stub.QueryUsage(cost_pb2.QueryUsageRequest(
                filter=f, group_by=[cost_pb2.DIMENSION_USER], granularity=total))  # fmt: skip
            assert [(r.user_id, r.micros) for r in eng.rows] == [("ann", 16_000), ("cat", 500)]

            by_group = await stub.QueryUsage(cost_pb2.QueryUsageRequest(
                filter=window(seeded), group_by=[cost_pb2.DIMENSION_GROUP],
                granularity=total))  # fmt: skip
            # cat counts in ml and in eng (ml's parent): each group's own total
            got = {r.group_id: (r.micros, r.events) for r in by_group.rows}
            assert got == {"eng": (16_500, 6), "sales": (2_000, 1), "ml": (500, 1)}

            f = window(seeded)
            f.group_ids.append("sales")
            top = await stub.TopSpenders(cost_pb2.TopSpendersRequest(filter=f))
            assert [(s.user_id, s.micros) for s in top.spenders] == [("ben", 2_000)]

            f.group_ids.append("nope")
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await stub.TopSpenders(cost_pb2.TopSpendersRequest(filter=f))
            assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert info.value.details() == "filter.group_ids: no group(s) ['nope']"
    finally:
        await running.stop(1)

    # policy gone: a group query says where it looked; other queries still answer
    env["QM_DIRECTORY_ADDR"] = f"127.0.0.1:{free_port()}"
    running = await api.start(MeteringSettings.from_env(env), addr="127.0.0.1:0")
    try:
        async with channel(f"127.0.0.1:{running.served.port}", "reader") as ch:
            stub = cost_pb2_grpc.UsageServiceStub(ch)
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await stub.QueryUsage(cost_pb2.QueryUsageRequest(
                    filter=window(seeded), group_by=[cost_pb2.DIMENSION_GROUP],
                    granularity=total))  # fmt: skip
            assert info.value.code() == grpc.StatusCode.UNAVAILABLE
            assert "DirectoryService at 127.0.0.1:" in str(info.value.details())
            assert "(QM_DIRECTORY_ADDR)" in str(info.value.details())
            plain = await stub.TopSpenders(cost_pb2.TopSpendersRequest(filter=window(seeded)))
            assert [s.user_id for s in plain.spenders] == ["ann", "ben", "cat"]
    finally:
        await running.stop(1)


async def test_models_group_by_the_catalog_model_and_the_reported_id_is_kept(
    infra: Infra, stub: cost_pb2_grpc.UsageServiceAsyncStub
) -> None:
    """Issue 13, item 1: gpt-5, its dated snapshot and a routed id are one `model` row,
    gpt-5, with their money summed before it is rounded; the reported ids stay apart as
    `model_id`; a filter on gpt-5 finds all of them. (Catalog aliases resolve the same
    way, through PriceCatalog.resolve; the session's catalog in force may predate one.)"""
    product = f"cost-test-{uuid.uuid4().hex[:8]}"
    ids = ["gpt-5", "gpt-5-2025-08-07", "openai/gpt-5", "o3-2025-04-16", "mystery-model"]
    conn = await asyncpg.connect(infra.database_url)
    try:
        for i, model in enumerate(ids):  # 1,000.4 micros each: the 0.4s add up
            await conn.execute(
                """
                INSERT INTO metering.rollups_15m (bucket, user_id, product, model, cost_center,
                    workspace_id, partition, input_tokens, cached_input_tokens, output_tokens,
                    reasoning_tokens, micros, picos_remainder, events, fallback_events)
                VALUES ($1, 'ann', $2, $3, '', 'ws', 0, $4, 0, 0, 0, 1000, 400000, 1, 0)
                """,
                T0 + timedelta(minutes=15 * i), product, model, 100 + i,
            )  # fmt: skip
        # what the counting store writes beside the rollups of a new id
        await conn.executemany(
            "INSERT INTO metering.model_ids (model) VALUES ($1) ON CONFLICT DO NOTHING",
            [(m,) for m in ids],
        )
    finally:
        await conn.close()
    f = cost_pb2.UsageFilter(start=timestamp(T0), end=timestamp(T0 + timedelta(hours=2)),
                             products=[product])  # fmt: skip

    async def rows(
        by: list[cost_pb2.Dimension.ValueType], models: tuple[str, ...] = ()
    ) -> list[cost_pb2.UsageRow]:
        g = cost_pb2.UsageFilter()
        g.CopyFrom(f)
        g.models.extend(models)
        request = cost_pb2.QueryUsageRequest(filter=g, group_by=by,
                                             granularity=cost_pb2.GRANULARITY_TOTAL)  # fmt: skip
        return list((await stub.QueryUsage(request)).rows)

    by_model = {r.model: (r.input_tokens, r.micros, r.events)
                for r in await rows([cost_pb2.DIMENSION_MODEL])}  # fmt: skip
    # 3 x 1,000.4 = 3,001.2 -> 3,001 for gpt-5; the three rows share 5,002 (5 x 1,000.4)
    assert by_model == {"gpt-5": (100 + 101 + 102, 3_001, 3), "o3": (103, 1_000, 1),
                        "mystery-model": (104, 1_001, 1)}  # fmt: skip
    by_id = {(r.model_id, r.model) for r in await rows([cost_pb2.DIMENSION_MODEL_ID])}
    assert by_id == {(m, "") for m in ids}
    both = await rows([cost_pb2.DIMENSION_MODEL, cost_pb2.DIMENSION_MODEL_ID])
    assert {(r.model, r.model_id) for r in both} == {
        ("gpt-5", "gpt-5"), ("gpt-5", "gpt-5-2025-08-07"), ("gpt-5", "openai/gpt-5"),
        ("o3", "o3-2025-04-16"), ("mystery-model", "mystery-model"),
    }  # fmt: skip
    only = await rows([cost_pb2.DIMENSION_MODEL_ID], models=("gpt-5",))
    assert sorted(r.model_id for r in only) == sorted(ids[:3])
    exact = await rows([cost_pb2.DIMENSION_MODEL_ID], models=("openai/gpt-5",))
    assert [r.model_id for r in exact] == ["openai/gpt-5"]
    by_user = await rows([cost_pb2.DIMENSION_USER, cost_pb2.DIMENSION_MODEL])
    assert sum(r.micros for r in by_user) == 5_002  # ann's exact 5,002, rounded once


async def test_the_counting_worker_records_each_reported_model_id(
    infra: Infra, metering: MeteringWorker
) -> None:
    model = f"gpt-5-{uuid.uuid4().hex[:6]}-routed"
    produce_usage(infra.kafka_bootstrap, [usage(new_user(), model=model)])

    async def recorded() -> bool:
        conn = await asyncpg.connect(infra.database_url)
        try:
            found = await conn.fetchval("SELECT 1 FROM metering.model_ids WHERE model = $1", model)
        finally:
            await conn.close()
        return bool(found == 1)

    await eventually(recorded, True, within=120)
