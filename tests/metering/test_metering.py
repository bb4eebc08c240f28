"""metering against the real broker and Postgres: exactly once across a SIGKILL,
duplicates, late and future events, batch records, metrics, rollups and burn rate."""

from __future__ import annotations

import asyncio
import time
import uuid
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING
from zoneinfo import ZoneInfo

import asyncpg
import pytest

from devtools.localinfra.stack import Infra
from quartermaster.partitioning import partition_of
from quartermaster.periods import PeriodKind, period_of
from quartermaster.reporter import UsageReporter
from quartermaster.telemetry import headers_dict
from quartermaster.topics import CONTENT_TYPE, ERROR_HEADER, PROTOBUF, USAGE_BATCH_TYPE, Topic
from quartermaster.v1 import notifications_pb2, policy_pb2, usage_pb2
from services.metering.compaction import compact
from tests.conftest import PARTITIONS, MeteringWorker
from tests.helpers import (
    eventually,
    new_user,
    produce,
    produce_usage,
    read_topic,
    scrape,
    usage,
)

if TYPE_CHECKING:
    from quartermaster.v1.policy_pb2_grpc import PolicyServiceAsyncStub as Stub

pytestmark = pytest.mark.infra
EVENT_MICROS = 6_250  # tests.helpers.usage: gpt-5, 1000 in / 500 out
UTC_ZONE = ZoneInfo("UTC")


def used_of(policy: Stub, user: str):  # type: ignore[no-untyped-def]
    async def probe() -> int:
        return (await policy.GetBudget(policy_pb2.GetBudgetRequest(user_id=user))).used_micros

    return probe


async def db_total(infra: Infra, user: str, kind: str, key: str) -> int | None:
    conn = await asyncpg.connect(infra.database_url)
    try:
        value: int | None = await conn.fetchval(
            "SELECT used_micros FROM metering.totals WHERE subject_kind = 'user'"
            " AND subject_id = $1 AND period_kind = $2 AND period_key = $3",
            user,
            kind,
            key,
        )
        return value
    finally:
        await conn.close()


async def counting_now(infra: Infra, policy: Stub) -> None:
    """Return once the session's worker counts (its consumer group joined): a worker
    still joining would find a whole kill test's stream waiting and count it in one
    batch, and the kill could not land mid-stream."""
    user = new_user()
    produce_usage(infra.kafka_bootstrap, [usage(user)])
    await eventually(used_of(policy, user), EVENT_MICROS, within=60)


@pytest.mark.parametrize("batched", [False, True], ids=["event-records", "usage-batches"])
async def test_sigkill_mid_stream_loses_nothing_and_counts_nothing_twice(
    infra: Infra, metering: MeteringWorker, policy: Stub, batched: bool
) -> None:
    users = [new_user() for _ in range(6)]  # spread over the partitions
    per_user, chunks = 400, 20

    def producer() -> None:
        # 20 chunks x 6 users x 20 events, one chunk every 0.1 s: about 2 s of traffic,
        # one event a record, or UsageBatch records of up to 20 (what busy reporters send)
        reporter = UsageReporter(infra.kafka_bootstrap, batch_max=20) if batched else None
        for _ in range(chunks):
            events = [usage(u) for u in users for _ in range(per_user // chunks)]
            if reporter is None:
                produce_usage(infra.kafka_bootstrap, events)
            else:
                for e in events:
                    reporter.report(e)
                assert reporter.flush(30) == 0
            time.sleep(0.1)
        if reporter is not None:
            reporter.close()

    await counting_now(infra, policy)
    await metering.kill_mid_stream(producer, used_of(policy, users[0]), per_user * EVENT_MICROS)
    for u in users:
        await eventually(used_of(policy, u), per_user * EVENT_MICROS, within=90)
    await asyncio.sleep(2)  # anything counted twice would show by now
    month = period_of(PeriodKind.MONTH, datetime.now(UTC), UTC_ZONE).key
    for u in users:
        assert await used_of(policy, u)() == per_user * EVENT_MICROS
        assert await db_total(infra, u, "month", month) == per_user * EVENT_MICROS


async def test_an_event_id_sent_again_counts_once(
    infra: Infra, metering: MeteringWorker, policy: Stub
) -> None:
    user = new_user()
    event = usage(user)
    produce_usage(infra.kafka_bootstrap, [event] * 5 + [usage(user)])
    await eventually(used_of(policy, user), 2 * EVENT_MICROS)
    produce_usage(infra.kafka_bootstrap, [event, usage(user)])  # later, again
    await eventually(used_of(policy, user), 3 * EVENT_MICROS)
    await asyncio.sleep(1)
    assert await used_of(policy, user)() == 3 * EVENT_MICROS


async def test_a_late_event_counts_in_the_period_it_occurred_in(
    infra: Infra, metering: MeteringWorker, policy: Stub
) -> None:
    user = new_user()
    now = datetime.now(UTC)
    last_month = period_of(PeriodKind.MONTH, now, UTC_ZONE).start - timedelta(hours=1)
    produce_usage(infra.kafka_bootstrap, [usage(user, occurred_at=last_month), usage(user)])
    await eventually(used_of(policy, user), EVENT_MICROS)  # this month: only the current one
    old_key = period_of(PeriodKind.MONTH, last_month, UTC_ZONE).key
    old_day = period_of(PeriodKind.DAY, last_month, UTC_ZONE).key
    # Totals are published inside the transaction, before its COMMIT: policy can show
    # one an instant before PostgreSQL does.
    await eventually(lambda: db_total(infra, user, "month", old_key), EVENT_MICROS)
    await eventually(lambda: db_total(infra, user, "day", old_day), EVENT_MICROS)


async def test_future_and_too_old_events_go_to_the_dlq(
    infra: Infra, metering: MeteringWorker, policy: Stub
) -> None:
    user = new_user()
    now = datetime.now(UTC)
    future = usage(user, occurred_at=now + timedelta(minutes=10))
    ancient = usage(user, occurred_at=now - timedelta(days=60))
    produce_usage(infra.kafka_bootstrap, [future, ancient, usage(user)])
    await eventually(used_of(policy, user), EVENT_MICROS)
    dlq = {
        m.value(): headers_dict(m.headers())[ERROR_HEADER]
        for m in read_topic(infra.kafka_bootstrap, Topic.USAGE_DLQ.value)
        if m.key() == user.encode()
    }
    assert "more than 5 minutes in the future" in dlq[future.SerializeToString()]
    assert "older than the 35-day horizon" in dlq[ancient.SerializeToString()]


async def test_batch_records_count_every_event_and_reject_bad_ones_alone(
    infra: Infra, metering: MeteringWorker, policy: Stub
) -> None:
    users = [new_user() for _ in range(30)]
    by_partition: dict[int, list[str]] = {}
    for u in users:
        by_partition.setdefault(partition_of(u, PARTITIONS), []).append(u)
    records = []
    for members in by_partition.values():
        events = [usage(u) for u in members for _ in range(10)]
        events.append(usage(members[0], input_tokens=-1))  # one bad event
        batch = usage_pb2.UsageBatch(events=events)
        headers = [(CONTENT_TYPE, f"{PROTOBUF}; type={USAGE_BATCH_TYPE}".encode())]
        records.append((members[0].encode(), batch.SerializeToString(), headers))
    produce(infra.kafka_bootstrap, records)
    for u in users:
        await eventually(used_of(policy, u), 10 * EVENT_MICROS)


async def test_unknown_models_and_duplicates_show_in_the_workers_metrics(
    infra: Infra, metering: MeteringWorker, policy: Stub
) -> None:
    addr = metering.env["QM_METERING_METRICS_ADDR"]

    async def metric(name: str, **labels: str) -> float:
        deadline = time.monotonic() + 60  # a worker just (re)started serves them soon
        while True:
            try:
                return await asyncio.to_thread(scrape, addr, name, **labels) or 0.0
            except OSError:
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.2)

    model, user = f"mystery-{uuid.uuid4().hex[:8]}", new_user()
    twice = usage(user, model=model)
    cut = usage(user, model=model, ending=usage_pb2.CallEnding.CALL_ENDING_CUT_OFF)
    duplicates_before = await metric("qm_metering_events_total", outcome="duplicate")
    cut_before = await metric("qm_metering_call_endings_total", ending="cut_off")
    produce_usage(infra.kafka_bootstrap, [twice, usage(user, model=model), twice, cut])
    await eventually(used_of(policy, user), 3 * 15_000)  # three counted, at the fallback price
    # recorded after the commit, which follows the published total
    unpriced = lambda: metric("qm_metering_unpriced_events_total", model=model)  # noqa: E731
    await eventually(unpriced, 3.0, within=10)

    async def cut_off() -> bool:  # the partial call shows by its ending (issue 13, item 3)
        return await metric("qm_metering_call_endings_total", ending="cut_off") > cut_before

    await eventually(cut_off, True, within=10)
    assert await metric("qm_metering_call_endings_total", ending="completed") >= 2

    async def duplicated() -> bool:  # other tests' duplicates may land too
        return await metric("qm_metering_events_total", outcome="duplicate") > duplicates_before

    await eventually(duplicated, True, within=10)


async def test_hourly_rollups_land_in_postgres_exactly(
    infra: Infra, metering: MeteringWorker, policy: Stub
) -> None:
    user = new_user()
    events = [usage(user, cached_input_tokens=200) for _ in range(4)]
    for e in events[:3]:
        e.attributes["cost_center"] = "CC-42"
    events[3].cache_write_input_tokens = 300  # priced like input in this catalog
    events.append(usage(user, model="mystery-model-9"))  # priced by the fallback, flagged
    produce_usage(infra.kafka_bootstrap, events)
    # gpt-5 with 200 cached: 800 x 1.25 + 200 x 0.125 + 500 x 10 = 6,025 micros;
    # fallback: 1000 x 5 + 500 x 20 = 15,000 micros
    await eventually(used_of(policy, user), 4 * 6_025 + 15_000)
    conn = await asyncpg.connect(infra.database_url)
    try:

        async def hourly() -> list[tuple[object, ...]]:
            rows = await conn.fetch(
                "SELECT product, model, cost_center, input_tokens, cached_input_tokens,"
                " cache_write_tokens, output_tokens, micros, events, fallback_events"
                " FROM metering.rollups_hourly"
                " WHERE user_id = $1 ORDER BY model, cost_center",
                user,
            )
            return [tuple(r) for r in rows]

        # Metering publishes a batch's totals before it commits the batch (rollups
        # included) to Postgres: policy may see the total a moment before the rows land.
        await eventually(hourly, [
            ("chat", "gpt-5", "", 1000, 200, 300, 500, 6_025, 1, 0),
            ("chat", "gpt-5", "CC-42", 3000, 600, 0, 1500, 3 * 6_025, 3, 0),
            ("chat", "mystery-model-9", "", 1000, 0, 0, 500, 15_000, 1, 1),
        ], within=10)  # fmt: skip
        pool = await asyncpg.create_pool(infra.database_url)
        try:  # what the Cost API does every QM_USAGE_COMPACT_SECONDS
            assert await compact(pool, UTC_ZONE)
        finally:
            await pool.close()
        daily = await conn.fetch(
            "SELECT model, cost_center, micros, events FROM metering.rollups_daily"
            " WHERE user_id = $1 ORDER BY model, cost_center",
            user,
        )
    finally:
        await conn.close()
    assert [tuple(r) for r in daily] == [
        ("gpt-5", "", 6_025, 1),
        ("gpt-5", "CC-42", 3 * 6_025, 3),
        ("mystery-model-9", "", 15_000, 1),
    ]


async def test_a_runaway_user_gets_one_burn_rate_intent(
    infra: Infra, metering: MeteringWorker, policy: Stub
) -> None:
    user = new_user()
    one_credit = {"model": "gpt-5", "input_tokens": 400_000, "output_tokens": 50_000}
    # 12 credits in a minute: 72 credits an hour, past the absolute 50
    produce_usage(infra.kafka_bootstrap, [usage(user, **one_credit) for _ in range(12)])
    await eventually(used_of(policy, user), 12_000_000)
    produce_usage(infra.kafka_bootstrap, [usage(user, **one_credit) for _ in range(3)])
    await eventually(used_of(policy, user), 15_000_000)
    await asyncio.sleep(1)
    notes = []
    for m in read_topic(infra.kafka_bootstrap, Topic.NOTIFICATIONS.value):
        if m.key() == user.encode():
            n = notifications_pb2.Notification()
            n.ParseFromString(m.value() or b"")
            # (policy announces the budget thresholds this spend crosses, too)
            if n.kind == notifications_pb2.NOTIFICATION_KIND_ANOMALY:
                notes.append(n)
    assert len(notes) == 1, "one intent per episode"
    note = notes[0]
    assert note.recipient_user_id == user
    assert note.dedupe_key.startswith(f"anomaly:user:{user}:")
    assert "credits/hour" in note.subject
