"""The newer token classes in the Cost API (issue 13, item 2): one-hour cache writes
and audio input/output reach QueryUsage rows and TopSpenders beside the older token
columns, with the counts reported, and every answer's money still sums to GetBudget.

The real metering worker, policy server and Cost API process, on the session's
PostgreSQL and broker.
"""

from __future__ import annotations

from datetime import UTC, datetime
from zoneinfo import ZoneInfo

import pytest

from devtools.localinfra.stack import Infra
from quartermaster.periods import PeriodKind, period_of
from quartermaster.v1 import cost_pb2, cost_pb2_grpc, policy_pb2, policy_pb2_grpc
from quartermaster.v1.usage_pb2 import ServiceTier
from quartermaster.wire import timestamp
from services.metering import api
from services.metering.settings import MeteringSettings
from tests.conftest import MeteringWorker
from tests.helpers import channel as credentialed_channel
from tests.helpers import eventually, new_user, produce_usage, usage

pytestmark = pytest.mark.infra

TOKEN_FIELDS = (
    "input_tokens", "cached_input_tokens", "cache_write_tokens", "cache_write_1h_tokens",
    "output_tokens", "reasoning_tokens", "audio_input_tokens", "audio_output_tokens",
)  # fmt: skip


def tokens(msg: cost_pb2.UsageRow | cost_pb2.Spender) -> dict[str, int]:
    return {f: getattr(msg, f) for f in TOKEN_FIELDS if getattr(msg, f)}


async def test_one_hour_writes_and_audio_show_in_every_answer_beside_the_budget(
    infra: Infra,
    service_env: dict[str, str],
    metering: MeteringWorker,
    policy: policy_pb2_grpc.PolicyServiceAsyncStub,
) -> None:
    ann, bob = new_user(), new_user()
    events = [
        # issue 13's case: 5,424 one-hour writes + 3 in + 100 out = 34,053 micros
        usage(ann, model="claude-sonnet-4-5", input_tokens=5_427, cache_write_input_tokens=5_424,
              cache_write_1h_input_tokens=5_424, output_tokens=100),
        # 1,000 audio in x 32 + 50 text out x 10 + 150 audio out x 64 = 42,100 micros
        usage(ann, model="gpt-audio", input_tokens=1_000, audio_input_tokens=1_000,
              output_tokens=200, audio_output_tokens=150),
        # a dated id of gpt-audio, some of its writes 5-minute ones, on no tier it lists:
        # 400 text in x 2.5 + 100 audio in x 32 + 30 audio out x 64 = 6,120 micros
        usage(bob, model="gpt-audio-2025-08-28", input_tokens=500, audio_input_tokens=100,
              output_tokens=30, audio_output_tokens=30, service_tier=ServiceTier.SERVICE_TIER_FLEX),
        # 2,000 in of which 1,000 written (600 for an hour) + 10 out on claude-sonnet-4-5:
        # 1,000 x 3 + 400 x 3.75 + 600 x 6 + 10 x 15 = 8,250 micros
        usage(bob, model="claude-sonnet-4-5", input_tokens=2_000, cache_write_input_tokens=1_000,
              cache_write_1h_input_tokens=600, output_tokens=10),
    ]  # fmt: skip
    want_micros = {ann: 34_053 + 42_100, bob: 6_120 + 8_250}
    want_tokens = {
        ann: {"input_tokens": 6_427, "cache_write_tokens": 5_424,
              "cache_write_1h_tokens": 5_424, "output_tokens": 300, "audio_input_tokens": 1_000,
              "audio_output_tokens": 150},
        bob: {"input_tokens": 2_500, "cache_write_tokens": 1_000, "cache_write_1h_tokens": 600,
              "output_tokens": 40, "audio_input_tokens": 100, "audio_output_tokens": 30},
    }  # fmt: skip
    produce_usage(infra.kafka_bootstrap, events)

    async def budget(user: str) -> int:
        got = await policy.GetBudget(policy_pb2.GetBudgetRequest(user_id=user))
        return int(got.used_micros)

    await eventually(lambda: budget(ann), want_micros[ann])
    await eventually(lambda: budget(bob), want_micros[bob])

    month = period_of(PeriodKind.MONTH, datetime.now(UTC), ZoneInfo("UTC"))
    window = cost_pb2.UsageFilter(
        start=timestamp(month.start), end=timestamp(month.end), user_ids=[ann, bob]
    )
    running = await api.start(MeteringSettings.from_env(service_env), addr="127.0.0.1:0")
    try:
        async with credentialed_channel(f"127.0.0.1:{running.served.port}") as ch:
            stub = cost_pb2_grpc.UsageServiceStub(ch)
            by_user = await stub.QueryUsage(cost_pb2.QueryUsageRequest(
                filter=window, group_by=[cost_pb2.DIMENSION_USER],
                granularity=cost_pb2.GRANULARITY_TOTAL))  # fmt: skip
            assert {r.user_id: tokens(r) for r in by_user.rows} == want_tokens
            assert {r.user_id: r.micros for r in by_user.rows} == want_micros
            by_model = await stub.QueryUsage(cost_pb2.QueryUsageRequest(
                filter=window, group_by=[cost_pb2.DIMENSION_MODEL],
                granularity=cost_pb2.GRANULARITY_DAY))  # fmt: skip
            models = {r.model: tokens(r) for r in by_model.rows}
            # the dated id sums into its catalog model's row
            assert models["gpt-audio"] == {"input_tokens": 1_500, "output_tokens": 230,
                                           "audio_input_tokens": 1_100,
                                           "audio_output_tokens": 180}  # fmt: skip
            assert models["claude-sonnet-4-5"] == {
                "input_tokens": 7_427, "cache_write_tokens": 6_424,
                "cache_write_1h_tokens": 6_024, "output_tokens": 110,
            }  # fmt: skip
            assert sum(r.micros for r in by_model.rows) == sum(want_micros.values())
            top = await stub.TopSpenders(cost_pb2.TopSpendersRequest(filter=window))
            assert [(s.user_id, s.micros, tokens(s)) for s in top.spenders] == [
                (ann, want_micros[ann], want_tokens[ann]),
                (bob, want_micros[bob], want_tokens[bob]),
            ]
    finally:
        await running.stop(1)
