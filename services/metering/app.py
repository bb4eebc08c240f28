"""The faust application: count every usage event exactly once into absolute totals.

Per batch the agent takes from `qm.usage.v1` (`noack_take`: faust acks nothing by
itself), for each partition in it (the partitions concurrently: each has its own
state and its own fenced commit):

1. plan: decode, validate, skip records below the stored offset (counted before)
   and event_ids counted in the last 24 h, price the rest and sum them;
2. fold: new absolute totals per user and day/week/month, from state loaded from
   Postgres;
3. publish rejects to the DLQ and the new totals to `qm.usage.totals.v1`, and wait
   until the broker has them. A crash after this repeats them on replay: the DLQ may
   hold a record twice; totals are absolute, so a repeat is harmless;
4. commit totals, seen ids and the next offset in one Postgres transaction, fenced
   on the offset it started from. A crash before this loses nothing (Kafka still
   has the records; nothing was acked); after it, replayed records are skipped;
5. only then ack the events, so faust's own offset commits never run ahead of
   Postgres.

Any I/O failure is retried until it succeeds; the batch is never acked half-done.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections import defaultdict
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import faust
from google.protobuf.timestamp_pb2 import Timestamp
from opentelemetry import trace

from quartermaster import kafka
from quartermaster.db import connect_pool
from quartermaster.money import credits
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
from quartermaster.v1 import notifications_pb2, usage_pb2
from quartermaster.wire import timestamp
from services.metering import transport
from services.metering.aggregate import (
    DlqLimit,
    Meter,
    PartitionState,
    Plan,
    Record,
    Total,
    TotalKey,
)
from services.metering.burnrate import Burn, BurnRate, BurnRule
from services.metering.catalog import CatalogStore, Follower
from services.metering.metrics import MeteringMetrics
from services.metering.pricing import PriceCatalog
from services.metering.settings import MeteringSettings
from services.metering.store import Store

log = logging.getLogger("qm.metering")
tracer = trace.get_tracer("qm.metering")
PERIOD_KINDS = {
    "day": usage_pb2.PERIOD_KIND_DAY,
    "week": usage_pb2.PERIOD_KIND_WEEK,
    "month": usage_pb2.PERIOD_KIND_MONTH,
}


@functools.lru_cache(maxsize=4096)
def _period_stamp(at: datetime) -> Timestamp:
    """A period boundary as a Timestamp: few distinct ones, each used by every user."""
    return timestamp(at)


def total_message(
    key: TotalKey, total: Total, now: Timestamp, settled: list[str] | None = None
) -> usage_pb2.UsageTotal:
    user, kind, period_key = key
    return usage_pb2.UsageTotal(
        workspace_id=total.workspace_id,
        subject_kind=usage_pb2.SUBJECT_KIND_USER,
        subject_id=user,
        period_kind=PERIOD_KINDS[kind],
        period_key=period_key,
        period_start=_period_stamp(total.period_start),
        period_end=_period_stamp(total.period_end),
        used_micros=total.used_micros,
        event_count=total.event_count,
        unpriced_event_count=total.fallback_count,
        updated_at=now,
        settled_request_ids=settled or [],
    )


OutRecord = kafka.OutRecord
Publisher = kafka.Publisher
# Burn-rate episodes logged one by one per batch; the rest in one line (a bad deploy
# can open thousands at once, and each has its notification intent anyway).
BURN_LOG_LINES = 5
_PROTOBUF_HEADERS: list[tuple[str, str | bytes | None]] = [(CONTENT_TYPE, PROTOBUF.encode())]


def burn_notification(burn: Burn, window: int, now: datetime) -> notifications_pb2.Notification:
    rate, usual = credits(burn.rate_per_hour), credits(burn.baseline_per_hour)
    return notifications_pb2.Notification(
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
        created_at=timestamp(now),
    )


class Processor:
    """Owns the per-partition state and runs steps 1-4 for one partition's records."""

    def __init__(
        self,
        meter: Meter,
        store: Store,
        publisher: Publisher,
        dlq_limit: DlqLimit,
        retry_seconds: float,
        burn: BurnRate | None = None,
        metrics: MeteringMetrics | None = None,
    ) -> None:
        self.meter = meter
        self.store = store
        self.publisher = publisher
        self.dlq_limit = dlq_limit
        self.retry_seconds = retry_seconds
        self.burn = burn
        self.metrics = metrics or MeteringMetrics()
        self.states: dict[int, PartitionState] = {}
        self.paused = False

    def forget(self, partitions: set[int]) -> None:
        """Drop state of partitions this worker no longer owns."""
        for p in partitions:
            self.states.pop(p, None)

    async def _state(self, partition: int) -> PartitionState:
        state = self.states.get(partition)
        if state is None:
            since = self.meter.clock() - self.meter.dedupe_window
            state = await self.store.load_partition(partition, since)
            self.states[partition] = state
            log.info(
                "partition %d: counting from offset %d (%d recent event ids)",
                partition, state.next_offset, len(state.seen),
            )  # fmt: skip
        return state

    async def count(self, partition: int, records: list[Record], pause_seconds: float) -> None:
        """process(), and while the DLQ limit holds the worker paused (most recent
        records invalid), again every `pause_seconds`, until an operator steps in."""
        await self.process(partition, records)
        while self.paused:
            await asyncio.sleep(pause_seconds)
            await self.process(partition, records)

    async def process(self, partition: int, records: list[Record]) -> None:
        """Count `records` of `partition` exactly once; retries I/O until it succeeds."""
        while True:
            try:
                if await self._attempt(partition, records):
                    return
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
                log.warning(
                    "partition %d: %s; retrying in %.1fs", partition, exc, self.retry_seconds
                )
                self.states.pop(partition, None)  # reload: we don't know what was written
            await asyncio.sleep(self.retry_seconds)

    async def _attempt(self, partition: int, records: list[Record]) -> bool:
        state = await self._state(partition)
        plan = self.meter.plan(state, records)
        if plan.invalid_records and self.dlq_limit.tripped(
            plan.valid_records, plan.invalid_records
        ):
            if not self.paused:
                log.critical(
                    "PAUSED: most recent usage records are invalid (%d of %d in this batch); "
                    "not routing them to the DLQ. Fix the producer, then restart metering. "
                    "First reason: %s",
                    plan.invalid_records,
                    plan.valid_records + plan.invalid_records,
                    plan.rejects[0].reason if plan.rejects else "?",
                )
            self.paused = self.metrics.paused = True
            return False
        self.paused = self.metrics.paused = False
        missing = plan.keys() - state.totals.keys()
        state.totals.update(await self.store.load_totals(missing))
        missing_rollups = state.rollups_to_load(plan.rollup_keys())
        state.rollups.update(await self.store.load_rollups(missing_rollups))
        changed = self.meter.fold(state, plan)
        rollups = self.meter.fold_rollups(state, plan)
        await self._publish(partition, plan, changed)
        committed = await self.store.commit(
            partition, state.next_offset, plan.next_offset, changed, plan.new_seen, rollups
        )
        if not committed:
            log.warning("partition %d was advanced by another worker; replanning", partition)
            self.states.pop(partition, None)
            return False
        self.meter.apply(state, plan, changed, rollups)
        self.metrics.counted(plan)
        if self.burn is not None:
            await self._watch_burn(plan)
        self.dlq_limit.record(plan.valid_records, plan.invalid_records)
        if plan.duplicates:
            log.info("partition %d: %d duplicate event(s) not counted", partition, plan.duplicates)
        return True

    async def _watch_burn(self, plan: Plan) -> None:
        """Feed counted spend to the burn-rate watch; publish an intent per new episode.
        After the commit: an alert lost to a crash here is advice lost, not money."""
        assert self.burn is not None
        for (user, minute), micros in plan.burn.items():
            self.burn.add(user, minute * 60, micros)
        now = datetime.now(UTC)
        out: list[OutRecord] = []
        for user, workspace in plan.workspaces.items():
            burn = self.burn.check(user, workspace, now.timestamp())
            if burn is None:
                continue
            if len(out) < BURN_LOG_LINES:
                log.warning(
                    "burn-rate episode: %s at %d micros/hour (%s)",
                    user, burn.rate_per_hour, burn.reason,
                )  # fmt: skip
            note = burn_notification(burn, self.burn.rule.window_minutes, now)
            value = note.SerializeToString()
            out.append((Topic.NOTIFICATIONS.value, user.encode(), value, _PROTOBUF_HEADERS))
        if len(out) > BURN_LOG_LINES:
            log.warning("%d more burn-rate episodes in this batch", len(out) - BURN_LOG_LINES)
        if out:
            try:
                await self.publisher.send(out)
            except OSError as exc:
                log.warning("could not publish %d burn-rate intent(s): %s", len(out), exc)

    async def _publish(self, partition: int, plan: Plan, changed: dict[TotalKey, Total]) -> None:
        out: list[OutRecord] = []
        for r in plan.rejects:
            log.warning(
                "usage record %s[%d]@%d to DLQ: %s", Topic.USAGE, partition, r.offset, r.reason
            )
            headers: list[tuple[str, str | bytes | None]] = [
                (ERROR_HEADER, r.reason.encode()[:4000]),
                (ORIGIN_TOPIC_HEADER, Topic.USAGE.value.encode()),
                (ORIGIN_PARTITION_HEADER, str(partition).encode()),
                (ORIGIN_OFFSET_HEADER, str(r.offset).encode()),
            ]
            out.append((Topic.USAGE_DLQ.value, r.key, r.value, headers))
        now = timestamp(datetime.now(UTC))
        # Every record of a user's totals in this batch names the requests it now
        # includes, so policy settles their reservations whichever period it reads.
        settled = plan.settled
        for key, total in changed.items():
            value = total_message(key, total, now, settled.get(key[0])).SerializeToString()
            topic_key = f"user:{key[0]}:{key[2]}".encode()
            out.append((Topic.USAGE_TOTALS.value, topic_key, value, _PROTOBUF_HEADERS))
        if out:
            await self.publisher.send(out)


def create_app(settings: MeteringSettings, catalog: PriceCatalog) -> faust.App:
    transport.register(settings.fetch_max_wait_ms)
    settings.data_dir.mkdir(parents=True, exist_ok=True)  # faust makes only the last part
    app = faust.App(
        settings.app_id,
        datadir=str(settings.data_dir / settings.app_id),
        broker=[f"{transport.SCHEME}://{s.strip()}" for s in settings.kafka_bootstrap.split(",")],
        store="memory://",
        topic_partitions=settings.topic_partitions,
        topic_replication_factor=1,
        broker_session_timeout=settings.session_timeout,
        broker_heartbeat_interval=max(0.5, settings.session_timeout / 5),
        broker_rebalance_timeout=settings.session_timeout,
        broker_max_poll_records=settings.batch_max,
        stream_buffer_maxsize=max(4096, settings.batch_max * 2),
        consumer_auto_offset_reset="earliest",
        web_enabled=False,
    )
    raw: dict[str, Any] = {"key_type": bytes, "value_type": bytes, "key_serializer": "raw"}
    usage_topic = app.topic(Topic.USAGE.value, value_serializer="raw", **raw)
    holder: dict[str, Processor] = {}
    followers: dict[str, Follower] = {}

    async def processor() -> Processor:
        """The processor, created on the first batch (the pool needs the running loop)."""
        if "p" not in holder:
            pool = await connect_pool(settings.database_url, max_size=4)
            catalogs = CatalogStore(pool)
            seeded = await catalogs.seed(catalog, str(settings.prices_file))
            meter = Meter(
                catalog,
                settings.timezone,
                settings.topic_partitions,
                settings.workspace_id,
                max_age=timedelta(days=settings.max_event_age_days),
                dedupe_window=timedelta(hours=settings.dedupe_hours),
                clock=lambda: datetime.now(UTC),
            )
            holder["p"] = Processor(
                meter,
                Store(pool, settings.app_id, Topic.USAGE.value),
                Publisher(settings.kafka_bootstrap),
                DlqLimit(settings.dlq_window, settings.dlq_max_ratio, settings.dlq_min_invalid),
                retry_seconds=1.0,
                burn=BurnRate(
                    BurnRule(
                        window_minutes=settings.burn_window_minutes,
                        multiple=settings.burn_multiple,
                        min_per_hour=settings.burn_min_credits_per_hour * 1_000_000,
                        absolute_per_hour=settings.burn_absolute_credits_per_hour * 1_000_000,
                        baseline_half_life_minutes=settings.burn_half_life_minutes,
                    )
                ),
            )

            def swap(new: PriceCatalog) -> None:
                meter.catalog = new

            followers["prices"] = Follower(catalogs, seeded, swap)
            log.info("prices: catalog revision %d in force", seeded.revision)
        return holder["p"]

    @app.on_partitions_revoked.connect  # type: ignore[arg-type]  # mode's stub is narrower
    async def on_revoked(_sender: Any, revoked: set[Any], **_: Any) -> None:
        if "p" in holder:
            holder["p"].forget({tp.partition for tp in revoked if tp.topic == Topic.USAGE})

    @app.timer(interval=settings.prices_poll_seconds)  # type: ignore[untyped-decorator]
    async def follow_prices() -> None:
        follower = followers.get("prices")
        if follower is None:
            return
        try:
            new = await follower.poll()
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            log.warning("prices: could not look for a new catalog revision: %s", exc)
            return
        if new is not None:
            log.info(
                "prices: catalog revision %d in force (%s by %s, %d change(s))",
                new.revision, new.mode, new.loaded_by, len(new.changes),
            )  # fmt: skip

    @app.timer(interval=600.0)  # type: ignore[untyped-decorator]
    async def prune() -> None:
        proc = holder.get("p")
        if proc is None:
            return
        for state in proc.states.values():
            proc.meter.forget_expired(state)
        before = datetime.now(UTC) - timedelta(hours=settings.dedupe_hours)
        pruned = await proc.store.prune_seen(before)
        log.info("pruned %d expired event ids", pruned)

    @app.agent(usage_topic)
    async def meter_usage(stream: faust.StreamT[bytes]) -> None:
        take = stream.noack_take(settings.batch_max, within=settings.batch_within)  # type: ignore[attr-defined]
        async for events in take:
            proc = await processor()
            by_partition: dict[int, list[Record]] = defaultdict(list)
            for ev in events:
                m = ev.message
                by_partition[m.partition].append(
                    Record(m.partition, m.offset, m.key, m.value, headers_dict(m.headers))
                )
            with tracer.start_as_current_span("meter batch") as span:
                span.set_attribute("qm.records", len(events))
                # Partitions are independent (own state, own fenced commit): while one
                # waits on the broker or Postgres, another is planned.
                await asyncio.gather(
                    *(proc.count(p, r, settings.dlq_pause_seconds) for p, r in by_partition.items())
                )
            for ev in events:
                await stream.ack(ev)

    return app
