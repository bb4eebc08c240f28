"""Burn-rate watch on the counting path: feeds counted spend to `BurnRate` and publishes
one notification intent per new episode (`quartermaster.notifications`).

It runs after a batch is committed: an intent lost to a crash here is advice lost,
not money, so a failed publish is logged and not retried.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import UTC, datetime

from quartermaster.money import credits
from quartermaster.notifications import NotificationPublisher, intent
from quartermaster.v1 import notifications_pb2
from services.metering.aggregate import Plan
from services.metering.burnrate import Burn, BurnRate

log = logging.getLogger("qm.metering")
# Burn-rate episodes logged one by one per batch; the rest in one line (a bad deploy
# can open thousands at once, and each has its notification intent anyway).
BURN_LOG_LINES = 5


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
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.rate = rate
        self._notifications = notifications
        self._clock = clock

    async def watch(self, plan: Plan) -> None:
        """Add a committed plan's spend per minute; publish an intent per new episode."""
        for (user, minute), micros in plan.burn.items():
            self.rate.add(user, minute * 60, micros)
        now = self._clock()
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
