"""Burn-rate episodes on a controlled clock."""

from __future__ import annotations

from services.metering.burnrate import BurnRate, BurnRule

CREDIT = 1_000_000
RULE = BurnRule(window_minutes=10, multiple=5.0, min_per_hour=5 * CREDIT,
                absolute_per_hour=50 * CREDIT, baseline_half_life_minutes=60)  # fmt: skip
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
