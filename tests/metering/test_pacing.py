"""A worker that is behind counts batches of about `target` seconds: they grow while
shorter and shrink when longer, within the settings' bounds (services/metering/pacing.py)."""

from __future__ import annotations

import math
from pathlib import Path
from types import SimpleNamespace

import pytest

from quartermaster.settings import SettingsError
from services.metering import worker
from services.metering.intake import Intake
from services.metering.pacing import LEAST_BYTES, LEAST_RECORDS, Pacer
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


def test_the_group_waits_for_a_member_counting_its_batch_rather_than_evict_it(
    tmp_path: Path,
) -> None:
    env = {"QM_METERING_DATA_DIR": str(tmp_path), "QM_METERING_SESSION_TIMEOUT": "4"}
    app = worker._app(MeteringSettings.from_env(env))
    assert app.conf.broker_rebalance_timeout == worker.REBALANCE_TIMEOUT == 60.0
    assert app.conf.broker_session_timeout == 4.0  # a crashed member: noticed after this
    longer = {**env, "QM_METERING_SESSION_TIMEOUT": "90"}
    assert worker._app(MeteringSettings.from_env(longer)).conf.broker_rebalance_timeout == 90


async def test_batches_cut_by_the_bytes_bound_grow_back_after_a_stall() -> None:
    """UsageBatch records (~14 KB): the intake stops a batch before the record that
    would pass the bytes bound, so a batch cut by it weighs a little less than the
    bound. Such a batch is full all the same: once a stall (three slow batches) has
    shrunk the bounds, fast batches grow them back to the bounds."""
    intake = Intake(50_000, 16 * MIB)
    pacer = Pacer(5.0, 50_000, 16 * MIB)
    record = SimpleNamespace(topic="t", partition=0, value=b"x" * 14_000)
    for i in range(12):
        if not intake._full():  # always behind
            await intake.put([record] * 2_000)
        batch = await intake.take(pacer.records, 0.05, pacer.bytes)
        assert intake.taken_bytes < pacer.bytes  # a bytes bound never met exactly
        pacer.counted(len(batch), intake.taken_bytes, 12.0 if i < 3 else 0.5, intake.taken_cut)
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
async def test_a_join_waits_past_the_rebalance_timeout_whatever_the_session_timeout(
    tmp_path: Path, session: str
) -> None:
    """faust refused a session timeout past its request timeout (90 s) when it made the
    consumer, though the settings take up to 300; and a JoinGroup, answered once the
    group rejoined, timed out with the rebalance timeout at 90 s."""
    env = {"QM_METERING_DATA_DIR": str(tmp_path), "QM_METERING_SESSION_TIMEOUT": session}
    app = worker._app(MeteringSettings.from_env(env))
    conf = app.conf
    assert conf.broker_request_timeout >= conf.broker_rebalance_timeout + 5
    assert conf.broker_request_timeout >= 90.0
    consumer = app.consumer._thread._create_worker_consumer(app.transport)  # type: ignore[attr-defined]
    assert consumer._client._request_timeout_ms == conf.broker_request_timeout * 1000


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
