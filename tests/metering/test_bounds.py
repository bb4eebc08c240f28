"""Bounds without I/O: an event's cost, sums that would pass MAX_SUM, and DLQ copies
that always fit the producer's size limit."""

from __future__ import annotations

import hashlib
from datetime import datetime
from typing import Any

from quartermaster.money import PICOS_PER_MICRO
from quartermaster.periods import PeriodKind, period_of
from quartermaster.topics import (
    CONTENT_TYPE,
    ERROR_HEADER,
    ORIGIN_OFFSET_HEADER,
    ORIGINAL_KEY_SIZE_HEADER,
    ORIGINAL_SHA256_HEADER,
    ORIGINAL_SIZE_HEADER,
    PROTOBUF,
    USAGE_BATCH_TYPE,
    Topic,
)
from quartermaster.v1.usage_pb2 import UsageBatch, UsageTotal
from services.metering.aggregate import Meter, Record, Reject
from services.metering.bounds import MAX_EVENT_MICROS, MAX_SUM, overflowing
from services.metering.dead_letter import MAX_KEY_BYTES, MAX_VALUE_BYTES, dead_letter
from services.metering.pricing import Price, PriceCatalog
from services.metering.processor import Processor
from services.metering.state import PartitionState, Total
from tests.helpers import usage
from tests.metering.test_aggregate import NOW, meter, records, user_in

EVENT = 6_250  # tests.helpers.usage on the default catalog
UTC_ZONE = meter().tz


def stored(user: str, micros: int, at: datetime = NOW) -> dict[tuple[str, str, str], Total]:
    out = {}
    for kind in (PeriodKind.DAY, PeriodKind.WEEK, PeriodKind.MONTH):
        p = period_of(kind, at, UTC_ZONE)
        out[(user, kind.value, p.key)] = Total("ws", p.start, p.end, micros * PICOS_PER_MICRO, 1, 0)
    return out


def test_an_event_costing_more_than_the_bound_is_a_reject_naming_the_price() -> None:
    dear = Price(input=10**16, cached_input=0, output=0, reasoning=0, cache_write=0)
    m = meter()
    since = datetime(2026, 1, 1, tzinfo=NOW.tzinfo)
    m.use_catalog(PriceCatalog({**m.catalog.models, "dear": [(since, dear)]}, m.catalog.fallback))
    u = user_in(0)
    events = [usage(u, occurred_at=NOW, model="dear"), usage(u, occurred_at=NOW)]
    plan = m.plan(PartitionState(0, 0), records(0, [e.SerializeToString() for e in events]))
    assert plan.micros == EVENT
    assert plan.counted == 1
    [reject] = plan.rejects
    assert f"more than one event may ({MAX_EVENT_MICROS:,})" in reject.reason
    assert "'dear'" in reject.reason
    # a rejected event is not remembered as counted: sent again once priced, it counts
    assert len(plan.new_seen) == 1


def test_sums_stop_at_the_bound_the_event_that_would_pass_it_is_a_reject() -> None:
    m: Meter = meter()
    u = user_in(1)
    state = PartitionState(1, 0, totals=stored(u, MAX_SUM - EVENT - 1))
    events = [usage(u, occurred_at=NOW) for _ in range(3)]
    recs = records(1, [e.SerializeToString() for e in events])
    first = m.plan(state, recs)
    changed = m.fold(state, first)
    rollups = m.fold_rollups(state, first)
    assert overflowing(changed, rollups) == {u}
    plan = m.plan(state, recs, guarded={u})
    changed = m.fold(state, plan)
    assert not overflowing(changed, m.fold_rollups(state, plan))
    assert plan.counted == 1  # the first fits; each later one would pass the bound
    assert {t.used_micros for t in changed.values()} == {MAX_SUM - 1}
    assert [r.offset for r in plan.rejects] == [1, 2]
    assert "it would take the day total of user_id past" in plan.rejects[0].reason


def test_a_guarded_plan_counts_what_fits_in_rollups_too() -> None:
    m = meter()
    u, v = user_in(2), "other"
    state = PartitionState(2, 0)
    events = [usage(u, occurred_at=NOW) for _ in range(4)]
    recs = records(2, [e.SerializeToString() for e in events])
    free = m.plan(state, recs)
    guarded = m.plan(state, recs, guarded={u, v})  # nothing near the bound: same plan
    assert (guarded.counted, guarded.micros, guarded.rejects) == (4, 4 * EVENT, [])
    assert guarded.totals == free.totals
    assert guarded.rollups == free.rollups


def test_a_huge_rejected_record_becomes_a_dlq_record_that_fits() -> None:
    value = b"{" + b"x" * 1_000_000
    reject = Reject(41, b"k" * 5000, value, "not JSON \ud800 " + "y" * 10_000)
    topic, key, out, headers = dead_letter(reject, 2)
    h = dict(headers)
    assert topic == Topic.USAGE_DLQ.value
    assert out == value[:MAX_VALUE_BYTES]
    assert key == b"k" * MAX_KEY_BYTES
    assert h[ORIGINAL_SIZE_HEADER] == str(len(value)).encode()
    assert h[ORIGINAL_SHA256_HEADER] == hashlib.sha256(value).hexdigest().encode()
    assert h[ORIGINAL_KEY_SIZE_HEADER] == b"5000"
    assert h[ORIGIN_OFFSET_HEADER] == b"41"
    reason = h[ERROR_HEADER]
    assert isinstance(reason, bytes)
    assert reason.startswith(b"not JSON \\ud800 yyy")  # a surrogate can't stop it
    assert b"DLQ copy cut to the first 524,288 of 1,000,001 bytes" in reason
    assert len(reason) < 2300
    size = len(key) + len(out) + sum(len(k) + len(v or b"") for k, v in headers)
    assert size < 600_000  # far below the producer's 1,000,000


def test_a_small_reject_is_copied_whole() -> None:
    _topic, key, out, headers = dead_letter(Reject(1, b"u", b"abc", "why"), 0)
    assert (key, out, dict(headers)[ERROR_HEADER]) == (b"u", b"abc", b"why")
    assert ORIGINAL_SIZE_HEADER not in dict(headers)


class CapturingSink:
    """Keeps what the processor sends (only its publishing is under test here: no
    broker is needed to see how records are cut)."""

    def __init__(self) -> None:
        self.records: list[tuple[str, bytes | None, bytes, list[Any]]] = []

    async def send(self, records: list[Any]) -> None:
        self.records.extend(records)


async def test_many_settled_request_ids_are_spread_over_totals_records_that_fit() -> None:
    m, u = meter(), user_in(0)
    events = [usage(u, occurred_at=NOW, request_id=f"{i:04d}" + "r" * 252) for i in range(5000)]
    batch = UsageBatch(events=events).SerializeToString()
    header = {CONTENT_TYPE: f"{PROTOBUF}; type={USAGE_BATCH_TYPE}"}
    plan = m.plan(PartitionState(0, 0), [Record(0, 0, b"k", batch, header)])
    changed = m.fold(PartitionState(0, 0), plan)
    sink = CapturingSink()
    processor = Processor(m, None, None, sink, 1.0)  # type: ignore[arg-type]
    await processor._publish(0, plan, changed)
    settled: dict[str, list[str]] = {}
    for _topic, key, value, _headers in sink.records:
        assert len(value) < 100_000
        total = UsageTotal.FromString(value)
        assert key == f"user:{u}:{total.period_key}".encode()
        assert total.used_micros == 5000 * EVENT
        settled.setdefault(total.period_key, []).extend(total.settled_request_ids)
    assert len(settled) == 3  # day, week, month: each names every request once
    for ids in settled.values():
        assert sorted(ids) == sorted(e.request_id for e in events)
