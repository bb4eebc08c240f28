"""Metering counts time and money exactly, without I/O (issue 13, items 5 and 7).

Instants are integers end to end: the last nanosecond before a period or a new price
belongs before it. Money is summed exact and rounded once: a total is within half a
micro of the exact sum of its events, whatever they are.
"""

from __future__ import annotations

import functools
import random
from datetime import UTC, datetime, timedelta
from fractions import Fraction
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from quartermaster.money import PICOS_PER_MICRO, apportion, micros_of_picos
from quartermaster.periods import PeriodKind, period_of
from quartermaster.v1.usage_pb2 import UsageEvent
from quartermaster.wire import NS_PER_SECOND, epoch_ns
from services.metering.aggregate import Meter
from services.metering.decode import InvalidUsage, validate
from services.metering.pricing import Price, PriceCatalog
from services.metering.settings import DEFAULT_PRICES
from services.metering.state import QUARTER, PartitionState
from tests.helpers import usage
from tests.metering.test_aggregate import PARTITIONS, records, user_in

LAST_NS = datetime(2026, 11, 30, 23, 59, 59, tzinfo=UTC)  # + 999,999,999 ns
DECEMBER = datetime(2026, 12, 1, tzinfo=UTC)
# Zones whose midnights fall on half and quarter hours, and zones with DST
ZONES = [
    "UTC", "Asia/Kolkata", "Asia/Kathmandu", "Australia/Adelaide", "Australia/Darwin",
    "Australia/Lord_Howe", "Pacific/Chatham", "America/St_Johns", "America/New_York",
    "Europe/London", "Asia/Tehran", "America/Santiago", "Pacific/Kiritimati",
    "Pacific/Pago_Pago", "Africa/Casablanca",
]  # fmt: skip


@functools.cache
def shipped() -> PriceCatalog:
    """The packaged catalog, read once (the property tests below ask for it in each of
    hundreds of examples: reading it each time was nine tenths of this module's time)."""
    return PriceCatalog.from_file(DEFAULT_PRICES)


def meter(now: datetime, tz: str = "UTC", catalog: PriceCatalog | None = None) -> Meter:
    return Meter(
        catalog or shipped(), ZoneInfo(tz), PARTITIONS, "ws",
        max_age=timedelta(days=35), dedupe_window=timedelta(hours=24), clock=lambda: now,
    )  # fmt: skip


def at_ns(event: UsageEvent, ns: int) -> UsageEvent:
    event.occurred_at.seconds, event.occurred_at.nanos = divmod(ns, NS_PER_SECOND)
    return event


def counted(m: Meter, events: list[UsageEvent]) -> dict[tuple[str, str, str], int]:
    """The totals' micros (what is published) after counting `events` in one batch."""
    state = PartitionState(0, 0)
    plan = m.plan(state, records(0, [e.SerializeToString() for e in events]))
    assert not plan.rejects, plan.rejects
    return {k: t.used_micros for k, t in m.fold(state, plan).items()}


# -- item 5: integer time --


def test_the_last_nanosecond_of_november_counts_in_november() -> None:
    u = user_in(0)
    event = usage(u)
    event.occurred_at.seconds = int(LAST_NS.timestamp())
    event.occurred_at.nanos = 999_999_999
    m = meter(DECEMBER + timedelta(minutes=1))
    state = PartitionState(0, 0)
    plan = m.plan(state, records(0, [event.SerializeToString()]))
    assert set(plan.totals) == {(u, "day", "2026-11-30"), (u, "week", "2026-W49"),
                                (u, "month", "2026-11")}  # fmt: skip
    assert set(plan.rollups) == {(QUARTER, int(LAST_NS.timestamp()) - 899, u, "chat", "gpt-5", "")}
    assert plan.days() == {datetime(2026, 11, 30, tzinfo=UTC)}
    # float seconds said December: the reason instants are integers
    assert datetime.fromtimestamp(event.occurred_at.seconds + 999_999_999 / 1e9, UTC) >= DECEMBER


def test_the_price_in_force_changes_at_its_nanosecond_not_before() -> None:
    old = Price(input=1_000_000, cached_input=0, output=0, reasoning=0, cache_write=0)
    new = Price(input=3_000_000, cached_input=0, output=0, reasoning=0, cache_write=0)
    base = shipped()
    catalog = PriceCatalog({"m": [(datetime(2026, 1, 1, tzinfo=UTC), old), (DECEMBER, new)]},
                           base.fallback)  # fmt: skip
    u = user_in(0)
    m = meter(DECEMBER + timedelta(minutes=1), catalog=catalog)
    boundary = epoch_ns(DECEMBER)
    before = at_ns(usage(u, model="m", input_tokens=10, output_tokens=0), boundary - 1)
    on = at_ns(usage(u, model="m", input_tokens=10, output_tokens=0, event_id="on"), boundary)
    got = counted(m, [before, on])
    assert got[(u, "month", "2026-11")] == 10  # 10 tokens at 1 micro
    assert got[(u, "month", "2026-12")] == 30  # 10 tokens at 3 micros
    assert catalog.version_at("m", boundary - 1)[0] == old
    assert catalog.version_at("m", boundary)[0] == new


def test_the_age_and_future_bounds_hold_to_the_nanosecond() -> None:
    now = datetime(2026, 11, 30, 12, tzinfo=UTC)
    age = timedelta(days=35)
    oldest, latest = epoch_ns(now - age), epoch_ns(now + timedelta(minutes=5))
    validate(at_ns(usage("u"), oldest), now, age)
    validate(at_ns(usage("u"), latest), now, age)
    for ns, why in ((oldest - 1, "older than the 35-day horizon"),
                    (latest + 1, "more than 5 minutes in the future")):  # fmt: skip
        with pytest.raises(InvalidUsage, match=why):
            validate(at_ns(usage("u"), ns), now, age)


@settings(max_examples=300, deadline=None)
@given(
    zone=st.sampled_from(ZONES),
    day=st.integers(0, 700),
    kind=st.sampled_from([PeriodKind.DAY, PeriodKind.WEEK, PeriodKind.MONTH]),
    before=st.integers(1, 2_000),
)
def test_instants_just_before_a_period_boundary_count_before_it(
    zone: str, day: int, kind: PeriodKind, before: int
) -> None:
    """In any zone, an event `before` ns (up to 2 µs) before a day, week or month starts
    counts in the period that ends there; one at the boundary in the next."""
    tz = ZoneInfo(zone)
    now = datetime(2027, 1, 1, tzinfo=UTC) + timedelta(days=day)
    boundary = period_of(kind, now, tz).start
    m = meter(now + timedelta(minutes=1), zone)
    m.max_age = timedelta(days=3000)
    u = user_in(0)
    ends = epoch_ns(boundary)
    early = at_ns(usage(u), ends - before)
    late = at_ns(usage(u, event_id="late"), ends)
    state = PartitionState(0, 0)
    plan = m.plan(state, records(0, [early.SerializeToString(), late.SerializeToString()]))
    assert not plan.rejects
    previous = period_of(kind, boundary - timedelta(microseconds=1), tz)
    counts = {key[2]: acc[1] for key, acc in plan.totals.items() if key[1] == kind.value}
    assert counts == {previous.key: 1, period_of(kind, boundary, tz).key: 1}
    # and the 15-minute buckets: the early event in the one ending at the boundary
    starts = sorted(key[1] for key in plan.rollups)
    assert starts == [int(boundary.timestamp()) - 900, int(boundary.timestamp())]


@settings(max_examples=200, deadline=None)
@given(offset_s=st.integers(-7200, 7200), before=st.integers(1, 1_000))
def test_instants_just_before_a_new_price_pay_the_old_one(offset_s: int, before: int) -> None:
    starts = DECEMBER + timedelta(seconds=offset_s, microseconds=offset_s % 1000)
    catalog = PriceCatalog(
        {"m": [(datetime(2026, 1, 1, tzinfo=UTC), Price(1_000_000, 0, 0, 0, 0)),
               (starts, Price(2_000_000, 0, 0, 0, 0))]},
        shipped().fallback,
    )  # fmt: skip
    m = meter(DECEMBER + timedelta(hours=3), catalog=catalog)
    u = user_in(0)
    ns = epoch_ns(starts)
    a = at_ns(usage(u, model="m", input_tokens=1, output_tokens=0), ns - before)
    b = at_ns(usage(u, model="m", input_tokens=1, output_tokens=0, event_id="b"), ns)
    state = PartitionState(0, 0)
    plan = m.plan(state, records(0, [a.SerializeToString(), b.SerializeToString()]))
    assert sum(acc[5] for acc in plan.rollups.values()) == 3 * PICOS_PER_MICRO  # 1 + 2 micros


# -- item 7: no systematic rounding bias --


def test_a_thousand_small_events_total_their_exact_sum_rounded_once() -> None:
    rnd = random.Random(13)
    u = user_in(0)
    now = datetime(2026, 11, 22, 12, tzinfo=UTC)
    events = [
        usage(u, model="gpt-5-mini", input_tokens=rnd.randint(1, 40),
              output_tokens=rnd.randint(0, 6), occurred_at=now, event_id=f"e{i}")
        for i in range(1000)
    ]  # fmt: skip
    # gpt-5-mini: 0.25 micros an input token, 2 an output token
    exact = sum(Fraction(e.input_tokens, 4) + 2 * e.output_tokens for e in events)
    per_event = sum(int(Fraction(e.input_tokens, 4) + Fraction(1, 2)) + 2 * e.output_tokens
                    for e in events)  # fmt: skip
    got = counted(meter(now), events)[(u, "month", "2026-11")]
    assert got == int(exact + Fraction(1, 2))
    assert -Fraction(1, 2) < got - exact <= Fraction(1, 2)
    assert per_event - exact > 100  # what rounding each event half up added


def test_one_token_events_are_not_free() -> None:
    u = user_in(0)
    now = datetime(2026, 11, 22, 12, tzinfo=UTC)
    one = [usage(u, model="gpt-5-mini", input_tokens=1, output_tokens=0, occurred_at=now,
                 event_id=f"e{i}") for i in range(8)]  # fmt: skip
    assert counted(meter(now), one[:1])[(u, "day", "2026-11-22")] == 0  # 0.25 rounds to 0
    assert counted(meter(now), one)[(u, "day", "2026-11-22")] == 2  # but 8 x 0.25 = 2


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.integers(0, 3000),
            st.integers(0, 3000),
            st.integers(0, 500),
            st.sampled_from(["gpt-5-mini", "gpt-5", "claude-sonnet-4-5", "o3", "x"]),
        ),
        min_size=1,
        max_size=60,
    ),
    st.integers(1, 4),
)
def test_totals_of_random_small_events_are_within_one_micro_of_the_exact_sum(
    specs: list[tuple[int, int, int, str]], batches: int
) -> None:
    """However the events are split into batches (each folded on the last), a total is
    its exact sum rounded once; the exact sum is worked out here with Fractions."""
    now = datetime(2026, 11, 22, 12, tzinfo=UTC)
    m, u = meter(now), user_in(0)
    catalog = m.catalog
    events, exact = [], Fraction(0)
    for i, (inp, out, reasoning, model) in enumerate(specs):
        e = usage(u, model=model, input_tokens=inp, cached_input_tokens=inp // 3,
                  output_tokens=out + reasoning, reasoning_tokens=reasoning,
                  occurred_at=now, event_id=f"e{i}")  # fmt: skip
        events.append(e)
        p, _ = catalog.price_at(model, now)
        exact += Fraction(
            (inp - inp // 3) * p.input + (inp // 3) * p.cached_input + out * p.output
            + reasoning * p.reasoning, 1_000_000,
        )  # fmt: skip
    state = PartitionState(0, 0)
    size = -(-len(events) // batches)
    for b in range(batches):
        chunk = events[b * size : (b + 1) * size]
        recs = records(0, [e.SerializeToString() for e in chunk], first_offset=b * size)
        plan = m.plan(state, recs)
        m.apply(state, plan, m.fold(state, plan))
    total = state.totals[(u, "month", "2026-11")]
    assert -Fraction(1, 2) < total.used_micros - exact <= Fraction(1, 2)
    assert total.used_picos == exact * PICOS_PER_MICRO


@settings(max_examples=300, deadline=None)
@given(st.lists(st.integers(0, 10**13), min_size=1, max_size=50))
def test_apportioned_parts_add_up_to_the_whole_each_within_a_micro(picos: list[int]) -> None:
    parts = apportion(picos)
    assert sum(parts) == micros_of_picos(sum(picos))
    assert all(
        abs(p * PICOS_PER_MICRO - x) < PICOS_PER_MICRO for p, x in zip(parts, picos, strict=True)
    )


@settings(max_examples=300, deadline=None)
@given(st.lists(st.integers(0, 10**13), min_size=1, max_size=50), st.integers(0, 10**8))
def test_apportioning_any_total_gives_parts_that_add_up_to_it(picos: list[int], total: int) -> None:
    """A total far from the exact sum (a sum of users' amounts each rounded on its own)
    is shared in proportion: never a negative part, always the total."""
    if sum(picos) == 0:
        total = 0
    parts = apportion(picos, total)
    assert sum(parts) == total
    assert min(parts) >= 0
