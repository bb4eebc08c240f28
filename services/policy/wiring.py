"""The one place policy's object graph is built: Postgres stores, the totals index and
its feed, the reservations view, the Evaluator, the background loops and the gRPC
server (health + reflection; every other call authenticated, quartermaster.auth)
with PolicyService, PolicyAdminService and
DirectoryService. Everything is made once, in order, and handed what it needs.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
from dataclasses import dataclass

import asyncpg
import grpc

from quartermaster import auth, gcpacing
from quartermaster.db import close_pool, service_pool
from quartermaster.grpcguard import add_guarded
from quartermaster.grpcserver import Served, serve
from quartermaster.notifications import NotificationPublisher
from quartermaster.publisher import Publisher
from quartermaster.topics import Topic
from quartermaster.v1 import policy_pb2, policy_pb2_grpc
from services.policy.admin_servicer import PolicyAdminServicer
from services.policy.approvals import Approvals
from services.policy.directory_servicer import DirectoryServicer
from services.policy.evaluator import Evaluator
from services.policy.mapping import prepare_response
from services.policy.policy_servicer import PolicyServicer
from services.policy.readiness import Readiness
from services.policy.reservations import ReservationsView
from services.policy.settings import PolicySettings
from services.policy.stores.directory import DirectoryStore
from services.policy.stores.limits import LimitStore
from services.policy.stores.listen import ChangeListener
from services.policy.stores.notices import NoticeStore
from services.policy.stores.reservations import ReservationStore
from services.policy.stores.snapshot import SnapshotStore
from services.policy.stores.topics import TopicMarkStore
from services.policy.thresholds import ThresholdWatch
from services.policy.topic_guard import TopicGuard
from services.policy.totals import TotalsIndex
from services.policy.totals_feed import TotalsFeed
from services.policy.upkeep import Settlements, SnapshotRefresh, housekeeping

log = logging.getLogger("qm.policy")
SERVICE_NAMES = [
    policy_pb2.DESCRIPTOR.services_by_name[name].full_name
    for name in ("PolicyService", "PolicyAdminService", "DirectoryService")
]
SERVICE_NAME = SERVICE_NAMES[0]


@dataclass
class RunningPolicy:
    """A started policy server and everything it runs; `stop` ends it all."""

    served: Served
    pool: asyncpg.Pool
    # LISTENs for limit and reservation changes (its own connection, outside the pool)
    listener: ChangeListener
    # What this replica knows yet; every RPC answering from memory consults it.
    readiness: Readiness
    evaluator: Evaluator
    feed: TotalsFeed
    refresh: SnapshotRefresh
    thresholds: ThresholdWatch
    approvals: Approvals
    publisher: Publisher
    # Set the first time `readiness` is ready (limits, totals and approvals read).
    serving: asyncio.Event
    tasks: list[asyncio.Task[None]]
    approvals_task: asyncio.Task[None]

    @property
    def port(self) -> int:
        return self.served.port

    async def reload(self) -> None:
        """Read the workspace's rules and directory again and swap them in whole."""
        await self.refresh.reload()

    async def stop(self, grace: float) -> None:
        """Stop taking calls, let in-flight ones finish within `grace`, then close."""
        await self.served.stop(grace)
        self.approvals.stopping = True
        with contextlib.suppress(asyncio.CancelledError):
            await self.approvals_task
        for task in self.tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self.feed.stop()
        self.publisher.close()
        await self.listener.close()
        await close_pool(self.pool)


async def _when_totals_read(feed: TotalsFeed, thresholds: ThresholdWatch) -> None:
    # A short poll (the totals consumer is a thread), and only at start.
    while not feed.caught_up:  # noqa: ASYNC110
        await asyncio.sleep(0.05)
    # From here on: a crossing missed while this replica was down is caught at the
    # person's next total (crossings compare absolute shares, not steps).
    thresholds.arm()
    # Every user's totals are in memory now, for good: out of the collector's way.
    gcpacing.settle()
    log.info("totals read (%d records)", feed.index.records)


async def _follow_readiness(
    served: Served, readiness: Readiness, flipped: asyncio.Event, serving: asyncio.Event
) -> None:
    """Health says what `readiness` says, each time it flips (`flipped` is set from
    whichever thread flipped it); `serving` is set the first time it is ready."""
    while True:
        await flipped.wait()
        flipped.clear()
        ready = readiness.ready
        await served.set_serving(ready)
        if ready:
            serving.set()
            log.info("policy is serving")
        elif serving.is_set():  # it was serving: something went wrong
            log.warning("policy is NOT serving: %s", readiness.message())
        else:
            log.info("policy is starting: %s", readiness.message())


def add_servicers(
    server: grpc.aio.Server,
    policy: PolicyServicer,
    admin: PolicyAdminServicer,
    directory: DirectoryServicer,
) -> None:
    """Add policy's three services to `server`, every method guarded
    (quartermaster.grpcguard: unparsable requests and NUL characters are refused
    naming the field, a database out of reach answers UNAVAILABLE). Check skips the
    NUL walk: its common case answers from memory and stores nothing, and a Check
    that reserves validates its ids itself (inputs.check)."""
    add_guarded(
        server, policy_pb2_grpc.add_PolicyServiceServicer_to_server, policy, unchecked={"Check"}
    )
    add_guarded(server, policy_pb2_grpc.add_PolicyAdminServiceServicer_to_server, admin)
    add_guarded(server, policy_pb2_grpc.add_DirectoryServiceServicer_to_server, directory)


async def start(settings: PolicySettings, addr: str | None = None) -> RunningPolicy:
    """Start a policy server on `addr` (default: the setting; port 0 picks a free one)."""
    ws, bootstrap = settings.workspace_id, settings.kafka_bootstrap
    loop = asyncio.get_running_loop()
    pool = await service_pool(settings, max_size=10)
    snapshots, reservations = SnapshotStore(pool, ws), ReservationStore(pool, ws)
    limits, directory = LimitStore(pool, ws), DirectoryStore(pool, ws)
    view = ReservationsView()
    changed, flipped = asyncio.Event(), asyncio.Event()
    readiness = Readiness(lambda: loop.call_soon_threadsafe(flipped.set))
    readiness.waiting("limits", lambda: "reading limits and the directory from PostgreSQL")

    async def resync() -> None:
        await view.sync_from(reservations.open_reservations)

    listener = ChangeListener(
        settings.database_url, ws, changed, view, resync, settings.refresh_seconds
    )
    # LISTEN before the first read, so no change can fall between the two.
    await listener.connect()
    snap = await snapshots.load()
    view.replace_all(await reservations.open_reservations())
    totals = TotalsIndex(ws)
    totals.set_pools(snap.pool_members())
    evaluator = Evaluator(
        snap, totals, view, settings.timezone, settings.warn_percent, prepare=prepare_response
    )
    evaluator.warm()
    gc.freeze()
    refresh = SnapshotRefresh(snapshots, evaluator, settings.refresh_seconds, changed)
    publisher = Publisher(bootstrap)
    thresholds = ThresholdWatch(
        evaluator, NoticeStore(pool, ws), NotificationPublisher(publisher),
        settings.threshold_percents, loop,
    )  # fmt: skip
    settlements = Settlements(reservations, view, loop)
    feed = TotalsFeed(
        bootstrap, totals, thresholds.changed, settlements.seen, readiness,
        settings.totals_check_seconds,
    )  # fmt: skip
    approvals = Approvals(limits, bootstrap, readiness)
    topic_guard = TopicGuard(
        TopicMarkStore(pool, ws, Topic.USAGE_TOTALS.value), bootstrap, readiness,
        settings.totals_check_seconds,
    )  # fmt: skip
    readiness.known("limits")  # after the other parts said they wait: never ready early
    feed.start()

    server = auth.server(settings.grants, "policy")
    ttl, max_open = settings.reservation_ttl_seconds, settings.max_open_reservations
    add_servicers(
        server, PolicyServicer(evaluator, reservations, ttl, readiness, max_open),
        PolicyAdminServicer(limits, directory, evaluator, refresh.reload),
        DirectoryServicer(evaluator),
    )  # fmt: skip
    served = await serve(
        addr or settings.addr, SERVICE_NAMES, server, tls=settings.server_tls,
        health_addr=settings.health_addr,
    )  # fmt: skip
    log.info("policy listening on port %d", served.port)

    serving = asyncio.Event()
    tasks = [
        asyncio.create_task(thresholds.run()),
        asyncio.create_task(refresh.run()),
        asyncio.create_task(settlements.run()),
        asyncio.create_task(housekeeping(reservations, evaluator)),
        asyncio.create_task(_when_totals_read(feed, thresholds)),
        asyncio.create_task(_follow_readiness(served, readiness, flipped, serving)),
        asyncio.create_task(listener.run()),
        asyncio.create_task(gcpacing.pace()),
        asyncio.create_task(topic_guard.run()),
    ]
    return RunningPolicy(
        served, pool, listener, readiness, evaluator, feed, refresh, thresholds, approvals,
        publisher, serving, tasks, asyncio.create_task(approvals.run()),
    )  # fmt: skip
