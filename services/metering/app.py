"""The faust application: price each usage event and keep per-user monthly totals.

Flow per record of `qm.usage.v1`:
  decode + validate → price with the catalog in force at occurred_at → add to the
  user's total for the calendar month (faust table, changelog-backed) → publish the
  new absolute `UsageTotal` to `qm.usage.totals.v1`.
A record that cannot be used goes to `qm.usage.dlq.v1` unchanged, with the reason in
the `qm-error` header and its origin in `qm-origin-*` headers; the stream goes on.

At-least-once today: faust acks the offset after the agent returns for the record;
a crash between the table write and the ack replays the record. Deduplication by
event_id and the kill-test guarantee are the metering issue's work.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import Any

import faust
from google.protobuf.timestamp_pb2 import Timestamp
from opentelemetry import propagate, trace

from quartermaster.periods import PeriodKind, period_of
from quartermaster.telemetry import headers_dict
from quartermaster.topics import (
    CONTENT_TYPE,
    ERROR_HEADER,
    ORIGIN_OFFSET_HEADER,
    ORIGIN_PARTITION_HEADER,
    ORIGIN_TOPIC_HEADER,
    PROTOBUF,
    Topic,
)
from quartermaster.v1 import usage_pb2
from services.metering import transport
from services.metering.decode import InvalidUsage, decode, occurred_at, tokens
from services.metering.pricing import PriceCatalog
from services.metering.settings import MeteringSettings

log = logging.getLogger("qm.metering")
tracer = trace.get_tracer("qm.metering")


def _ts(at: datetime) -> Timestamp:
    ts = Timestamp()
    ts.FromDatetime(at)
    return ts


def create_app(settings: MeteringSettings, catalog: PriceCatalog) -> faust.App:
    transport.register(settings.fetch_max_wait_ms)
    app = faust.App(
        settings.app_id,
        broker=[f"{transport.SCHEME}://{s.strip()}" for s in settings.kafka_bootstrap.split(",")],
        store="memory://",
        topic_partitions=settings.topic_partitions,
        topic_replication_factor=1,
        # tansu reports a wrong end offset for multi-record batches, which stops
        # changelog recovery early; one record per batch keeps recovery exact.
        producer_max_batch_size=settings.producer_max_batch_size,
        broker_session_timeout=settings.session_timeout,
        broker_heartbeat_interval=max(0.5, settings.session_timeout / 5),
        broker_rebalance_timeout=settings.session_timeout,
        consumer_auto_offset_reset="earliest",
        web_enabled=False,
        table_standby_replicas=0,
    )
    raw: dict[str, Any] = {"key_type": bytes, "value_type": bytes, "key_serializer": "raw"}
    usage_topic = app.topic(Topic.USAGE.value, value_serializer="raw", **raw)
    totals_topic = app.topic(Topic.USAGE_TOTALS.value, value_serializer="raw", **raw)
    dlq_topic = app.topic(Topic.USAGE_DLQ.value, value_serializer="raw", **raw)
    # key "user:<user_id>:<period_key>" → [used_micros, event_count, fallback_count]
    month_totals = app.Table(
        "user_month_totals", default=None, partitions=settings.topic_partitions
    )
    tz = settings.timezone

    async def to_dlq(message: Any, reason: str) -> None:
        log.warning(
            "usage record %s[%s]@%s to DLQ: %s",
            message.topic,
            message.partition,
            message.offset,
            reason,
        )
        await dlq_topic.send(
            key=message.key,
            value=message.value if message.value is not None else b"",
            headers=[
                (ERROR_HEADER, reason.encode()[:4000]),
                (ORIGIN_TOPIC_HEADER, str(message.topic).encode()),
                (ORIGIN_PARTITION_HEADER, str(message.partition).encode()),
                (ORIGIN_OFFSET_HEADER, str(message.offset).encode()),
            ],
        )

    @app.agent(usage_topic)
    async def meter(stream: faust.StreamT[bytes]) -> None:
        async for event in stream.events():
            message = event.message
            headers = headers_dict(message.headers)
            ctx = propagate.extract(headers)
            with tracer.start_as_current_span("meter usage", context=ctx):
                try:
                    usage = decode(message.value, headers)
                    at = occurred_at(usage)
                    priced = catalog.price(usage.model, at, tokens(usage))
                except InvalidUsage as exc:
                    await to_dlq(message, str(exc))
                    continue
                except Exception as exc:  # a bug must not stall the partition
                    log.exception("unexpected error on a usage record")
                    await to_dlq(message, f"internal error: {type(exc).__name__}: {exc}")
                    continue
                if priced.fallback:
                    log.warning(
                        "model %r has no price in force; priced with the fallback", usage.model
                    )
                period = period_of(PeriodKind.MONTH, at, tz)
                key = f"user:{usage.user_id}:{period.key}"
                current = month_totals.get(key) or [0, 0, 0]
                total = [
                    current[0] + priced.micros,
                    current[1] + 1,
                    current[2] + (1 if priced.fallback else 0),
                ]
                month_totals[key] = total
                out = usage_pb2.UsageTotal(
                    workspace_id=usage.workspace_id or settings.workspace_id,
                    subject_kind=usage_pb2.SUBJECT_KIND_USER,
                    subject_id=usage.user_id,
                    period_kind=usage_pb2.PERIOD_KIND_MONTH,
                    period_key=period.key,
                    period_start=_ts(period.start),
                    period_end=_ts(period.end),
                    used_micros=total[0],
                    event_count=total[1],
                    unpriced_event_count=total[2],
                    updated_at=_ts(datetime.now(UTC)),
                )
                await totals_topic.send(
                    key=key.encode(),
                    value=out.SerializeToString(),
                    headers=[(CONTENT_TYPE, PROTOBUF.encode())],
                )

    return app
