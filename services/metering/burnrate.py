"""Burn-rate anomalies: the unattended agent loop that spends a month's budget in an hour.

Per user, in memory, from event time: spend per minute for the last `window` minutes
(a sliding window that hops a minute at a time), and a baseline — an exponentially
weighted average of the user's spend per minute with a `baseline_half_life` (minutes
leaving the window are folded in, so memory stays at `window` numbers a user). A user
is burning when their rate over the window is at least `absolute_per_hour`, or at least
`min_per_hour` and `multiple` times their baseline. One intent per episode: an
episode ends when the rate falls below half the threshold that opened it.

The baseline averages the minutes since the user's first known spend only (bias
corrected: an average started at zero would call any user's usual rate tiny for
hours). It is *warm* once it covers `warm_minutes` of history; a baseline that is not
warm never alerts (the absolute rule, which needs no baseline, still does).

After a restart or a new partition assignment, a user's baseline is rebuilt from their
stored hourly rollups (`warm`, on their first event; see `burn_watch`), each hour's
spend spread evenly over its minutes. An alert lost to a crash is not replayed:
alerts are advice, not accounting.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

MINUTE = 60
MAX_HISTORY_HOURS = 7 * 24


@dataclass(frozen=True)
class BurnRule:
    """When a user's spend counts as burning (see the module docstring)."""

    window_minutes: int = 10
    multiple: float = 5.0
    min_per_hour: int = 5_000_000  # micros an hour: 5 credits
    absolute_per_hour: int = 50_000_000  # 50 credits an hour
    baseline_half_life_minutes: float = 360.0
    warm_minutes: int = 60

    @property
    def decay(self) -> float:
        return float(0.5 ** (1.0 / self.baseline_half_life_minutes))

    @property
    def history_hours(self) -> int:
        """Hours of stored rollups a baseline is rebuilt from: four half-lives (older
        spend weighs under 1/16), at least the warm-up and the window, at most a week."""
        needed = max(4 * self.baseline_half_life_minutes, self.warm_minutes + self.window_minutes)
        return min(MAX_HISTORY_HOURS, math.ceil(needed / 60) + 1)


@dataclass
class _User:
    minutes: dict[int, int] = field(default_factory=dict)  # minute → micros
    # EWMA of micros per minute since `since`, and the EWMA of 1 over the same minutes
    # (1 - decay^minutes): their quotient is the bias-corrected baseline.
    baseline: float = 0.0
    weight: float = 0.0
    since: int | None = None  # the first minute of known spend folded in
    folded_through: int | None = None  # the last minute folded into `baseline`
    threshold: float | None = None  # set while an episode is open

    def fold(self, minutes: int, per_minute: float, decay: float) -> None:
        """Fold `minutes` minutes of `per_minute` micros each (0: quiet minutes)."""
        if minutes <= 0 or self.since is None:
            return
        keep = decay**minutes
        self.baseline = self.baseline * keep + per_minute * (1 - keep)
        self.weight = self.weight * keep + (1 - keep)

    @property
    def usual(self) -> float:
        """The baseline, micros per minute (0 before any history)."""
        return self.baseline / self.weight if self.weight > 0 else 0.0


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

    def known(self, user_id: str) -> bool:
        """Has this user a baseline here (live or `warm`ed)?"""
        return user_id in self._users

    def forget(self, which: Callable[[str], bool]) -> int:
        """Drop the users `which` says (their partition went to another worker, whose
        counting this one no longer sees); how many were dropped."""
        gone = [u for u in self._users if which(u)]
        for u in gone:
            del self._users[u]
        return len(gone)

    def warm(self, user_id: str, hours: Iterable[tuple[float, int]], now: float) -> None:
        """Rebuild `user_id`'s baseline from stored history: `hours` of (hour start in
        epoch seconds, micros spent in it), any order, the hour of `now` included if
        any. Each hour's spend is spread evenly over its minutes that had passed by
        `now`; only minutes before the window are folded (the window fills with the
        events that follow). Replaces what was known of the user."""
        rule, decay = self.rule, self.rule.decay
        now_minute = int(now // MINUTE)
        oldest_kept = now_minute - rule.window_minutes + 1
        u = _User(folded_through=oldest_kept - 1)
        cursor = 0  # the next minute to fold
        for start, micros in sorted(hours):
            first = int(start // MINUTE)
            elapsed = min(60, max(1, now_minute - first))
            n = min(elapsed, oldest_kept - first)
            if n <= 0 or micros <= 0:
                continue
            if u.since is None:
                u.since = first
            else:
                u.fold(first - cursor, 0.0, decay)  # quiet minutes between
            u.fold(n, micros / elapsed, decay)
            cursor = first + n
        if u.since is not None:
            u.fold(oldest_kept - cursor, 0.0, decay)
        self._users[user_id] = u

    def add(self, user_id: str, at: float, micros: int) -> None:
        """Count `micros` spent at epoch second `at`."""
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
        decay = self.rule.decay
        for m in sorted(m for m in u.minutes if m < oldest_kept):
            if u.folded_through is not None:
                u.fold(m - u.folded_through - 1, 0.0, decay)  # quiet minutes
            if u.since is None:
                u.since = m
            u.fold(1, u.minutes.pop(m), decay)
            u.folded_through = m
        if u.folded_through is None or u.folded_through < oldest_kept - 1:
            if u.folded_through is not None:
                u.fold(oldest_kept - 1 - u.folded_through, 0.0, decay)
            u.folded_through = oldest_kept - 1

    def is_warm(self, user_id: str) -> bool:
        """Does the user's baseline cover `warm_minutes` of history (as of the last
        `check`)?"""
        u = self._users.get(user_id)
        return u is not None and self._warm(u)

    def _warm(self, u: _User) -> bool:
        if self.rule.warm_minutes == 0:
            return True
        if u.since is None or u.folded_through is None:
            return False
        return u.folded_through - u.since + 1 >= self.rule.warm_minutes

    def check(self, user_id: str, workspace_id: str, now: float) -> Burn | None:
        """After adding a user's events: a Burn if an episode opens now. The multiple
        rule needs a warm baseline; the absolute one does not."""
        u = self._users.get(user_id)
        if u is None:
            return None
        now_minute = int(now // MINUTE)
        self._fold(u, now_minute)
        rule = self.rule
        rate = sum(u.minutes.values()) * 60 // rule.window_minutes  # micros an hour
        baseline = int(u.usual * 60)
        if u.threshold is not None:
            if rate < u.threshold / 2:
                u.threshold = None  # the episode is over
            return None
        if rate >= rule.absolute_per_hour:
            reason = f"at least the absolute {rule.absolute_per_hour / 1e6:g} credits/hour"
            u.threshold = rule.absolute_per_hour
        elif rate >= rule.min_per_hour and rate >= rule.multiple * baseline and self._warm(u):
            reason = f"{rule.multiple:g}x or more their usual rate"
            u.threshold = max(rule.min_per_hour, rule.multiple * baseline)
        else:
            return None
        return Burn(user_id, workspace_id, now_minute, rate, baseline, reason)
