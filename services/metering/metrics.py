"""metering's metrics, through OpenTelemetry (served for Prometheus at
QM_METERING_METRICS_ADDR; a no-op when that is empty):

- `qm_metering_events_total{outcome}`: usage events, by what became of them:
  `counted`, `duplicate` (an event_id counted within the window, not again),
  `rejected` (to the DLQ, with the reason);
- `qm_metering_unpriced_events_total{model}`: counted events priced by the fallback
  price (a model the catalog does not know, or none in force at occurred_at), by model
  (at most MAX_MODEL_LABELS names, then `(other)`): the catalog needs a price;
- `qm_metering_counted_micros_total`: spend counted, in micro-credits;
- `qm_metering_paused`: 1 while most recent records are invalid and the worker waits.
"""

from __future__ import annotations

from collections.abc import Iterable

from opentelemetry import metrics
from opentelemetry.metrics import CallbackOptions, Observation

from services.metering.aggregate import Plan

MAX_MODEL_LABELS = 200
OTHER = "(other)"


class MeteringMetrics:
    """The instruments above; `counted` records a committed batch, `paused` is read by
    the gauge."""

    def __init__(self) -> None:
        meter = metrics.get_meter("qm.metering")
        self._events = meter.create_counter(
            "qm_metering_events",
            description="Usage events by outcome (counted, duplicate, rejected)",
        )
        self._unpriced = meter.create_counter(
            "qm_metering_unpriced_events",
            description="Counted events priced by the fallback price, by model",
        )
        self._micros = meter.create_counter(
            "qm_metering_counted_micros", description="Spend counted, in micro-credits"
        )
        meter.create_observable_gauge(
            "qm_metering_paused",
            callbacks=[self._observe_paused],
            description="1 while the DLQ limit holds the worker paused",
        )
        self._models: set[str] = set()
        self.paused = False

    def _observe_paused(self, _options: CallbackOptions) -> Iterable[Observation]:
        return [Observation(1 if self.paused else 0)]

    def _model_label(self, model: str) -> str:
        if model in self._models or len(self._models) < MAX_MODEL_LABELS:
            self._models.add(model)
            return model
        return OTHER

    def counted(self, plan: Plan) -> None:
        """Record a committed batch."""
        self._events.add(plan.counted, {"outcome": "counted"})
        if plan.duplicates:
            self._events.add(plan.duplicates, {"outcome": "duplicate"})
        if plan.rejects:
            self._events.add(len(plan.rejects), {"outcome": "rejected"})
        self._micros.add(plan.micros)
        for model, n in plan.unpriced.items():
            self._unpriced.add(n, {"model": self._model_label(model)})
