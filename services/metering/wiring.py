"""The one place metering's object graphs are built: the counting worker's, the API
server's and the HTTP ingest's. Every object gets what it uses when it is
constructed; nothing is bound later. The first two need a running event loop (the
asyncpg pool binds to it).

The API's modules (its servicers, the Cost API's store, the directory client) and the
ingest's are imported by `build_api` / `build_ingest` only: the counting worker, which
imports this module too, would otherwise hold them in memory for nothing (~2 MB of
RSS, measured).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

import asyncpg

from quartermaster.db import service_pool
from quartermaster.notifications import NotificationPublisher
from quartermaster.publisher import Publisher
from quartermaster.topics import Topic
from services.metering.aggregate import Meter
from services.metering.broker_view import BrokerView
from services.metering.burn_watch import BurnWatch
from services.metering.burnrate import BurnRate, BurnRule
from services.metering.dlq_limit import DlqLimit, SourceLimits
from services.metering.metrics import MeteringMetrics
from services.metering.pricing import PriceCatalog
from services.metering.processor import Processor
from services.metering.settings import MeteringSettings
from services.metering.source_watch import SourceWatch
from services.metering.stores.catalog import CatalogStore, Follower
from services.metering.stores.counting import CountingStore
from services.metering.stores.rollups import RollupStore
from services.metering.stores.topics import TopicStore
from services.metering.topic_guard import TopicGuard

if TYPE_CHECKING:
    from quartermaster.directory_client import DirectoryClient
    from services.metering.cost_servicer import UsageServicer
    from services.metering.ingest_http import Ingest
    from services.metering.price_servicer import PriceCatalogServicer

log = logging.getLogger("qm.metering")
MICROS = 1_000_000


@dataclass(frozen=True)
class Counting:
    """The counting worker's graph: what its counting loop and timers call (`worker`)."""

    pool: asyncpg.Pool
    processor: Processor
    prices: Follower
    guard: TopicGuard
    metrics: MeteringMetrics


def burn_rule(settings: MeteringSettings) -> BurnRule:
    """The burn-rate rule from QM_METERING_BURN_* (credits converted to micro-credits)."""
    return BurnRule(
        window_minutes=settings.burn_window_minutes,
        multiple=settings.burn_multiple,
        min_per_hour=settings.burn_min_credits_per_hour * MICROS,
        absolute_per_hour=settings.burn_absolute_credits_per_hour * MICROS,
        baseline_half_life_minutes=settings.burn_half_life_minutes,
        warm_minutes=settings.burn_warm_minutes,
    )


def dlq_limit(settings: MeteringSettings) -> DlqLimit:
    """The per-source DLQ limit from QM_METERING_DLQ_*."""
    return DlqLimit(
        window=settings.dlq_window,
        max_ratio=settings.dlq_max_ratio,
        min_invalid=settings.dlq_min_invalid,
        max_sources=settings.dlq_max_sources,
        idle_seconds=settings.dlq_source_idle_seconds,
    )


async def build_counting(settings: MeteringSettings, catalog: PriceCatalog) -> Counting:
    """Connect to Postgres, seed the price catalog with `catalog` when there is none,
    and build the counting path on the revision in force."""
    pool = await service_pool(settings, max_size=4)
    catalogs = CatalogStore(pool)
    seeded = await catalogs.seed(catalog, str(settings.prices_file))
    log.info("prices: catalog revision %d in force", seeded.revision)
    meter = Meter(
        seeded.catalog,
        settings.timezone,
        settings.topic_partitions,
        settings.workspace_id,
        max_age=timedelta(days=settings.max_event_age_days),
        dedupe_window=timedelta(hours=settings.dedupe_hours),
        clock=lambda: datetime.now(UTC),
        reject_unpriced=settings.unpriced == "reject",
    )
    publisher = Publisher(settings.kafka_bootstrap)
    rollups = RollupStore(pool)
    guard = topic_guard(settings, pool)
    notifications = NotificationPublisher(publisher)
    metrics = MeteringMetrics()
    processor = Processor(
        meter,
        CountingStore(pool, settings.app_id, Topic.USAGE.value, rollups),
        rollups,
        publisher,
        retry_seconds=1.0,
        burn=BurnWatch(
            BurnRate(burn_rule(settings)),
            notifications,
            history=rollups.spend_by_hour,
            partitions=settings.topic_partitions,
        ),
        guard=guard,
        metrics=metrics,
        sources=SourceWatch(
            SourceLimits(dlq_limit(settings)),
            notifications,
            metrics,
            recipient=settings.alert_recipient,
            workspace_id=settings.workspace_id,
        ),
    )
    follower = Follower(catalogs, seeded, meter.use_catalog)
    return Counting(pool, processor, follower, guard, metrics)


def topic_guard(settings: MeteringSettings, pool: asyncpg.Pool) -> TopicGuard:
    """The check of the broker's topics against the stored offsets and marks (the
    worker's, and the CLI's `topic` commands')."""
    store = TopicStore(pool, settings.app_id, Topic.USAGE.value, Topic.USAGE_TOTALS.value)
    return TopicGuard(BrokerView(settings.kafka_bootstrap), store, settings.topic_partitions)


@dataclass(frozen=True)
class Api:
    """The API server's graph: its servicers and what must be closed after them."""

    pool: asyncpg.Pool
    usage: UsageServicer
    prices: PriceCatalogServicer
    directory: DirectoryClient


async def build_api(settings: MeteringSettings) -> Api:
    """Connect to Postgres and seed the price catalog from QM_METERING_PRICES when there
    is none (CatalogError when that file is wrong; the pool is closed then)."""
    from quartermaster.directory_client import DirectoryClient
    from services.metering.cost_servicer import UsageServicer
    from services.metering.price_servicer import PriceCatalogServicer
    from services.metering.stores.usage import UsageStore

    pool = await service_pool(settings)
    catalogs = CatalogStore(pool)
    try:
        await catalogs.seed(PriceCatalog.from_file(settings.prices_file), str(settings.prices_file))
    except BaseException:
        await pool.close()
        raise
    directory = DirectoryClient(
        settings.directory_addr,
        source="QM_DIRECTORY_ADDR",
        tls=settings.client_tls,
        token=settings.directory_token,
    )
    return Api(
        pool,
        UsageServicer(UsageStore(pool, settings.timezone), directory, settings.timezone),
        PriceCatalogServicer(catalogs),
        directory,
    )


def build_ingest(settings: MeteringSettings) -> Ingest:
    """The HTTP ingest's graph: its producer (started: its poll thread runs) and the
    endpoints over it. It needs no Postgres, only the broker; needs a running event
    loop only for serving."""
    from services.metering.ingest_http import Ingest, Reporters
    from services.metering.ingest_producer import IngestProducer

    producer = IngestProducer(
        settings.kafka_bootstrap,
        Topic.USAGE.value,
        queue_events=settings.ingest_queue_events,
        delivery_timeout=settings.ingest_delivery_timeout_seconds,
    )
    return Ingest(
        producer,
        Reporters(settings.grants),
        max_body=settings.ingest_max_body_bytes,
        max_age=timedelta(days=settings.max_event_age_days),
        retry_after=settings.ingest_retry_after_seconds,
        workspace=settings.workspace_id,
    )
