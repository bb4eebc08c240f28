"""A worker that is behind counts batches of about `target` seconds: they grow while
shorter and shrink when longer, within the settings' bounds (services/metering/pacing.py)."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
from confluent_kafka import Consumer

from quartermaster.settings import SettingsError
from services.metering import consumer
from services.metering.pacing import LEAST_BYTES, LEAST_RECORDS, Pacer, batch_prefix
from services.metering.settings import MeteringSettings

MIB = 1024 * 1024


def _halved() -> Pacer:
    """A pacer whose last batch took four times the target: 25,000 records, 8 MiB."""
    pacer = Pacer(2.0, 50_000, 16 * MIB)
    pacer.counted(50_000, 1_000, 8.0)
    assert (pacer.records, pacer.bytes) == (25_000, 8 * MIB)
    return pacer


def test_the_first_batch_takes_the_bounds() -> None:
    pacer = Pacer(2.0, 50_000, 16 * MIB)
    assert (pacer.records, pacer.bytes) == (50_000, 16 * MIB)
    pacer.counted(50_000, 1_000, 1.0)  # fast: nothing past the bounds
    assert (pacer.records, pacer.bytes) == (50_000, 16 * MIB)


@pytest.mark.parametrize(
    ("seconds", "records"),
    [(0.25, 50_000), (0.5, 50_000), (1.0, 35_355), (1.5, 28_868), (2.0, 25_000),
     (3.0, 20_412), (8.0, 12_500), (60.0, 12_500)],
)  # fmt: skip
def test_a_full_batch_scales_by_the_root_of_target_over_time_within_double_and_half(
    seconds: float, records: int
) -> None:
    pacer = _halved()
    pacer.counted(25_000, 1_000, seconds)  # full by records
    factor = min(2.0, max(0.5, (2.0 / seconds) ** 0.5))
    assert pacer.records == records
    assert pacer.bytes == min(16 * MIB, round(8 * MIB * factor))


def test_a_batch_full_by_bytes_is_full() -> None:
    pacer = _halved()
    pacer.counted(10, 8 * MIB, 0.5)  # ten large records, up to the bytes bound
    assert (pacer.records, pacer.bytes) == (50_000, 16 * MIB)


def test_a_batch_not_full_grows_nothing_and_shrinks_when_slow() -> None:
    pacer = _halved()
    pacer.counted(100, 10_000, 0.01)  # keeping up: says nothing of how much fits
    assert (pacer.records, pacer.bytes) == (25_000, 8 * MIB)
    pacer.counted(100, 10_000, 8.0)  # slow though small (PostgreSQL stalled, say)
    assert (pacer.records, pacer.bytes) == (12_500, 4 * MIB)


def test_the_bounds_hold_and_the_floor_too() -> None:
    pacer = Pacer(2.0, 50_000, 16 * MIB)
    for _ in range(10):
        pacer.counted(pacer.records, 0, 0.1)
    assert (pacer.records, pacer.bytes) == (50_000, 16 * MIB)
    for _ in range(30):
        pacer.counted(pacer.records, 0, 100.0)
    assert (pacer.records, pacer.bytes) == (LEAST_RECORDS, LEAST_BYTES)


@pytest.mark.parametrize("rate", [2_000, 14_000, 35_000, 200_000])
def test_batches_settle_near_the_target_when_behind(rate: int) -> None:
    """A worker counting `rate` records a second plus 50 ms a batch, always behind."""
    pacer = Pacer(2.0, 1_000_000, 1024 * MIB)
    times = []
    for _ in range(20):
        n = pacer.records
        took = 0.05 + n / rate
        times.append(took)
        pacer.counted(n, n * 75, took)
    assert all(1.0 <= t <= 2.2 for t in times[-5:]), times


@pytest.mark.parametrize(("target", "records", "size"), [(0, 1, 1), (1, 0, 1), (1, 1, 0)])
def test_bounds_that_make_no_sense_are_refused(target: float, records: int, size: int) -> None:
    with pytest.raises(ValueError, match="must be positive"):
        Pacer(target, records, size)


def test_the_target_follows_the_session_timeout_and_may_not_pass_its_half() -> None:
    assert MeteringSettings.from_env({}).batch_target == 5.0
    assert MeteringSettings.from_env({"QM_METERING_SESSION_TIMEOUT": "3"}).batch_target == 1.5
    set_ = {"QM_METERING_BATCH_SECONDS": "0.5", "QM_METERING_SESSION_TIMEOUT": "3"}
    assert MeteringSettings.from_env(set_).batch_target == 0.5
    with pytest.raises(SettingsError, match=r"QM_METERING_BATCH_SECONDS .* at most half"):
        MeteringSettings.from_env(
            {"QM_METERING_BATCH_SECONDS": "6", "QM_METERING_SESSION_TIMEOUT": "10"}
        )


def test_the_group_waits_for_a_member_counting_its_batch_rather_than_evict_it() -> None:
    conf = consumer.config(MeteringSettings.from_env({"QM_METERING_SESSION_TIMEOUT": "4"}))
    # librdkafka's rebalance timeout: a member counting a long batch is waited for
    assert conf["max.poll.interval.ms"] == 300_000
    assert conf["session.timeout.ms"] == 4_000  # a crashed member: noticed after this
    assert conf["heartbeat.interval.ms"] == 1_000
    assert conf["partition.assignment.strategy"] == "cooperative-sticky"
    longer = MeteringSettings.from_env({"QM_METERING_SESSION_TIMEOUT": "300"})
    assert consumer.config(longer)["max.poll.interval.ms"] == 600_000


def test_a_batch_is_bounded_by_bytes_as_well_as_records() -> None:
    """One-event records (~75 bytes) and gateways' 200-event batches (~14 KB) in one
    bound: a batch stops at whichever of records and bytes comes first."""
    waiting = [SimpleNamespace(value=b"x" * 100)] * 10 + [SimpleNamespace(value=b"x" * 10_000)] * 3
    assert batch_prefix(waiting, 1000, 500) == (5, 500)  # 100-byte records: 5 make 500
    assert batch_prefix(waiting[5:], 1000, 5000) == (5, 500)  # not the 10 KB record after
    assert batch_prefix(waiting[10:], 1000, 500) == (1, 10_000)  # too large: alone, not stuck
    assert batch_prefix(waiting, 3, 10**9) == (3, 300)  # the records bound too
    assert batch_prefix([SimpleNamespace(value=None)], 10, 1) == (1, 0)  # a tombstone
    assert batch_prefix([], 10, 10) == (0, 0)


def test_batches_cut_by_the_bytes_bound_grow_back_after_a_stall() -> None:
    """UsageBatch records (~14 KB): a batch stops before the record that would pass the
    bytes bound, so a batch cut by it weighs a little less than the bound. Such a
    batch is full all the same: once a stall (three slow batches) has shrunk the
    bounds, fast batches grow them back to the bounds."""
    pacer = Pacer(5.0, 50_000, 16 * MIB)
    waiting = [SimpleNamespace(value=b"x" * 14_000)] * 2_000  # always behind
    for i in range(12):
        n, size = batch_prefix(waiting, pacer.records, pacer.bytes)
        assert size < pacer.bytes  # a bytes bound never met exactly
        pacer.counted(n, size, 12.0 if i < 3 else 0.5, cut=n < len(waiting))
    assert (pacer.records, pacer.bytes) == (50_000, 16 * MIB)


@pytest.mark.parametrize("target", [math.nan, math.inf])
def test_a_target_that_is_no_number_of_seconds_is_refused(target: float) -> None:
    with pytest.raises(ValueError, match="must be positive"):
        Pacer(target, 50_000, 16 * MIB)


@pytest.mark.parametrize("seconds", [0.0, -1.0, math.nan, -math.inf])
def test_a_batch_timed_at_no_time_changes_nothing(seconds: float) -> None:
    pacer = _halved()
    pacer.counted(25_000, 1_000, seconds)
    assert (pacer.records, pacer.bytes) == (25_000, 8 * MIB)


def test_a_target_just_past_half_the_session_timeout_is_named_as_given() -> None:
    """`:g` printed 5.0000001 as 5: "(5) must be at most half (10)" contradicted itself."""
    with pytest.raises(SettingsError, match=r"\(5\.0000001\) must be at most half"):
        MeteringSettings.from_env({"QM_METERING_BATCH_SECONDS": "5.0000001"})
    assert MeteringSettings.from_env({"QM_METERING_BATCH_SECONDS": "5"}).batch_target == 5.0


@pytest.mark.parametrize("seconds", ["0.0001", "1e-300", "0.09"])
def test_a_target_too_short_for_any_batch_is_refused(seconds: str) -> None:
    """A batch costs tens of milliseconds whatever its size: with a 0.1 ms target every
    batch ran long, and the bounds stayed at the floor (100 records) for good."""
    with pytest.raises(SettingsError, match=r"must be 0 .* or at least 0\.1"):
        MeteringSettings.from_env({"QM_METERING_BATCH_SECONDS": seconds})
    assert MeteringSettings.from_env({"QM_METERING_BATCH_SECONDS": "0.1"}).batch_target == 0.1


@pytest.mark.parametrize("session", ["1", "10", "85", "90", "300"])
def test_librdkafka_takes_the_consumer_config_whatever_the_session_timeout(session: str) -> None:
    """faust refused a session timeout past its request timeout (90 s) when it made the
    consumer, though the settings take up to 300. librdkafka checks its configuration
    when the consumer is made (no broker needed): a heartbeat shorter than the
    session, a rebalance timeout (max.poll.interval.ms) at least as long."""
    settings = MeteringSettings.from_env({"QM_METERING_SESSION_TIMEOUT": session})
    conf = consumer.config(settings)
    session_ms = conf["session.timeout.ms"]
    assert conf["heartbeat.interval.ms"] < session_ms <= conf["max.poll.interval.ms"]
    Consumer(conf).close()


def test_batches_settle_when_time_grows_faster_than_size() -> None:
    """A batch whose time grows as its size cubed (contrived: memory pressure, a
    plan that degrades with the batch). Scaled by target / time undamped, sizes
    flip-flopped for good between 21,418 records in 0.9 s and 42,836 in 7.2 s with a
    2 s target; by its square root they settle."""
    pacer = Pacer(2.0, 1_000_000, 1024 * MIB)
    times = []
    for _ in range(40):
        n = pacer.records
        took = 0.05 + (n / 14_000) ** 3 / 4
        times.append(took)
        pacer.counted(n, n * 75, took)
    assert all(t <= 2.0 * 1.5 for t in times[-10:]), times[-10:]
