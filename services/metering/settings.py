"""metering's settings (plus the shared ones): variables QM_METERING_<FIELD>, except
the Cost API's and the directory's, which are named where they are declared."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import ClassVar, Literal

from pydantic import Field, model_validator
from pydantic_settings import SettingsConfigDict

from quartermaster.config import CommonSettings
from quartermaster.settings import ExistingFile, HostPort, HostPortOrEmpty, NonBlank

DEFAULT_PRICES = Path(__file__).resolve().parent / "prices.yaml"
# Shortest QM_METERING_BATCH_SECONDS other than 0: a batch costs tens of milliseconds
# whatever its size, so a shorter target shrinks every batch to the pacer's floor.
LEAST_BATCH_SECONDS = 0.1


class MeteringSettings(CommonSettings):
    model_config = SettingsConfigDict(env_prefix="QM_METERING_")

    removed: ClassVar[Mapping[str, str]] = {
        **CommonSettings.removed,
        "QM_METERING_DATA_DIR": (
            "no longer used: the metering worker keeps no local files (it reads Kafka"
            " with confluent-kafka, no longer faust; its state is in PostgreSQL);"
            " remove it, and any writable volume mounted for it"
        ),
    }

    app_id: NonBlank = "qm-metering"
    """Consumer group; also names its offsets in Postgres"""
    prices_file: ExistingFile = Field(DEFAULT_PRICES, validation_alias="QM_METERING_PRICES")
    """Price catalog (YAML or CSV) that seeds an empty catalog; after that, load prices
    with the CLI's `prices load`"""
    prices_poll_seconds: float = Field(2.0, ge=0.1, le=3600)
    """How often a worker looks for a new price catalog revision"""
    metrics_addr: HostPortOrEmpty = "127.0.0.1:9464"
    """Where a worker serves its Prometheus metrics (/metrics) and its liveness (/livez);
    `off`: none (an empty variable means this default)"""
    topic_check_seconds: float = Field(5.0, ge=0.5, le=3600)
    """How often a worker checks that the broker's topics are still the ones its
    stored offsets count (a broker that lost its data is noticed within this; the
    worker then stops with exit status 78, see docs/operations.md)"""
    session_timeout: float = Field(10.0, ge=1, le=300)
    """Kafka consumer session timeout in seconds (a group join takes ~half of it on
    tansu)"""
    batch_max: int = Field(100_000, ge=1, le=1_000_000)
    """Most records counted in one Postgres transaction (and fetched ahead per
    partition); each costs the worker ~0.6 KB of memory while it waits and ~1.8 KB
    more while it is counted (raise the memory limit with it: docs/operations.md,
    Scale)"""
    batch_max_bytes: int = Field(16 * 1024 * 1024, ge=1024, le=1024 * 1024 * 1024)
    """Most bytes of record values counted in one Postgres transaction (~72 bytes an
    event, one a record or 200: 16 MiB is ~230,000 events); a worker that is behind
    counts batches this large, each user's totals written once a batch"""
    batch_seconds: float = Field(0.0, ge=0, le=150)
    """About how long (s) one batch may take to count: a worker that is behind shrinks
    its batches (from the two bounds above) when one takes longer, and grows them
    back while they take less. Every worker waits at a rebalance for each one's batch
    in hand, so at most half QM_METERING_SESSION_TIMEOUT, and at least 0.1; 0: that
    half"""
    batch_within: float = Field(0.05, ge=0.001, le=10)
    """Longest wait (s) to fill a batch before counting it"""
    dedupe_hours: int = Field(24, ge=1, le=24 * 14)
    """An event_id seen again within this many hours counts once"""
    max_event_age_days: int = Field(35, ge=1, le=400)
    """Events older than this go to the DLQ (late events younger count in their period)"""
    unpriced: Literal["fallback", "reject"] = "fallback"
    """An event of a model the catalog has no price for (or none in force at its time):
    `fallback` counts it at the catalog's fallback price and flags it (metric
    qm_metering_unpriced_events_total); `reject` sends it to the DLQ, to be replayed
    once a price is loaded (`cli dlq replay`)"""
    dlq_window: int = Field(1000, ge=1)
    """Recent records of one source the DLQ limit looks at (a decaying count)"""
    dlq_max_ratio: float = Field(0.5, gt=0, le=1)
    """Share of a source's recent records that may be invalid before it is over its
    limit and operators are told (its records still go to the DLQ; counting goes on)"""
    dlq_min_invalid: int = Field(100, ge=1)
    """Invalid records a source needs before it can be over its limit"""
    dlq_max_sources: int = Field(10_000, ge=1, le=1_000_000)
    """Sources the DLQ limit remembers at once (the least recently seen is forgotten)"""
    dlq_source_idle_seconds: float = Field(3600.0, ge=1, le=7 * 86_400)
    """A source not seen for this long is forgotten (an open episode ends)"""
    alert_recipient: NonBlank = "ops"
    """Who is told when a source is over its DLQ limit (a user id or an alias the
    notifier knows)"""
    fetch_max_wait_ms: int = Field(20, ge=1, le=30_000)
    """Longest a consumer fetch waits for data; tansu holds every fetch this long (real
    Kafka answers early, so 500 is fine there)"""
    api_addr: HostPort = Field("127.0.0.1:50052", validation_alias="QM_USAGE_API_ADDR")
    """Where the Cost API (UsageService) listens"""
    api_metrics_addr: HostPortOrEmpty = Field("", validation_alias="QM_USAGE_API_METRICS_ADDR")
    """Where the Cost API serves its Prometheus metrics (/metrics), e.g. 0.0.0.0:9468 (the
    chart's); empty: none"""
    api_health_addr: HostPortOrEmpty = Field("", validation_alias="QM_USAGE_API_HEALTH_ADDR")
    """Where a replica serves the gRPC health service alone, in plaintext (the kubelet's
    gRPC probes can't speak TLS), e.g. 0.0.0.0:9478 (the chart's); empty: none"""
    burn_window_minutes: int = Field(10, ge=1, le=1440)
    """Minutes over which a user's burn rate is taken"""
    burn_multiple: float = Field(5.0, gt=1)
    """Alert when a user spends this many times their usual"""
    burn_min_credits_per_hour: int = Field(5, ge=0)
    """...and at least this many credits an hour"""
    burn_absolute_credits_per_hour: int = Field(50, ge=1)
    """Alert whenever a user spends this many credits an hour"""
    burn_half_life_minutes: float = Field(360.0, ge=1)
    """How fast a user's usual rate forgets"""
    burn_warm_minutes: int = Field(60, ge=0, le=1440)
    """History a user's usual rate needs (stored rollups or live) before it can alert;
    until then only the absolute rate does"""
    directory_addr: HostPort = Field("127.0.0.1:50051", validation_alias="QM_DIRECTORY_ADDR")
    """policy's DirectoryService, which the Cost API asks for group members"""
    directory_token: str = Field("", validation_alias="QM_DIRECTORY_TOKEN")
    """The bearer token the Cost API sends to policy's DirectoryService (a credential
    of policy's QM_TOKENS with role reader). Empty: group queries are refused by policy"""
    compact_seconds: float = Field(
        60.0, ge=1, le=86_400, validation_alias="QM_USAGE_COMPACT_SECONDS"
    )
    """How often the Cost API recomputes daily rollups from 15-minute ones"""
    ingest_addr: HostPort = "127.0.0.1:8094"
    """Where the HTTP ingest (`python -m services.metering.ingest`) listens: POST
    /v1/usage, GET /healthz, GET /metrics"""
    ingest_max_body_bytes: int = Field(1_048_576, ge=1024, le=64 * 1_048_576)
    """Largest request body the HTTP ingest reads, in bytes; a larger one is answered
    413"""
    ingest_queue_events: int = Field(100_000, ge=1, le=10_000_000)
    """Events the HTTP ingest holds at once, sent and not yet confirmed by the broker; a
    body that would pass it is answered 503 with Retry-After"""
    ingest_delivery_timeout_seconds: float = Field(10.0, ge=0.1, le=300)
    """Longest the HTTP ingest waits for the broker to confirm a body's events; past
    it, 503 with Retry-After (sending the body again is safe: an event_id counts once)"""
    ingest_retry_after_seconds: int = Field(1, ge=1, le=3600)
    """Retry-After (seconds) of the HTTP ingest's 503 when it is busy or the broker slow"""

    @model_validator(mode="after")
    def _batches_within_a_rebalance(self) -> MeteringSettings:
        # The group waits for a member's batch in hand at every rebalance: no longer
        # than half what noticing a crashed member takes.
        if self.batch_seconds > self.session_timeout / 2:
            raise ValueError(
                f"QM_METERING_BATCH_SECONDS ({self.batch_seconds!r}) must be at most half"
                f" QM_METERING_SESSION_TIMEOUT ({self.session_timeout!r}): a rebalance"
                " waits for the batch in hand"
            )
        if 0 < self.batch_seconds < LEAST_BATCH_SECONDS:
            raise ValueError(
                f"QM_METERING_BATCH_SECONDS ({self.batch_seconds!r}) must be 0 (half"
                f" QM_METERING_SESSION_TIMEOUT) or at least {LEAST_BATCH_SECONDS}: a"
                " batch costs tens of milliseconds whatever its size, so a shorter"
                " target keeps every batch at the smallest"
            )
        return self

    @property
    def batch_target(self) -> float:
        """`batch_seconds`, or when it is 0 (unset) half the session timeout."""
        return self.batch_seconds or self.session_timeout / 2
