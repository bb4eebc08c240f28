"""Logging and OpenTelemetry set-up, and W3C trace context over Kafka headers.

Traces (issue 17, item 3) are on only when an exporter is configured: with
`OTEL_EXPORTER_OTLP_ENDPOINT` (or `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`) set, spans go
there over OTLP/gRPC, configured by OpenTelemetry's own OTEL_EXPORTER_OTLP_* variables
(headers, certificate, timeout; see the OpenTelemetry SDK's environment variables
spec). Then every gRPC server and client call has a span (opentelemetry-instrumentation
-grpc), every Kafka record we send carries the sender's `traceparent`, metering's
batch span links the spans of the usage events it counted, and policy's span for a
totals record is a child of the batch that published it. Off, none of that runs: the
gRPC interceptors are not installed and no header is parsed.
"""

from __future__ import annotations

import functools
import logging
import os
from collections.abc import Iterable, Mapping
from typing import Any

from opentelemetry import metrics, propagate, trace
from opentelemetry.exporter.prometheus import PrometheusMetricReader
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter

from quartermaster import liveness as probes
from quartermaster.redact import mask_urls

LOG_FORMAT = "%(asctime)s %(levelname)-5s %(name)s: %(message)s"
OTLP_ENDPOINTS = ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT")
# OpenTelemetry's default span limit: a batch of 5,000 events links its first 128.
MAX_LINKS = 128
_tracing = False


def tracing() -> bool:
    """Whether spans are exported (an OTLP endpoint is set, or a test turned them on)."""
    return _tracing


def trace_to(provider: TracerProvider) -> None:
    """Turn tracing on with `provider` (its processors decide where spans go): what
    `setup` does with an OTLP exporter, and a test with an in-memory one. Servers and
    clients made after this are traced."""
    global _tracing
    if trace.get_tracer_provider() is not provider:
        trace.set_tracer_provider(provider)  # once per process; OpenTelemetry warns after
    _tracing = True


def stop_tracing() -> None:
    """Servers and clients made after this are not traced (tests turn tracing off)."""
    global _tracing
    _tracing = False


def setup(
    service: str,
    log_level: str = "INFO",
    console_spans: bool = False,
    metrics_addr: str = "",
    liveness: probes.Liveness = lambda: "",
) -> None:
    """Logging and tracing; with `metrics_addr` (host:port) also the process's
    OpenTelemetry metrics, served at http://<metrics_addr>/metrics for Prometheus, and
    http://<metrics_addr>/livez answering from `liveness` (quartermaster.liveness)."""
    logging.basicConfig(level=log_level.upper(), format=LOG_FORMAT, force=True)
    mask_passwords_in_logs()
    logging.getLogger("asyncpg.pool").addFilter(_one_line)
    provider = TracerProvider(resource=Resource.create({"service.name": f"qm-{service}"}))
    if console_spans:
        provider.add_span_processor(BatchSpanProcessor(ConsoleSpanExporter()))
    if any(os.environ.get(name) for name in OTLP_ENDPOINTS):
        # Imported only here: the exporter pulls grpc's OTLP stubs.
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
        trace_to(provider)
        logging.getLogger("qm.telemetry").info(
            "traces exported over OTLP to %s",
            next(os.environ[n] for n in OTLP_ENDPOINTS if os.environ.get(n)),
        )
    else:
        trace.set_tracer_provider(provider)
    if metrics_addr:
        host, _, port = metrics_addr.rpartition(":")
        readers = [PrometheusMetricReader()]
        metrics.set_meter_provider(
            MeterProvider(resource=provider.resource, metric_readers=readers)
        )
        try:
            probes.serve(host, int(port), liveness)  # a daemon thread
        except OSError as exc:
            raise SystemExit(f"{service}: cannot serve metrics on {metrics_addr}: {exc}") from None
        logging.getLogger("qm.telemetry").info("metrics on http://%s/metrics", metrics_addr)


def _one_line(record: logging.LogRecord) -> bool:
    """asyncpg's pool logs "Failed to restore the pool connection floor; retrying" with
    a 40-line traceback at each retry while PostgreSQL is away (8 times in a 10 s
    outage, in every service): the reason goes on the line instead, the traceback not
    at all (it is always asyncpg's connect, and says nothing the reason does not)."""
    if record.exc_info and record.exc_info[1] is not None:
        exc = record.exc_info[1]
        record.msg = f"{record.getMessage()}: {type(exc).__name__}: {exc}"
        record.args, record.exc_info, record.exc_text = None, None, None
    return True


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
    writes it: done where records are made rather than in a handler, so a handler added
    or replaced later (logging.basicConfig(force=True), a test's) writes them masked too.
    Calling it again changes nothing."""
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


def server_interceptors() -> list[Any]:
    """The gRPC server interceptors of tracing (a span per call, continuing the
    caller's trace); none when tracing is off."""
    if not _tracing:
        return []
    from opentelemetry.instrumentation.grpc import aio_server_interceptor

    return [aio_server_interceptor()]  # type: ignore[no-untyped-call]


def client_interceptors() -> list[Any]:
    """The grpc.aio client interceptors of tracing (a span per call, the trace context
    sent in its metadata); none when tracing is off."""
    if not _tracing:
        return []
    from opentelemetry.instrumentation.grpc import aio_client_interceptors

    return list(aio_client_interceptors())  # type: ignore[no-untyped-call]


def links_of(headers: Iterable[Mapping[str, str]]) -> list[trace.Link]:
    """Links to the spans whose context the records' headers (`headers_dict` form)
    carry: at most MAX_LINKS, each span once; [] when tracing is off."""
    if not _tracing:
        return []
    links: list[trace.Link] = []
    seen: set[int] = set()
    for h in headers:
        if "traceparent" not in h:
            continue
        ctx = trace.get_current_span(propagate.extract(h)).get_span_context()
        if ctx.is_valid and ctx.span_id not in seen:
            seen.add(ctx.span_id)
            links.append(trace.Link(ctx))
            if len(links) == MAX_LINKS:
                break
    return links


def context_of(headers: Mapping[str, str]) -> Any:
    """The trace context a record's headers (`headers_dict` form) carry, to start a
    span in (None: the current one)."""
    return propagate.extract(headers) if "traceparent" in headers else None


def inject_headers() -> list[tuple[str, bytes]]:
    """The current trace context as Kafka headers (`traceparent`, `tracestate`)."""
    carrier: dict[str, str] = {}
    propagate.inject(carrier)
    return [(k, v.encode()) for k, v in carrier.items()]


HeaderValue = str | bytes | None
_PAIRS = (list, tuple)


def headers_dict(
    headers: Iterable[tuple[str, HeaderValue]] | Mapping[str, HeaderValue] | None,
) -> dict[str, str]:
    """Kafka headers (list of pairs or mapping) as a str → str dict; later keys win."""
    if headers is None:
        return {}
    # Once per consumed record: a list or tuple of pairs (what Kafka clients hand
    # over) is told apart by its type first; the Mapping check is an ABC's, slower.
    if type(headers) in _PAIRS:
        items: Iterable[tuple[str, HeaderValue]] = headers  # type: ignore[assignment]
    else:
        items = headers.items() if isinstance(headers, Mapping) else headers
    return {
        k.lower(): v if isinstance(v, str) else (v or b"").decode("utf-8", "replace")
        for k, v in items
    }


def shared_headers(
    headers: Iterable[tuple[str, HeaderValue]] | Mapping[str, HeaderValue] | None,
) -> Mapping[str, str]:
    """`headers_dict` of a consumed record's headers (a list or tuple of pairs), one
    read-only mapping for every record whose headers are the same: a consumer that
    holds many records (metering's batches, up to 100,000) keeps one dict per kind of
    record instead of one each: ~320 bytes less a record in hand, ~0.25 µs less to
    make (tracemalloc and timeit, one content-type header). Headers that differ per
    record (a producer's `traceparent`) get a mapping each, as with `headers_dict`.
    Never mutate the result: it is shared."""
    if type(headers) in _PAIRS:
        try:
            return _shared_headers(tuple(headers))  # type: ignore[arg-type]  # pairs
        except TypeError:  # a value that can't be hashed (a bytearray): not shared
            pass
    return headers_dict(headers)


@functools.lru_cache(maxsize=256)
def _shared_headers(pairs: tuple[tuple[str, HeaderValue], ...]) -> Mapping[str, str]:
    return headers_dict(pairs)
