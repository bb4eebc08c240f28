"""Burn-rate episodes on a controlled clock."""

from __future__ import annotations

from services.metering.burnrate import BurnRate, BurnRule

CREDIT = 1_000_000
RULE = BurnRule(window_minutes=10, multiple=5.0, min_per_hour=5 * CREDIT,
                absolute_per_hour=50 * CREDIT, baseline_half_life_minutes=60,
                warm_minutes=60)  # fmt: skip
T0 = 1_800_000_000.0  # a minute boundary


def spend(b: BurnRate, user: str, minute: int, credits_per_minute: float) -> None:
    b.add(user, T0 + minute * 60 + 1, int(credits_per_minute * CREDIT))


def test_a_steady_user_never_alerts_and_a_spike_opens_one_episode() -> None:
    b = BurnRate(RULE)
    alerts = []
    for minute in range(0, 240):  # four hours at 0.05 credits a minute (3/hour)
        spend(b, "ann", minute, 0.05)
        alerts.append(b.check("ann", "ws", T0 + minute * 60 + 30))
    assert alerts == [None] * 240
    burns = []
    for minute in range(240, 260):  # then 0.5 a minute: 30/hour, 10x her usual
        spend(b, "ann", minute, 0.5)
        burns.append(b.check("ann", "ws", T0 + minute * 60 + 30))
    opened = [x for x in burns if x is not None]
    assert len(opened) == 1, "one intent per episode, not one per event"
    assert opened[0].reason == "5x or more their usual rate"
    assert opened[0].baseline_per_hour < 5 * CREDIT <= opened[0].rate_per_hour


def test_the_absolute_rate_alerts_even_a_heavy_user() -> None:
    b = BurnRate(RULE)
    for minute in range(10):
        spend(b, "bob", minute, 1.0)  # 60 credits an hour
    burn = b.check("bob", "ws", T0 + 9 * 60 + 30)
    assert burn is not None
    assert burn.rate_per_hour == 60 * CREDIT
    assert "absolute 50 credits/hour" in burn.reason


def test_an_episode_ends_when_the_rate_falls_and_a_new_one_can_open() -> None:
    b = BurnRate(RULE)
    for minute in range(10):
        spend(b, "cat", minute, 1.0)
    assert b.check("cat", "ws", T0 + 9 * 60 + 30) is not None
    assert b.check("cat", "ws", T0 + 15 * 60) is None  # still burning: same episode
    assert b.check("cat", "ws", T0 + 40 * 60) is None  # quiet: the episode closes
    for minute in range(60, 70):
        spend(b, "cat", minute, 1.0)
    assert b.check("cat", "ws", T0 + 69 * 60 + 30) is not None


def test_events_older_than_the_window_do_not_count_towards_the_rate() -> None:
    b = BurnRate(RULE)
    spend(b, "dan", 100, 0.01)
    assert b.check("dan", "ws", T0 + 100 * 60 + 30) is None
    for _ in range(100):
        spend(b, "dan", 50, 1.0)  # a backlog from 50 minutes ago, replayed
    assert b.check("dan", "ws", T0 + 100 * 60 + 40) is None


def test_a_quiet_user_below_the_minimum_rate_never_alerts() -> None:
    b = BurnRate(RULE)
    spend(b, "eve", 0, 0.5)  # 0.5 credits in 10 minutes: 3/hour, from a zero baseline
    assert b.check("eve", "ws", T0 + 30) is None


HOUR = 3600
NOW = T0 + 6 * HOUR + 25 * 60  # 25 minutes into an hour


def history(credits_per_hour: float, hours: int = 6) -> list[tuple[float, int]]:
    """Stored hourly spend (as RollupStore.spend_by_hour gives it) up to NOW's hour, the
    current hour holding the 25 minutes that passed."""
    start = NOW // HOUR * HOUR
    out = [(start - h * HOUR, int(credits_per_hour * CREDIT)) for h in range(1, hours + 1)]
    return [*out, (start, int(credits_per_hour * CREDIT * 25 / 60))]


def spend_in_window(b: BurnRate, user: str, credits_per_hour: float) -> None:
    for minute in range(10):  # the last 10 minutes at this rate
        b.add(user, NOW - minute * 60, int(credits_per_hour / 60 * CREDIT))


def test_a_baseline_rebuilt_from_stored_hours_keeps_a_steady_user_quiet() -> None:
    """Item 11: bob at his usual 6.48 credits/hour after a restart."""
    b = BurnRate(RULE)
    b.warm("bob", history(6.48), NOW)
    assert b.is_warm("bob")
    spend_in_window(b, "bob", 6.48)
    assert b.check("bob", "ws", NOW) is None
    assert b.check("bob", "ws", NOW + 60) is None


def test_what_a_restart_did_before_a_baseline_of_zero_alerts_at_the_usual_rate() -> None:
    """The issue's failure, kept as the rule with no warm-up: baseline 0 alerts."""
    b = BurnRate(BurnRule(**{**RULE.__dict__, "warm_minutes": 0}))
    spend_in_window(b, "bob", 6.48)
    burn = b.check("bob", "ws", NOW)
    assert burn is not None
    assert burn.baseline_per_hour == 0


def test_a_user_without_history_is_not_warm_and_does_not_alert_by_the_multiple() -> None:
    b = BurnRate(RULE)
    b.warm("dave", [], NOW)
    spend_in_window(b, "dave", 6.48)
    assert b.check("dave", "ws", NOW) is None
    assert not b.is_warm("dave")
    spend_in_window(b, "dave", 60.0)  # the absolute rule needs no baseline
    burn = b.check("dave", "ws", NOW)
    assert burn is not None
    assert "absolute" in burn.reason


def test_a_user_whose_rate_truly_jumps_is_told_against_the_rebuilt_baseline() -> None:
    b = BurnRate(RULE)
    b.warm("carol", history(1.2), NOW)
    spend_in_window(b, "carol", 12.0)
    burn = b.check("carol", "ws", NOW)
    assert burn is not None
    assert burn.reason == "5x or more their usual rate"
    assert 1.0 * CREDIT < burn.baseline_per_hour <= 1.2 * CREDIT


def test_a_new_steady_user_is_never_told_once_warm() -> None:
    """The baseline is an average of the minutes since the first spend (bias corrected):
    started at zero, it would call 6 credits/hour unusual for hours after the warm-up."""
    b = BurnRate(RULE)
    alerts = []
    for minute in range(180):
        spend(b, "fay", minute, 0.108)  # 6.48 credits an hour
        alerts.append(b.check("fay", "ws", T0 + minute * 60 + 30))
    assert alerts == [None] * 180
    assert b.is_warm("fay")


def test_users_of_revoked_partitions_are_forgotten() -> None:
    b = BurnRate(RULE)
    b.warm("bob", history(6.48), NOW)
    b.warm("carol", history(1.2), NOW)
    assert b.forget(lambda user: user == "bob") == 1
    assert (b.known("bob"), b.known("carol")) == (False, True)
