"""metering's metrics, through OpenTelemetry (served for Prometheus at
QM_METERING_METRICS_ADDR; a no-op when that is empty):

- `qm_metering_events_total{outcome}`: usage events, by what became of them:
  `counted`, `duplicate` (an event_id counted within the window, not again),
  `rejected` (to the DLQ, with the reason), `forwarded` (arrived away from its user's
  partition and sent there, where it counts as `counted`);
- `qm_metering_unpriced_events_total{model}`: counted events priced by the fallback
  price (a model the catalog does not know, or none in force at occurred_at), by model
  (at most MAX_MODEL_LABELS names, then `(other)`): the catalog needs a price;
- `qm_metering_counted_micros_total`: spend counted, in micro-credits;
- `qm_metering_call_endings_total{ending}`: counted events by how their call ended
  (UsageEvent.ending): `completed` (or not said), `incomplete` (stopped early: output
  limit, content filter), `failed`, `cut_off` (a stream cut before its end: the tokens
  are a lower bound of what was billed). A rise in cut_off is lost usage to look into;
- `qm_metering_dlq_source_episodes_total{source}`: how many times a source went over
  its DLQ limit (`dlq_limit`): once per episode, not per record;
- `qm_metering_dlq_source_over_limit{source}`: 1 for each source over its limit now;
- `qm_metering_batch_duration_seconds`: a histogram of the time to count one batch
  (plan, Postgres commit, totals published), in seconds;
- `qm_metering_consumer_lag{partition}`: records of each partition this worker holds
  that are not yet counted (the broker's end offset as the consumer last heard it,
  minus the next offset to count). Growing lag is counting falling behind: budgets
  are enforced on older totals.

Label values that come from input (models, sources) are bounded: at most
MAX_MODEL_LABELS / MAX_SOURCE_LABELS distinct values, then `(other)`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from opentelemetry import metrics
from opentelemetry.metrics import CallbackOptions, Observation

from quartermaster.v1.usage_pb2 import CallEnding
from services.metering.aggregate import Plan

MAX_MODEL_LABELS = 200
MAX_SOURCE_LABELS = 200
OTHER = "(other)"
BATCH_BOUNDS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
# UsageEvent.ending → the `ending` label (CALL_ENDING_CUT_OFF → "cut_off")
ENDINGS: dict[int, str] = {
    n: name.removeprefix("CALL_ENDING_").lower() for name, n in CallEnding.items()
}


class Labels:
    """At most `limit` distinct label values; later new ones are OTHER."""

    def __init__(self, limit: int) -> None:
        self._limit = limit
        self._seen: set[str] = set()

    def __call__(self, value: str) -> str:
        if value in self._seen or len(self._seen) < self._limit:
            self._seen.add(value)
            return value
        return OTHER


class MeteringMetrics:
    """The instruments above; `counted` records a committed batch, `episode` a source
    going over its DLQ limit; `sources_over` (the sources over it now) is read by the
    gauge."""

    def __init__(self) -> None:
        meter = metrics.get_meter("qm.metering")
        self._events = meter.create_counter(
            "qm_metering_events",
            description="Usage events by outcome (counted, duplicate, rejected, forwarded)",
        )
        self._unpriced = meter.create_counter(
            "qm_metering_unpriced_events",
            description="Counted events priced by the fallback price, by model",
        )
        self._micros = meter.create_counter(
            "qm_metering_counted_micros", description="Spend counted, in micro-credits"
        )
        self._endings = meter.create_counter(
            "qm_metering_call_endings",
            description="Counted events by how the call ended (completed, incomplete, "
            "failed, cut_off)",
        )
        self._episodes = meter.create_counter(
            "qm_metering_dlq_source_episodes",
            description="Times a source went over its DLQ limit (once per episode)",
        )
        meter.create_observable_gauge(
            "qm_metering_dlq_source_over_limit",
            callbacks=[self._observe_over],
            description="1 for each source whose recent records are mostly invalid",
        )
        self._batch = meter.create_histogram(
            "qm_metering_batch_duration", unit="s",
            description="Time to count one batch (plan, commit, publish)",
            explicit_bucket_boundaries_advisory=BATCH_BOUNDS,
        )  # fmt: skip
        meter.create_observable_gauge(
            "qm_metering_consumer_lag", callbacks=[self._observe_lag],
            description="Records of each held partition not yet counted",
        )  # fmt: skip
        # partition → the next offset to count; set by the worker, dropped on revoke
        self.positions: dict[int, int] = {}
        # partition → the broker's end offset as the consumer last heard (None: unknown)
        self.end_offset: Callable[[int], int | None] = lambda _partition: None
        self._model_label = Labels(MAX_MODEL_LABELS)
        self._source_label = Labels(MAX_SOURCE_LABELS)
        self.sources_over: list[str] = []

    def _observe_over(self, _options: CallbackOptions) -> Iterable[Observation]:
        labels = {self._source_label(s) for s in self.sources_over}
        return [Observation(1, {"source": label}) for label in sorted(labels)]

    def _observe_lag(self, _options: CallbackOptions) -> Iterable[Observation]:
        # Called from the metrics server's thread: a copy, and no awaits.
        seen = []
        for partition, position in list(self.positions.items()):
            end = self.end_offset(partition)
            if end is not None:
                seen.append(Observation(max(0, end - position), {"partition": str(partition)}))
        return seen

    def batch(self, seconds: float) -> None:
        """A batch was counted in `seconds`."""
        self._batch.record(seconds)

    def episode(self, source: str) -> None:
        """A source went over its DLQ limit."""
        self._episodes.add(1, {"source": self._source_label(source)})

    def counted(self, plan: Plan) -> None:
        """Record a committed batch."""
        self._events.add(plan.counted, {"outcome": "counted"})
        if plan.duplicates:
            self._events.add(plan.duplicates, {"outcome": "duplicate"})
        if plan.rejects:
            self._events.add(len(plan.rejects), {"outcome": "rejected"})
        forwarded = sum(len(events) for events in plan.forwards.values())
        if forwarded:
            # sent on to the user's home partition, counted there (aggregate's docstring)
            self._events.add(forwarded, {"outcome": "forwarded"})
        self._micros.add(plan.micros)
        partial = sum(plan.partial.values())
        if plan.counted > partial:
            self._endings.add(plan.counted - partial, {"ending": "completed"})
        for ending, n in plan.partial.items():
            self._endings.add(n, {"ending": ENDINGS.get(ending, str(ending))})
        for model, n in plan.unpriced.items():
            self._unpriced.add(n, {"model": self._model_label(model)})
