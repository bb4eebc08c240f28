"""The walking skeleton end to end: Kafka → metering (a real worker process)
→ qm.usage.totals.v1 → policy (a real gRPC server) → Check / GetBudget."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

import pytest

from devtools.localinfra.stack import Infra
from quartermaster.telemetry import headers_dict
from quartermaster.topics import CONTENT_TYPE, ERROR_HEADER, JSON, ORIGIN_TOPIC_HEADER, Topic
from quartermaster.v1 import policy_pb2
from tests.conftest import TEST_LIMIT_CREDITS, MeteringWorker
from tests.helpers import eventually, new_user, produce, produce_usage, read_topic, usage

pytestmark = pytest.mark.infra

if TYPE_CHECKING:
    from quartermaster.v1.policy_pb2_grpc import PolicyServiceAsyncStub as Stub
ONE_CREDIT = {"model": "gpt-5", "input_tokens": 400_000, "output_tokens": 50_000}  # 1 credit
LIMIT = TEST_LIMIT_CREDITS * 1_000_000


def used_of(policy: Stub, user: str):  # type: ignore[no-untyped-def]
    async def probe() -> int:
        return (await policy.GetBudget(policy_pb2.GetBudgetRequest(user_id=user))).used_micros

    return probe


async def test_n_identical_events_count_exactly_n_times(
    infra: Infra, metering: MeteringWorker, policy: Stub
) -> None:
    user = new_user()
    n = 25
    produce_usage(infra.kafka_bootstrap, [usage(user) for _ in range(n)])
    # gpt-5: 1000 input x 1.25 micros + 500 output x 10 micros = 6,250 micros per event
    await eventually(used_of(policy, user), n * 6_250)
    budget = await policy.GetBudget(policy_pb2.GetBudgetRequest(user_id=user))
    assert (budget.used_micros, budget.limit_micros) == (n * 6_250, LIMIT)
    assert budget.remaining_micros == LIMIT - n * 6_250
    assert budget.limit_source == "workspace_default"


async def test_check_goes_from_allow_to_deny_with_exact_amounts(
    infra: Infra, metering: MeteringWorker, policy: Stub
) -> None:
    user = new_user()

    async def check(estimated: int = 0) -> policy_pb2.CheckResponse:
        req = policy_pb2.CheckRequest(
            user_id=user, product="chat", model="gpt-5", estimated_micros=estimated
        )
        return await policy.Check(req)

    first = await check()
    assert (first.decision, first.used_micros, first.remaining_micros) == (
        policy_pb2.DECISION_ALLOW,
        0,
        LIMIT,
    )
    seen = []
    for i in range(1, TEST_LIMIT_CREDITS + 1):
        produce_usage(infra.kafka_bootstrap, [usage(user, **ONE_CREDIT)])
        await eventually(used_of(policy, user), i * 1_000_000)
        resp = await check()
        seen.append(policy_pb2.Decision.Name(resp.decision))
        assert resp.used_micros == i * 1_000_000
        assert resp.remaining_micros == LIMIT - i * 1_000_000
    # 1..7 credits allow, 8 and 9 warn (80 %), 10 of 10 denies
    assert seen == ["DECISION_ALLOW"] * 7 + ["DECISION_WARN"] * 2 + ["DECISION_DENY"]
    final = await check()
    assert final.limit_micros == LIMIT
    assert "limit reached: 10.00 of 10.00 credits used" in final.reason
    assert final.period_start.ToDatetime(tzinfo=UTC) <= datetime.now(UTC)
    assert final.period_end.ToDatetime(tzinfo=UTC) > datetime.now(UTC)


async def test_an_estimate_that_would_pass_the_limit_is_denied(
    infra: Infra, metering: MeteringWorker, policy: Stub
) -> None:
    user = new_user()
    produce_usage(infra.kafka_bootstrap, [usage(user, **ONE_CREDIT) for _ in range(5)])
    await eventually(used_of(policy, user), 5_000_000)
    ok = await policy.Check(
        policy_pb2.CheckRequest(user_id=user, product="p", model="m", estimated_micros=5_000_000)
    )
    too_much = await policy.Check(
        policy_pb2.CheckRequest(user_id=user, product="p", model="m", estimated_micros=5_000_001)
    )
    # 5 of 10 used: a 5-credit call fits exactly (WARN starts at 80 % *used*)
    assert ok.decision == policy_pb2.DECISION_ALLOW
    assert too_much.decision == policy_pb2.DECISION_DENY
    assert "would pass the limit" in too_much.reason


async def test_garbage_goes_to_the_dlq_and_good_events_after_it_still_count(
    infra: Infra, metering: MeteringWorker, policy: Stub
) -> None:
    user = new_user()
    key = user.encode()
    negative = json.dumps(
        {"eventId": "neg-1", "occurredAt": "2026-11-01T00:00:00Z", "userId": user,
         "product": "chat", "model": "gpt-5", "inputTokens": -3}
    ).encode()  # fmt: skip
    bad = [
        (key, b"\x08\x96\x01garbage\xff", []),
        (key, b"{this is not json", [(CONTENT_TYPE, JSON.encode())]),
        (key, negative, [(CONTENT_TYPE, JSON.encode())]),
        (key, usage("", event_id="no-user").SerializeToString(), []),
    ]
    produce(infra.kafka_bootstrap, bad)
    produce_usage(infra.kafka_bootstrap, [usage(user) for _ in range(3)])
    await eventually(used_of(policy, user), 3 * 6_250)

    dlq = [m for m in read_topic(infra.kafka_bootstrap, Topic.USAGE_DLQ.value) if m.key() == key]
    assert sorted(m.value() or b"" for m in dlq) == sorted(v for _, v, _ in bad)
    reasons = {m.value(): headers_dict(m.headers())[ERROR_HEADER] for m in dlq}
    assert "not a UsageEvent in protobuf" in reasons[bad[0][1]]
    assert "not a UsageEvent in proto3 JSON" in reasons[bad[1][1]]
    assert "input_tokens: must not be negative" in reasons[negative]
    assert "user_id: must not be empty" in reasons[bad[3][1]]
    assert all(headers_dict(m.headers())[ORIGIN_TOPIC_HEADER] == Topic.USAGE for m in dlq)
    assert metering.alive(), "the worker must survive garbage"


async def test_json_events_from_any_producer_are_counted(
    infra: Infra, metering: MeteringWorker, policy: Stub
) -> None:
    user = new_user()
    now = datetime.now(UTC).isoformat().replace("+00:00", "Z")
    records = [
        (
            user.encode(),
            json.dumps(
                {"eventId": f"j-{user}-{i}", "occurredAt": now, "userId": user, "product": "cli",
                 "model": "gpt-5-mini", "inputTokens": "4000", "cachedInputTokens": 1000,
                 "outputTokens": 100}
            ).encode(),
            [(CONTENT_TYPE, JSON.encode())],
        )
        for i in range(2)
    ]  # fmt: skip
    produce(infra.kafka_bootstrap, records)
    # gpt-5-mini: 3000 x 0.25 + 1000 x 0.025 + 100 x 2 = 975 micros per event
    await eventually(used_of(policy, user), 2 * 975)


async def test_usage_from_last_month_does_not_count_against_this_month(
    infra: Infra, metering: MeteringWorker, policy: Stub
) -> None:
    user = new_user()
    long_ago = datetime.now(UTC) - timedelta(days=40)
    produce_usage(
        infra.kafka_bootstrap,
        [usage(user, occurred_at=long_ago, **ONE_CREDIT), usage(user)],
    )
    await eventually(used_of(policy, user), 6_250)


async def test_a_user_the_directory_does_not_know_gets_the_workspace_default(
    policy: Stub,
) -> None:
    budget = await policy.GetBudget(policy_pb2.GetBudgetRequest(user_id=new_user()))
    assert (budget.used_micros, budget.limit_micros, budget.limit_source) == (
        0,
        LIMIT,
        "workspace_default",
    )
