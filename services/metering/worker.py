"""The faust application: the consumer of `qm.usage.v1` around a built `Counting` graph.

The counting loop takes batches from the `Intake` (whole fetches, put there by the
`transport`'s fetcher: no faust stream, whose per-record path cost more than counting;
faust acks nothing by itself), hands each partition's records to the `Processor`
(partitions concurrently), and acks the records only once every partition of the
batch is committed to Postgres. Timers follow the price catalog and prune expired
state; a task checks the broker's topics (`topic_guard.TopicWatch`) on a short timer
and at each assignment. See `processor` for the steps and their failure consequences.

An exception that escapes the agent or a timer (a bug, a broken installation: not a
bad record, not an outage) is given to `on_fatal`, which ends the process for its
supervisor to restart: faust would otherwise restart the agent alone or leave it
dead, in a live process that counts nothing and acks nothing.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import defaultdict
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import faust
from faust.types import TP
from opentelemetry import trace

from quartermaster import kafka
from quartermaster.db import RETRIED_NEXT_ROUND
from quartermaster.telemetry import links_of, shared_headers
from quartermaster.topics import Topic
from services.metering import transport
from services.metering.aggregate import Record
from services.metering.intake import Intake
from services.metering.metrics import MeteringMetrics
from services.metering.pacing import Pacer
from services.metering.processor import OUTAGE, Processor
from services.metering.settings import MeteringSettings
from services.metering.topic_guard import TopicWatch
from services.metering.wiring import Counting

log = logging.getLogger("qm.metering")
REBALANCE_TIMEOUT = 60.0  # seconds (faust's default; Kafka's max.poll.interval is 300)
REQUEST_TIMEOUT = 90.0  # seconds (faust's default)
# Most records one fetch hands the intake. The intake never splits a fetch (offset
# order), so it holds up to its capacity plus one fetch: with fetches of a whole
# batch (QM_METERING_BATCH_MAX), up to two batches' worth waited while a third was
# counted. Smaller fetches save memory but cost speed (more of them from faust's
# consumer thread): at half the default batch, no cost was measurable, at a fifth
# there was (docs/benchmarks.md, "fetches bounded").
FETCH_RECORDS = 25_000
tracer = trace.get_tracer("qm.metering")


class MeteringApp(faust.App):
    """A faust app whose fetcher puts whole fetches into `intake` (see `transport`)."""

    def __init__(self, *args: Any, intake: Intake, **kwargs: Any) -> None:
        self.intake = intake
        # the messages of the batch the counting loop is counting (acked when done)
        self.in_hand: list[Any] = []
        super().__init__(*args, **kwargs)

    async def _on_partitions_revoked(self, revoked: set[TP]) -> None:
        """faust's revocation, without waiting for records nobody will count.

        Before this worker rejoins the group (and every other worker waits for it),
        faust waits (`wait_empty`) until every message it fetched is acked. Records
        waiting in the intake would be counted first (up to two batches: seconds when
        behind), and a fetch the flow's suspension kept out of the intake would never
        be acked: faust forgets such a message only once it is garbage, and the
        fetcher's loop variable can hold one (seen: the rebalance waited past its
        timeout). So the intake's records of revoked partitions are dropped and every
        message of them but those of the batch in hand is no longer tracked; the next
        owner fetches them again from the committed offset (nothing of them was acked,
        so faust committed nothing past them). The batch in hand is finished and acked:
        faust waits for that one alone."""
        self.intake.drop((tp.topic, tp.partition) for tp in revoked)
        hand = set(self.in_hand)
        # faust 0.15.3's set of messages it waits for (pinned in pyproject.toml)
        tracked = self.consumer._unacked_messages  # type: ignore[attr-defined]
        for m in list(tracked):
            if m.tp in revoked and m not in hand:
                tracked.discard(m)
        await super()._on_partitions_revoked(revoked)


def _app(settings: MeteringSettings) -> MeteringApp:
    transport.register(settings.fetch_max_wait_ms)
    settings.data_dir.mkdir(parents=True, exist_ok=True)  # faust makes only the last part
    rebalance_timeout = max(REBALANCE_TIMEOUT, settings.session_timeout)
    # A batch's worth waits, fetched while another is counted: each record in hand or
    # waiting holds faust's message, aiokafka's record and later the decoded event, so
    # a second batch waiting would cost memory and gain nothing (the fetch outruns the
    # counting; figures in docs/benchmarks.md).
    intake = Intake(capacity=settings.batch_max, capacity_bytes=settings.batch_max_bytes)
    return MeteringApp(
        settings.app_id,
        datadir=str(settings.data_dir / settings.app_id),
        broker=[f"{transport.SCHEME}://{s.strip()}" for s in settings.kafka_bootstrap.split(",")],
        store="memory://",
        topic_partitions=settings.topic_partitions,
        topic_replication_factor=1,
        # No tables, so no standbys. With faust's default of one, its assignor lets
        # every worker keep up to ceil(partitions / workers), and a worker joining a
        # group at that capacity got none (12 partitions, a fifth worker: 3, 3, 3, 3,
        # 0: it counted nothing). With none, it trims each to floor(...) first and
        # the newcomer gets some (faust 0.15.3's assignor on that layout: 3, 3, 3, 2, 1).
        table_standby_replicas=0,
        broker_session_timeout=settings.session_timeout,
        # A worker learns of a rebalance at its next heartbeat, and the group waits
        # for it: at most a second (each heartbeat is one small request).
        broker_heartbeat_interval=min(1.0, settings.session_timeout / 3),
        # How long the group waits for a member to rejoin: one counting its batch in
        # hand (a restarted worker that is behind: up to 16 MiB at once, seconds on a
        # busy host) is waited for, not evicted to rejoin and rebalance everyone
        # again. A crashed one is noticed after the session timeout whatever this is.
        broker_rebalance_timeout=rebalance_timeout,
        # A JoinGroup is answered once the group rejoined (up to the rebalance timeout),
        # so it may not time out before that (Java's client waits the rebalance timeout
        # + 5 s); and faust refuses a session timeout past the request timeout (a
        # QM_METERING_SESSION_TIMEOUT over 90 s stopped the worker at start-up).
        broker_request_timeout=max(REQUEST_TIMEOUT, rebalance_timeout + 5),
        broker_max_poll_records=min(settings.batch_max, FETCH_RECORDS),
        stream_buffer_maxsize=max(4096, settings.batch_max * 2),
        consumer_auto_offset_reset="earliest",
        web_enabled=False,
        # No topic is created by metering (faust would declare its leader-election
        # topic, and any topic it thinks its own): topics are made by the explicit
        # step (`python -m quartermaster.kafka ensure-topics`) with their specs.
        topic_allow_declare=False,
        topic_disable_leader=True,
        broker_credentials=kafka.faust_credentials(settings),
        intake=intake,
    )


def create_app(
    settings: MeteringSettings, counting: Counting, on_fatal: Callable[[BaseException], None]
) -> faust.App:
    """The faust app counting `qm.usage.v1` with `counting` (built on the loop the
    faust worker will run); `on_fatal(exc)` must end the process (see above)."""
    app = _app(settings)
    raw: dict[str, Any] = {"key_type": bytes, "value_type": bytes, "key_serializer": "raw"}
    usage_topic = app.topic(Topic.USAGE.value, value_serializer="raw", **raw)
    app.topics.add(usage_topic)  # subscribed; its records go to app.intake, not a stream
    proc = counting.processor
    meters = counting.metrics

    def end_offset(partition: int) -> int | None:
        try:
            end = app.consumer.highwater(TP(Topic.USAGE.value, partition))
        except Exception:  # no consumer yet, or not assigned: unknown, not an error
            return None
        return end if isinstance(end, int) and end >= 0 else None

    meters.end_offset = end_offset

    watch = TopicWatch(counting.guard, settings.topic_check_seconds, on_fatal)

    # Partitions of the usage topic this worker was assigned last. A rebalance revokes
    # every partition (faust and aiokafka have only the eager protocol) and faust's
    # assignor gives most back to the worker that had them: their state (offset,
    # recent event ids, totals: loaded from Postgres, seconds for a busy partition) is
    # kept, and forgotten only for partitions that went elsewhere. Kept state is safe
    # however the partition moved meanwhile: a commit is fenced on the stored offset,
    # and one another worker advanced makes the state reload (`Processor`).
    held: set[int] = set()

    @app.on_partitions_assigned.connect  # type: ignore[arg-type]  # mode's stub is narrower
    async def on_assigned(_sender: Any, assigned: set[Any], **_: Any) -> None:
        now = {tp.partition for tp in assigned if tp.topic == Topic.USAGE}
        gone = held - now
        held.clear()
        held.update(now)
        proc.forget(gone)
        for partition in gone:
            meters.positions.pop(partition, None)
        # A rejoin after the broker came back: check now, not in the rebalance
        # callback itself (a broker slow to answer would hold the rebalance up).
        watch.poke()

    @app.task  # type: ignore[untyped-decorator]
    async def watch_topics() -> None:
        try:
            await watch.run()
        except Exception as exc:
            on_fatal(exc)

    _timers(app, counting, settings, on_fatal)

    @app.task  # type: ignore[untyped-decorator]
    async def meter_usage() -> None:
        try:
            await _count(app, proc, settings, meters)
        except Exception as exc:
            on_fatal(exc)

    return app


def _timers(
    app: MeteringApp,
    counting: Counting,
    settings: MeteringSettings,
    on_fatal: Callable[[BaseException], None],
) -> None:
    """Following the price catalog's revisions, and pruning expired event ids: an
    outage is logged and tried at the next tick; anything else ends the worker."""
    proc = counting.processor

    @app.timer(interval=settings.prices_poll_seconds)  # type: ignore[untyped-decorator]
    async def follow_prices() -> None:
        try:
            new = await counting.prices.poll()
        except RETRIED_NEXT_ROUND as exc:
            log.warning("prices: could not look for a new catalog revision: %s", exc)
            return
        except Exception as exc:  # a revision this worker can't read: restart, loudly
            on_fatal(exc)
            return
        if new is not None:
            log.info(
                "prices: catalog revision %d in force (%s by %s, %d change(s))",
                new.revision, new.mode, new.loaded_by, len(new.changes),
            )  # fmt: skip

    @app.timer(interval=600.0)  # type: ignore[untyped-decorator]
    async def prune() -> None:
        try:
            pruned = await proc.prune(timedelta(hours=settings.dedupe_hours))
        except OUTAGE as exc:
            log.warning("could not prune expired event ids (next try in 600 s): %s", exc)
            return
        except Exception as exc:
            on_fatal(exc)
            return
        log.info("pruned %d expired event ids", pruned)


async def _count(
    app: MeteringApp, proc: Processor, settings: MeteringSettings, meters: MeteringMetrics
) -> None:
    pacer = Pacer(settings.batch_target, settings.batch_max, settings.batch_max_bytes)
    while True:
        messages = await app.intake.take(pacer.records, settings.batch_within, pacer.bytes)
        app.in_hand = messages
        by_partition: dict[int, list[Record]] = defaultdict(list)
        for m in messages:
            by_partition[m.partition].append(
                Record(m.partition, m.offset, m.key, m.value, shared_headers(m.headers))
            )
        _taken(app, by_partition)
        began = time.perf_counter()
        # Linked to the spans of the events counted (when tracing: their producers'
        # traceparent); the totals it publishes carry this span's context on to policy.
        links = links_of(r.headers for recs in by_partition.values() for r in recs)
        with tracer.start_as_current_span("meter batch", links=links) as span:
            span.set_attribute("qm.records", len(messages))
            # Partitions are independent (own state, own fenced commit): while one
            # waits on the broker or Postgres, another is planned.
            await asyncio.gather(*(proc.process(p, r) for p, r in by_partition.items()))
        took = time.perf_counter() - began
        meters.batch(took)
        pacer.counted(len(messages), app.intake.taken_bytes, took, app.intake.taken_cut)
        for p, records in by_partition.items():
            meters.positions[p] = max(r.offset for r in records) + 1
        ack = app.consumer.ack
        for m in messages:
            ack(m)
        app.in_hand = []


def _taken(app: MeteringApp, partitions: dict[int, list[Record]]) -> None:
    """Tell faust's monitor that the counting loop took records of `partitions` now.
    Its livelock check (stream_processing_timeout, 300 s) looks for a faust stream's
    last event; metering has none (records go to the intake), so a worker catching up
    after PostgreSQL came back logged "Stream has not started processing TP(...)
    (started 9.34 minutes ago)" at ERROR while counting fine. Now the check is true:
    it fires when the counting loop has taken nothing of a lagging partition for 300 s."""
    if app.monitor is None or not partitions:
        return
    now = time.monotonic()
    for partition in partitions:
        app.monitor.stream_inbound_time[TP(Topic.USAGE.value, partition)] = now
