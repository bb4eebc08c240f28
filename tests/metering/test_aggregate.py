"""The metering arithmetic without I/O: replay, dedupe, periods, partitions, DLQ limit."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

from quartermaster.partitioning import partition_of
from quartermaster.topics import CONTENT_TYPE, PROTOBUF, SOURCE_HEADER, USAGE_BATCH_TYPE
from quartermaster.v1.usage_pb2 import CallEnding, ServiceTier, UsageBatch
from services.metering.aggregate import Meter, Record
from services.metering.pricing import PriceCatalog
from services.metering.processor import FORWARD_PER_RECORD, forward_records
from services.metering.settings import DEFAULT_PRICES
from services.metering.state import QUARTER, ROLLUP_COUNTERS, PartitionState, Rollup, id_hash
from tests.helpers import usage

NOW = datetime(2026, 11, 22, 12, tzinfo=UTC)
PARTITIONS = 3
HDR = {CONTENT_TYPE: PROTOBUF}


def meter(now: datetime = NOW) -> Meter:
    return Meter(
        PriceCatalog.from_file(DEFAULT_PRICES), ZoneInfo("UTC"), PARTITIONS, "ws",
        max_age=timedelta(days=35), dedupe_window=timedelta(hours=24), clock=lambda: now,
    )  # fmt: skip


def user_in(partition: int) -> str:
    return next(f"u{i}" for i in range(1000) if partition_of(f"u{i}", PARTITIONS) == partition)


def records(
    partition: int,
    events: list[bytes],
    first_offset: int = 0,
    headers: dict[str, str] | None = None,
) -> list[Record]:
    hdr = {**HDR, **(headers or {})}
    return [Record(partition, first_offset + i, b"k", v, hdr) for i, v in enumerate(events)]


def run(m: Meter, state: PartitionState, recs: list[Record]) -> dict[tuple[str, str, str], int]:
    plan = m.plan(state, recs)
    changed = m.fold(state, plan)
    m.apply(state, plan, changed)
    return {k: v.used_micros for k, v in changed.items()}


def test_one_event_counts_in_its_day_week_and_month() -> None:
    m, u = meter(), user_in(0)
    state = PartitionState(0, 0)
    changed = run(m, state, records(0, [usage(u, occurred_at=NOW).SerializeToString()]))
    assert changed == {(u, "day", "2026-11-22"): 6250, (u, "week", "2026-W47"): 6250,
                       (u, "month", "2026-11"): 6250}  # fmt: skip
    assert state.next_offset == 1


def test_records_below_the_stored_offset_are_not_counted_again() -> None:
    m, u = meter(), user_in(1)
    state = PartitionState(1, 0)
    batch = records(1, [usage(u, occurred_at=NOW).SerializeToString() for _ in range(4)])
    run(m, state, batch[:3])
    plan = m.plan(state, batch)  # a redelivery of all four
    assert (plan.replayed, plan.counted, plan.next_offset) == (3, 1, 4)


def test_an_event_id_seen_within_the_window_counts_once() -> None:
    m, u = meter(), user_in(2)
    state = PartitionState(2, 0)
    e = usage(u, occurred_at=NOW).SerializeToString()
    plan = m.plan(state, records(2, [e, e]))  # twice in one batch
    assert (plan.counted, plan.duplicates) == (1, 1)
    m.apply(state, plan, m.fold(state, plan))
    again = m.plan(state, records(2, [e], first_offset=2))  # and again later
    assert (again.counted, again.duplicates) == (0, 1)
    # remembered for the window and at most an hour more (whole hours: dedupe.SeenIds)
    almost = meter(NOW + timedelta(hours=24) - timedelta(microseconds=1))
    assert almost.plan(state, records(2, [e], first_offset=2)).counted == 0
    tomorrow = meter(NOW + timedelta(hours=25, seconds=1))
    assert tomorrow.plan(state, records(2, [e], first_offset=2)).counted == 1


def test_a_late_event_counts_in_the_period_it_occurred_in() -> None:
    m, u = meter(), user_in(0)
    state = PartitionState(0, 0)
    last_month = datetime(2026, 10, 31, 23, 59, tzinfo=UTC)
    changed = run(m, state, records(0, [usage(u, occurred_at=last_month).SerializeToString()]))
    assert (u, "month", "2026-10") in changed
    assert (u, "month", "2026-11") not in changed


def test_an_event_away_from_its_users_partition_is_forwarded_home_not_counted() -> None:
    m, u, v = meter(), user_in(0), user_in(1)
    batch = UsageBatch(events=[usage(u, occurred_at=NOW), usage(v, occurred_at=NOW)])
    record = Record(
        1,
        0,
        None,
        batch.SerializeToString(),
        {CONTENT_TYPE: f"{PROTOBUF}; type={USAGE_BATCH_TYPE}"},
    )
    plan = m.plan(PartitionState(1, 0), [record])
    assert (plan.counted, plan.rejects, plan.next_offset) == (1, [], 1)
    ((home, _source), events), *more = plan.forwards.items()
    assert (home, [e.user_id for e in events], more) == (0, [u], [])
    assert plan.new_seen.keys() == {id_hash(v, batch.events[1].event_id)}


def test_forwarded_events_go_to_their_home_partition_in_batches_with_their_source() -> None:
    m, u = meter(), user_in(0)
    events = [usage(u, occurred_at=NOW).SerializeToString() for _ in range(FORWARD_PER_RECORD + 1)]
    plan = m.plan(PartitionState(1, 0), records(1, events, headers={SOURCE_HEADER: "gw-7"}))
    out = forward_records(plan)
    assert [(r[0], r[1], r[4]) for r in out] == [("qm.usage.v1", u.encode(), 0)] * 2  # type: ignore[misc]
    assert dict(out[0][3])[SOURCE_HEADER] == b"gw-7"
    sizes = [len(UsageBatch.FromString(r[2]).events) for r in out]
    assert sizes == [FORWARD_PER_RECORD, 1]
    # what arrives home decodes as a batch and counts there
    home = [Record(0, 0, r[1], r[2], {k: v.decode() for k, v in r[3]}) for r in out]  # type: ignore[union-attr]
    assert m.plan(PartitionState(0, 0), home).counted == FORWARD_PER_RECORD + 1


def test_garbage_is_rejected_and_the_offset_still_advances() -> None:
    m = meter()
    plan = m.plan(PartitionState(0, 5), records(0, [b"\xff\xff"], first_offset=5))
    assert (plan.invalid_records, plan.next_offset) == (1, 6)
    assert "not a UsageEvent in protobuf" in plan.rejects[0].reason


def test_totals_add_up_exactly_from_the_loaded_state() -> None:
    m, u = meter(), user_in(0)
    state = PartitionState(0, 0)
    run(m, state, records(0, [usage(u, occurred_at=NOW).SerializeToString() for _ in range(3)]))
    changed = run(
        m, state, records(0, [usage(u, occurred_at=NOW).SerializeToString()], first_offset=3)
    )
    assert changed[(u, "month", "2026-11")] == 4 * 6250


def test_forget_expired_drops_old_ids_and_ended_periods() -> None:
    m, u = meter(), user_in(0)
    state = PartitionState(0, 0)
    run(m, state, records(0, [usage(u, occurred_at=NOW).SerializeToString()]))
    later = meter(NOW + timedelta(days=80))
    assert later.forget_expired(state) == 1
    assert len(state.seen) == 0
    assert state.totals == {}


def test_another_users_event_with_the_same_id_is_not_a_duplicate() -> None:
    # a tester's input: attacker1 reports id predictable-call-id-123 for 1 token, then
    # victim1 (same partition) the same id for 20M tokens: victim1's spend must count
    m, state = meter(), PartitionState(0, 0)
    attacker, victim = [f"u{i}" for i in range(1000) if partition_of(f"u{i}", PARTITIONS) == 0][:2]
    first = usage(attacker, occurred_at=NOW, event_id="predictable-call-id-123", input_tokens=1)
    run(m, state, records(0, [first.SerializeToString()]))
    big = usage(victim, occurred_at=NOW, event_id="predictable-call-id-123",
                input_tokens=20_000_000, output_tokens=0)  # fmt: skip
    plan = m.plan(state, records(0, [big.SerializeToString(), first.SerializeToString()], 1))
    assert (plan.counted, plan.duplicates) == (1, 1)
    assert plan.totals[(victim, "month", "2026-11")][1] == 1


def test_id_hash_is_stable_and_64_bit() -> None:
    assert id_hash("u", "abc") == id_hash("u", "abc")
    assert -(2**63) <= id_hash("u", "abc") < 2**63
    assert id_hash("u", "abc") != id_hash("v", "abc"), "per user"
    assert id_hash("ab", "c") != id_hash("a", "bc"), "the separator keeps them apart"


def test_id_hash_is_the_blake2b_postgres_holds() -> None:
    # seen_ids written by any version must still dedupe: the hash never changes
    for user, event_id in [("u", "abc"), ("user-1", "évé\U0001f600"), ("x" * 300, "")]:
        digest = hashlib.blake2b(f"{user}\0{event_id}".encode(), digest_size=8).digest()
        assert id_hash(user, event_id) == int.from_bytes(digest, "big", signed=True)


def test_a_rollup_is_its_workspace_then_its_counters_in_order() -> None:
    # Meter.fold_rollups and the rollup store read a Rollup by position
    assert Rollup._fields == ("workspace_id", *ROLLUP_COUNTERS)


def test_15_minute_rollups_sum_tokens_by_class_per_product_model_and_cost_center() -> None:
    m, u = meter(), user_in(0)
    state = PartitionState(0, 0)
    at = NOW.replace(hour=11, minute=10)
    a = usage(u, occurred_at=at, cached_input_tokens=100, reasoning_tokens=50)
    a.cache_write_input_tokens = 100  # gpt-5's cache-write rate is its input rate
    a.attributes["cost_center"] = "R&D"
    b = usage(u, occurred_at=at.replace(minute=14), cached_input_tokens=100, reasoning_tokens=50)
    b.attributes["cost_center"] = "R&D"
    c = usage(u, occurred_at=at, product="codex")  # another product: its own row
    plan = m.plan(state, records(0, [x.SerializeToString() for x in (a, b, c)]))
    rollups = m.fold_rollups(state, plan)
    quarter = int(NOW.timestamp()) - 3600  # 11:00 to 11:15
    rnd = rollups[(QUARTER, quarter, u, "chat", "gpt-5", "R&D")]
    assert (rnd.input_tokens, rnd.cached_input_tokens, rnd.output_tokens) == (2000, 200, 1000)
    assert (rnd.reasoning_tokens, rnd.events, rnd.fallback_events) == (100, 2, 0)
    assert rnd.cache_write_tokens == 100
    # per event 900 x 1.25 + 100 x 0.125 + 450 x 10 + 50 x 10 = 6137.5 micros, kept exact
    assert rnd.picos == 2 * 6_137_500_000
    assert rollups[(QUARTER, quarter, u, "codex", "gpt-5", "")].events == 1
    # an event at 11:15 is in the next bucket
    late = m.plan(
        state, records(0, [usage(u, occurred_at=at.replace(minute=15)).SerializeToString()])
    )
    assert set(late.rollups) == {(QUARTER, quarter + 900, u, "chat", "gpt-5", "")}
    m.apply(state, plan, m.fold(state, plan), rollups)
    again = m.plan(state, records(0, [usage(u, occurred_at=at).SerializeToString()], 3))
    assert m.fold_rollups(state, again)[(QUARTER, quarter, u, "chat", "gpt-5", "")].events == 1


def test_rollups_past_the_horizon_are_new_and_older_ones_are_looked_up() -> None:
    state = PartitionState(0, 0, rollup_horizon={QUARTER: 7200})
    old, new = (QUARTER, 3600, "u", "p", "m", ""), (QUARTER, 8100, "u", "p", "m", "")
    day = ("day", 0, "u", "p", "m", "")  # no daily rows in Postgres for this partition
    assert state.rollups_to_load({old, new, day}) == {old}


def test_dropping_a_rollup_from_memory_makes_it_looked_up_again() -> None:
    m, u = meter(), user_in(0)
    state = PartitionState(0, 0)
    hour_ago = NOW - timedelta(hours=3)
    plan = m.plan(state, records(0, [usage(u, occurred_at=hour_ago).SerializeToString()]))
    m.apply(state, plan, m.fold(state, plan), m.fold_rollups(state, plan))
    key = next(k for k in state.rollups if k[0] == QUARTER)
    assert state.rollups_to_load({key}) == set()  # in memory
    m.forget_expired(state)
    assert key not in state.rollups
    assert state.rollups_to_load({key}) == {key}  # in Postgres only: look it up


def test_metering_prices_one_hour_writes_audio_and_service_tiers() -> None:
    """The counting path prices every class as the catalog does: issue 13's Sonnet 4.5
    call with 5,424 one-hour cache writes is 34,053 micros, gpt-5 on batch half of its
    6,250, gpt-audio's audio at its own rate (1,000 in x 32 + 500 out x 64)."""
    m, u = meter(), user_in(0)
    hour = usage(u, occurred_at=NOW, model="claude-sonnet-4-5", input_tokens=5427,
                 output_tokens=100, cache_write_input_tokens=5424,
                 cache_write_1h_input_tokens=5424)  # fmt: skip
    batch = usage(u, occurred_at=NOW, service_tier=ServiceTier.SERVICE_TIER_BATCH)
    audio = usage(u, occurred_at=NOW, model="gpt-audio", audio_input_tokens=1000,
                  audio_output_tokens=500)  # fmt: skip
    for event, micros in ((hour, 34_053), (batch, 3_125), (audio, 64_000)):
        changed = run(m, PartitionState(0, 0), records(0, [event.SerializeToString()]))
        assert changed[(u, "day", "2026-11-22")] == micros, event.model


def test_a_plan_counts_partial_calls_by_ending_and_prices_them_in_full() -> None:
    m, u = meter(), user_in(0)
    endings = [CallEnding.CALL_ENDING_UNSPECIFIED, CallEnding.CALL_ENDING_COMPLETED,
               CallEnding.CALL_ENDING_INCOMPLETE, CallEnding.CALL_ENDING_CUT_OFF,
               CallEnding.CALL_ENDING_CUT_OFF]  # fmt: skip
    events = [usage(u, occurred_at=NOW, ending=e).SerializeToString() for e in endings]
    plan = m.plan(PartitionState(0, 0), records(0, events))
    assert plan.counted == 5
    assert plan.partial == {CallEnding.CALL_ENDING_INCOMPLETE: 1, CallEnding.CALL_ENDING_CUT_OFF: 2}
    assert plan.micros == 5 * 6250
