"""Burn-rate watch on the counting path: feeds counted spend to `BurnRate` and publishes
one notification intent per new episode (`quartermaster.notifications`).

A user this worker has no baseline for (after a start, or a partition assignment: the
users of revoked partitions are forgotten) gets one rebuilt from their stored hourly
rollups on their first event, in one query per batch for all such users: a restart
must not make everyone look anomalous against a baseline of zero. Should that query
fail (an outage), those users start without history, which cannot alert by the
multiple rule until it is warm: a missed alert, never a false one.

It runs after a batch is committed: an intent lost to a crash here is advice lost,
not money, so a failed publish is logged and not retried.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime

from quartermaster.db import RETRIED_NEXT_ROUND, outage_text
from quartermaster.money import credits
from quartermaster.notifications import NotificationPublisher, intent
from quartermaster.partitioning import partition_of
from quartermaster.v1 import notifications_pb2
from services.metering.aggregate import Plan
from services.metering.burnrate import MINUTE, Burn, BurnRate

log = logging.getLogger("qm.metering")
# Burn-rate episodes logged one by one per batch; the rest in one line (a bad deploy
# can open thousands at once, and each has its notification intent anyway).
BURN_LOG_LINES = 5
HOUR = 3600
# (users, since) → user → [(hour start in epoch seconds, micros)]: RollupStore.spend_by_hour
History = Callable[[list[str], datetime], Awaitable[dict[str, list[tuple[float, int]]]]]


def burn_intent(burn: Burn, window: int, now: datetime) -> notifications_pb2.Notification:
    """The anomaly intent for an episode that opened (`window`: the rule's minutes)."""
    rate, usual = credits(burn.rate_per_hour), credits(burn.baseline_per_hour)
    return intent(
        dedupe_key=f"anomaly:user:{burn.user_id}:{burn.minute}",
        kind=notifications_pb2.NOTIFICATION_KIND_ANOMALY,
        workspace_id=burn.workspace_id,
        recipient_user_id=burn.user_id,
        subject=f"Unusual AI spend: {rate} credits/hour",
        body=(
            f"Over the last {window} minutes you spent at {rate} credits an hour "
            f"(usually {usual}): {burn.reason}. If an agent is looping, stop it."
        ),
        data={
            "rate_per_hour_micros": str(burn.rate_per_hour),
            "baseline_per_hour_micros": str(burn.baseline_per_hour),
            "window_minutes": str(window),
        },
        created_at=now,
    )


class BurnWatch:
    """Watches committed batches for runaway spend (see the module docstring)."""

    def __init__(
        self,
        rate: BurnRate,
        notifications: NotificationPublisher,
        history: History | None = None,
        partitions: int = 1,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        """`history` reads stored spend per hour (None: baselines start from traffic);
        `partitions` is the usage topic's partition count (for `forget`)."""
        self.rate = rate
        self._notifications = notifications
        self._history = history
        self._partitions = partitions
        self._clock = clock

    def forget(self, partitions: set[int]) -> None:
        """Drop the baselines of the users of `partitions` (revoked from this worker)."""
        n = self.rate.forget(lambda user: partition_of(user, self._partitions) in partitions)
        if n:
            log.info("burn rate: forgot %d users of revoked partitions %s", n, sorted(partitions))

    async def watch(self, plan: Plan) -> None:
        """Add a committed plan's spend per minute; publish an intent per new episode."""
        now = self._clock()
        await self._warm([u for u in plan.workspaces if not self.rate.known(u)], plan, now)
        for (user, minute), micros in plan.burn.items():
            self.rate.add(user, minute * 60, micros)
        window = self.rate.rule.window_minutes
        notes: list[notifications_pb2.Notification] = []
        for user, workspace in plan.workspaces.items():
            burn = self.rate.check(user, workspace, now.timestamp())
            if burn is None:
                continue
            if len(notes) < BURN_LOG_LINES:
                log.warning(
                    "burn-rate episode: %s at %d micros/hour (%s)",
                    user, burn.rate_per_hour, burn.reason,
                )  # fmt: skip
            notes.append(burn_intent(burn, window, now))
        if len(notes) > BURN_LOG_LINES:
            log.warning("%d more burn-rate episodes in this batch", len(notes) - BURN_LOG_LINES)
        try:
            await self._notifications.publish(notes)
        except OSError as exc:
            log.warning("could not publish %d burn-rate intent(s): %s", len(notes), exc)

    async def _warm(self, users: list[str], plan: Plan, now: datetime) -> None:
        """Rebuild `users`' baselines from their stored hourly spend. The rollups hold
        this (committed) plan too: its minutes inside the window are taken out of their
        hour, as they are added to the window next; its older minutes stay in the
        history (the window ignores them)."""
        if not users or self._history is None:
            return
        rule = self.rate.rule
        since = datetime.fromtimestamp((now.timestamp() // HOUR - rule.history_hours) * HOUR, UTC)
        try:
            history = await self._history(users, since)
        except RETRIED_NEXT_ROUND as exc:
            log.warning(
                "burn rate: could not read the history of %d user(s) (%s); their "
                "baselines start from traffic and are not warm yet", len(users), outage_text(exc)
            )  # fmt: skip
            history = {}
        now_minute = int(now.timestamp() // MINUTE)
        oldest_kept = now_minute - rule.window_minutes + 1
        in_window: dict[tuple[str, float], int] = {}
        for (user, minute), micros in plan.burn.items():
            if minute >= oldest_kept:
                key = (user, float(minute * MINUTE // HOUR * HOUR))
                in_window[key] = in_window.get(key, 0) + micros
        for user in users:
            hours = [
                (at, max(0, m - in_window.get((user, at), 0))) for at, m in history.get(user, [])
            ]
            self.rate.warm(user, hours, now.timestamp())
