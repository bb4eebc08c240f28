"""Burn-rate anomalies: the unattended agent loop that spends a month's budget in an hour.

Per user, in memory, from event time: spend per minute for the last `window` minutes
(a sliding window that hops a minute at a time), and a baseline — an exponentially
weighted average of the user's spend per minute with a `baseline_half_life` (minutes
leaving the window are folded in, so memory stays at `window` numbers a user). A user
is burning when their rate over the window is at least `absolute_per_hour`, or at least
`min_per_hour` and `multiple` times their baseline. One intent per episode: an
episode ends when the rate falls below half the threshold that opened it.

State is rebuilt from traffic after a restart (a baseline starts at zero then, so the
multiple rule is quiet until `min_per_hour` is passed): alerts are advice, not
accounting, and are not replayed.
"""

from __future__ import annotations

from dataclasses import dataclass, field

MINUTE = 60


@dataclass(frozen=True)
class BurnRule:
    """When a user's spend counts as burning (see the module docstring)."""

    window_minutes: int = 10
    multiple: float = 5.0
    min_per_hour: int = 5_000_000  # micros an hour: 5 credits
    absolute_per_hour: int = 50_000_000  # 50 credits an hour
    baseline_half_life_minutes: float = 360.0

    @property
    def decay(self) -> float:
        return float(0.5 ** (1.0 / self.baseline_half_life_minutes))


@dataclass
class _User:
    minutes: dict[int, int] = field(default_factory=dict)  # minute → micros
    baseline: float = 0.0  # micros per minute, EWMA
    folded_through: int | None = None  # the last minute folded into `baseline`
    threshold: float | None = None  # set while an episode is open


@dataclass(frozen=True)
class Burn:
    """An episode opening: what the notification says."""

    user_id: str
    workspace_id: str
    minute: int  # when it opened (epoch minute)
    rate_per_hour: int
    baseline_per_hour: int
    reason: str


class BurnRate:
    """Every user's recent spend per minute and baseline; `add` events, then `check`."""

    def __init__(self, rule: BurnRule) -> None:
        self.rule = rule
        self._users: dict[str, _User] = {}

    def __len__(self) -> int:
        return len(self._users)

    def add(self, user_id: str, at: float, micros: int) -> None:
        u = self._users.get(user_id)
        if u is None:
            u = self._users[user_id] = _User()
        minute = int(at // MINUTE)
        if u.folded_through is not None and minute <= u.folded_through:
            return  # older than the window: it no longer changes the rate
        u.minutes[minute] = u.minutes.get(minute, 0) + micros

    def _fold(self, u: _User, now_minute: int) -> None:
        """Fold minutes that left the window into the baseline."""
        oldest_kept = now_minute - self.rule.window_minutes + 1
        leaving = sorted(m for m in u.minutes if m < oldest_kept)
        decay = self.rule.decay
        for m in leaving:
            if u.folded_through is not None:
                u.baseline *= decay ** max(0, m - u.folded_through - 1)  # quiet minutes
            u.baseline = u.baseline * decay + u.minutes.pop(m) * (1 - decay)
            u.folded_through = m
        if u.folded_through is None or u.folded_through < oldest_kept - 1:
            if u.folded_through is not None:
                u.baseline *= decay ** (oldest_kept - 1 - u.folded_through)
            u.folded_through = oldest_kept - 1

    def check(self, user_id: str, workspace_id: str, now: float) -> Burn | None:
        """After adding a user's events: a Burn if an episode opens now."""
        u = self._users.get(user_id)
        if u is None:
            return None
        now_minute = int(now // MINUTE)
        self._fold(u, now_minute)
        rule = self.rule
        rate = sum(u.minutes.values()) * 60 // rule.window_minutes  # micros an hour
        baseline = int(u.baseline * 60)
        if u.threshold is not None:
            if rate < u.threshold / 2:
                u.threshold = None  # the episode is over
            return None
        if rate >= rule.absolute_per_hour:
            reason = f"at least the absolute {rule.absolute_per_hour / 1e6:g} credits/hour"
            u.threshold = rule.absolute_per_hour
        elif rate >= rule.min_per_hour and rate >= rule.multiple * baseline:
            reason = f"{rule.multiple:g}x or more their usual rate"
            u.threshold = max(rule.min_per_hour, rule.multiple * baseline)
        else:
            return None
        return Burn(user_id, workspace_id, now_minute, rate, baseline, reason)
