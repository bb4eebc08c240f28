"""Logging and OpenTelemetry set-up, and W3C trace context over Kafka headers."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from typing import Any

from opentelemetry import metrics, propagate, trace
from opentelemetry.exporter.prometheus import PrometheusMetricReader
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter
from prometheus_client import start_http_server

from quartermaster.redact import mask_urls

LOG_FORMAT = "%(asctime)s %(levelname)-5s %(name)s: %(message)s"


def setup(
    service: str, log_level: str = "INFO", console_spans: bool = False, metrics_addr: str = ""
) -> None:
    """Logging and tracing; with `metrics_addr` (host:port) also the process's
    OpenTelemetry metrics, served at http://<metrics_addr>/metrics for Prometheus."""
    logging.basicConfig(level=log_level.upper(), format=LOG_FORMAT, force=True)
    mask_passwords_in_logs()
    # Noisy libraries stay at WARNING unless we debug.
    for noisy in ("aiokafka", "faust", "mode", "kafka"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, logging.getLevelName(log_level)))
    provider = TracerProvider(resource=Resource.create({"service.name": f"qm-{service}"}))
    if console_spans:
        provider.add_span_processor(BatchSpanProcessor(ConsoleSpanExporter()))
    trace.set_tracer_provider(provider)
    if metrics_addr:
        host, _, port = metrics_addr.rpartition(":")
        readers = [PrometheusMetricReader()]
        metrics.set_meter_provider(
            MeterProvider(resource=provider.resource, metric_readers=readers)
        )
        try:
            start_http_server(int(port), addr=host)  # a daemon thread
        except OSError as exc:
            raise SystemExit(f"{service}: cannot serve metrics on {metrics_addr}: {exc}") from None
        logging.getLogger("qm.telemetry").info("metrics on http://%s/metrics", metrics_addr)


def metrics_for_prometheus(service: str) -> None:
    """The process's OpenTelemetry metrics readable by Prometheus through
    prometheus_client's default registry, without a server of their own: for a
    process that serves `/metrics` on its own HTTP server (metering's HTTP ingest)."""
    resource = Resource.create({"service.name": f"qm-{service}"})
    metrics.set_meter_provider(
        MeterProvider(resource=resource, metric_readers=[PrometheusMetricReader()])
    )


def mask_passwords_in_logs() -> None:
    """From now on every log record of this process shows URLs without their passwords
    (`quartermaster.redact`), its message and its traceback alike, whichever handler
    writes it: done where records are made, since faust replaces the handlers. Calling
    it again changes nothing."""
    make = logging.getLogRecordFactory()
    if getattr(make, "masks_passwords", False):
        return

    def masked(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record = make(*args, **kwargs)
        try:
            message = record.getMessage()
        except (TypeError, ValueError):
            return record  # a bad format: the handler reports it, as without us
        if "://" in message:
            record.msg, record.args = mask_urls(message), None
        if record.exc_info and record.exc_info[0] is not None:
            # The formatters use exc_text when it is set instead of formatting again.
            record.exc_text = mask_urls(logging.Formatter().formatException(record.exc_info))
        return record

    masked.masks_passwords = True  # type: ignore[attr-defined]
    logging.setLogRecordFactory(masked)


def inject_headers() -> list[tuple[str, bytes]]:
    """The current trace context as Kafka headers (`traceparent`, `tracestate`)."""
    carrier: dict[str, str] = {}
    propagate.inject(carrier)
    return [(k, v.encode()) for k, v in carrier.items()]


HeaderValue = str | bytes | None


def headers_dict(
    headers: Iterable[tuple[str, HeaderValue]] | Mapping[str, HeaderValue] | None,
) -> dict[str, str]:
    """Kafka headers (list of pairs or mapping) as a str → str dict; later keys win."""
    if headers is None:
        return {}
    items = headers.items() if isinstance(headers, Mapping) else headers
    return {
        k.lower(): v if isinstance(v, str) else (v or b"").decode("utf-8", "replace")
        for k, v in items
    }
