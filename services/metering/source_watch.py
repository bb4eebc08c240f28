"""The DLQ limit on the counting path: feeds each committed batch's records per source to
`SourceLimits` and, when a source goes over its limit, tells operators once: an ERROR
log line, the metric `qm_metering_dlq_source_episodes_total{source}` and an `ANOMALY`
notification intent (`quartermaster.notifications`) to the configured recipient.

Nothing here holds counting back: it runs after a batch is committed, whose bad
records are already in the DLQ and good ones counted. An intent lost to a crash or a
broker that does not answer is advice lost, not money: a failed publish is logged and
not retried (the source stays over its limit, so the metric still shows it).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import UTC, datetime

from quartermaster.notifications import NotificationPublisher, intent
from quartermaster.v1 import notifications_pb2
from services.metering.aggregate import Plan
from services.metering.dead_letter import short_reason
from services.metering.dlq_limit import SourceLimits
from services.metering.metrics import MeteringMetrics

log = logging.getLogger("qm.metering")
# data["anomaly"] of the intent, telling it from a burn-rate one (same kind)
ANOMALY = "dlq_source"


def source_intent(
    source: str,
    limits: SourceLimits,
    reason: str,
    recipient: str,
    workspace_id: str,
    now: datetime,
) -> notifications_pb2.Notification:
    """The intent for `source` going over its limit (`reason`: one of its records' DLQ
    reason). Its dedupe key names the source and the minute the episode opened."""
    counts = limits.get(source)
    ratio = counts.ratio if counts is not None else 1.0
    window = limits.limit.window
    return intent(
        dedupe_key=f"anomaly:dlq-source:{source}:{int(now.timestamp() // 60)}",
        kind=notifications_pb2.NOTIFICATION_KIND_ANOMALY,
        workspace_id=workspace_id,
        recipient_user_id=recipient,
        subject=f"Usage from {source!r} is mostly rejected",
        body=(
            f"{ratio:.0%} of the last ~{window} usage records from source {source!r} "
            f"were invalid and went to the dead-letter topic. Metering keeps counting "
            f"every valid record, this source's too; fix the producer, then replay its "
            f"records from the DLQ (header qm-source). One reason: {reason}"
        ),
        data={
            "anomaly": ANOMALY,
            "source": source,
            "invalid_ratio": f"{ratio:.3f}",
            "window_records": str(window),
            "reason": reason,
        },
        created_at=now,
    )


class SourceWatch:
    """Watches committed batches for sources over their DLQ limit (see the module
    docstring). `recipient` is who is told (a directory user id or an alias the
    notifier knows); `workspace_id` the workspace the intents name."""

    def __init__(
        self,
        limits: SourceLimits,
        notifications: NotificationPublisher,
        metrics: MeteringMetrics,
        recipient: str,
        workspace_id: str,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.limits = limits
        self._notifications = notifications
        self._metrics = metrics
        self._recipient = recipient
        self._workspace_id = workspace_id
        self._clock = clock

    async def watch(self, plan: Plan) -> None:
        """Add a committed plan's records per source; tell of each episode that opened."""
        if not plan.sources:
            return
        now = self._clock()
        counts = {s: (v, i) for s, (v, i) in plan.sources.items()}
        opened = self.limits.record(counts, now.timestamp())
        self._metrics.sources_over = self.limits.over()
        notes = []
        for source in opened:
            first = next((r.reason for r in plan.rejects if r.source == source), "?")
            reason = short_reason(first)
            counted = self.limits.get(source)
            log.error(
                "DLQ limit: source %r is over its limit (%.0f%% of its recent records "
                "invalid); its bad records go on to the DLQ and every valid record is "
                "counted. One reason: %s",
                source, 100 * (counted.ratio if counted else 1.0), reason,
            )  # fmt: skip
            self._metrics.episode(source)
            notes.append(
                source_intent(source, self.limits, reason, self._recipient, self._workspace_id, now)
            )
        try:
            await self._notifications.publish(notes)
        except OSError as exc:
            log.warning("could not publish %d DLQ-limit intent(s): %s", len(notes), exc)
