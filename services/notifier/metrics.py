"""The notifier's metrics, through OpenTelemetry (served for Prometheus at
QM_NOTIFIER_METRICS_ADDR; no-ops when that is empty):

- `qm_notifier_deliveries_total{channel, outcome}`: delivery attempts by channel
  (slack, email, webhook) and what came of them (delivered, retry, failed, disabled);
- `qm_notifier_delivery_lag_seconds{channel}`: from the intent (or request event)
  being made to its delivery being accepted, a histogram (buckets up to a day: a
  webhook retried on its schedule is delivered hours later);
- `qm_notifier_backlog{channel, state}`: deliveries not yet done (pending, retrying,
  sending) in the workspace, all replicas together, as `Backlog` last read them from
  PostgreSQL (every `every` seconds; a read that fails keeps the last numbers).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable

from opentelemetry import metrics
from opentelemetry.metrics import CallbackOptions, Observation

from quartermaster.db import RETRIED_NEXT_ROUND, outage_text
from services.notifier.stores.deliveries import DeliveryStore

log = logging.getLogger("qm.notifier.metrics")
LAG_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 1800, 7200, 86_400)


class NotifierMetrics:
    """The instruments above; `attempt` records one (sender.Observer); `backlog` is
    what the gauge shows, {(channel, state): rows}."""

    def __init__(self) -> None:
        meter = metrics.get_meter("qm.notifier")
        self._attempts = meter.create_counter(
            "qm_notifier_deliveries",
            description="Delivery attempts by channel and outcome (delivered, retry, "
            "failed, disabled)",
        )
        self._lag = meter.create_histogram(
            "qm_notifier_delivery_lag_seconds",
            unit="s",
            description="Seconds from the intent being made to its delivery being accepted",
            explicit_bucket_boundaries_advisory=LAG_BUCKETS,
        )
        meter.create_observable_gauge(
            "qm_notifier_backlog",
            callbacks=[self._observe_backlog],
            description="Deliveries not yet done (pending, retrying, sending), by channel",
        )
        self.backlog: dict[tuple[str, str], int] = {}

    def attempt(self, channel: str, outcome: str, lag_seconds: float | None) -> None:
        """One attempt on `channel` came to `outcome`; `lag_seconds` when delivered."""
        self._attempts.add(1, {"channel": channel, "outcome": outcome})
        if lag_seconds is not None:
            self._lag.record(max(lag_seconds, 0.0), {"channel": channel})

    def _observe_backlog(self, _options: CallbackOptions) -> Iterable[Observation]:
        return [Observation(n, {"channel": c, "state": s})
                for (c, s), n in sorted(self.backlog.items())]  # fmt: skip


class Backlog:
    """Every `every` seconds, the workspace's undone deliveries into `metrics.backlog`
    (the gauge's callback runs in the exporter's thread, where asyncpg can't be used)."""

    def __init__(self, store: DeliveryStore, metrics_: NotifierMetrics, every: float) -> None:
        self._store = store
        self._metrics = metrics_
        self._every = every
        self.stopping = False

    async def run(self) -> None:
        while not self.stopping:
            try:
                counts = await self._store.backlog()
                # channels that emptied show 0 rather than their last number
                self._metrics.backlog = {k: 0 for k in self._metrics.backlog} | counts
            except RETRIED_NEXT_ROUND as exc:
                log.warning(
                    "backlog not read (the gauge keeps its last numbers): %s", outage_text(exc)
                )
            await asyncio.sleep(self._every)
