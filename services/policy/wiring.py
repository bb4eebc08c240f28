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

from quartermaster import auth, gcpacing, kafka
from quartermaster.db import connect_pool
from quartermaster.grpcguard import add_guarded
from quartermaster.grpcserver import Served, serve
from quartermaster.notifications import NotificationPublisher
from quartermaster.v1 import policy_pb2, policy_pb2_grpc
from services.policy.admin_servicer import PolicyAdminServicer
from services.policy.approvals import Approvals
from services.policy.directory_servicer import DirectoryServicer
from services.policy.evaluator import Evaluator
from services.policy.mapping import prepare_response
from services.policy.policy_servicer import PolicyServicer
from services.policy.reservations import ReservationsView, from_notice
from services.policy.settings import PolicySettings
from services.policy.stores.changes import CHANGED_CHANNEL
from services.policy.stores.directory import DirectoryStore
from services.policy.stores.limits import LimitStore
from services.policy.stores.notices import NoticeStore
from services.policy.stores.reservations import RESERVATIONS_CHANNEL, ReservationStore
from services.policy.stores.snapshot import SnapshotStore
from services.policy.thresholds import ThresholdWatch
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
    listener: asyncpg.Connection
    evaluator: Evaluator
    feed: TotalsFeed
    refresh: SnapshotRefresh
    thresholds: ThresholdWatch
    approvals: Approvals
    publisher: kafka.Publisher
    # Set once limits are loaded and the totals feed has read every partition to its end.
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
        await self.pool.close()


async def _set_serving_when_ready(
    served: Served, feed: TotalsFeed, thresholds: ThresholdWatch, serving: asyncio.Event
) -> None:
    # A short poll (the totals consumer is a thread), and only at start.
    while not feed.caught_up:  # noqa: ASYNC110
        await asyncio.sleep(0.05)
    # From here on: a crossing missed while this replica was down is caught at the
    # person's next total (crossings compare absolute shares, not steps).
    thresholds.arm()
    # Every user's totals are in memory now, for good: out of the collector's way.
    gcpacing.settle()
    await served.set_serving(True)
    serving.set()
    log.info("policy is serving (%d totals records read)", feed.index.records)


async def _listen(
    database_url: str, workspace_id: str, changed: asyncio.Event, view: ReservationsView
) -> asyncpg.Connection:
    """A connection that sets `changed` when the workspace's limits or directory
    change and puts every reservation made or settled on any replica in `view`."""
    listener = await asyncpg.connect(database_url)

    def on_change(_c: object, _pid: object, _channel: object, payload: str) -> None:
        if payload == workspace_id:
            changed.set()

    def on_reservation(_c: object, _pid: object, _channel: object, payload: str) -> None:
        workspace, reservation = from_notice(payload)
        if workspace == workspace_id:
            view.put(reservation)

    await listener.add_listener(CHANGED_CHANNEL, on_change)
    await listener.add_listener(RESERVATIONS_CHANNEL, on_reservation)
    return listener


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
    pool = await connect_pool(settings.database_url, max_size=10)
    snapshots, reservations = SnapshotStore(pool, ws), ReservationStore(pool, ws)
    limits, directory = LimitStore(pool, ws), DirectoryStore(pool, ws)
    view = ReservationsView()
    changed = asyncio.Event()
    # LISTEN before the first read, so no change can fall between the two.
    listener = await _listen(settings.database_url, ws, changed, view)
    snap = await snapshots.load()
    view.replace_all(await reservations.open_reservations())
    totals = TotalsIndex()
    totals.set_pools(snap.pool_members())
    evaluator = Evaluator(
        snap, totals, view, settings.timezone, settings.warn_percent, prepare=prepare_response
    )
    evaluator.warm()
    gc.freeze()
    refresh = SnapshotRefresh(snapshots, evaluator, settings.refresh_seconds, changed)
    publisher = kafka.Publisher(bootstrap)
    thresholds = ThresholdWatch(
        evaluator, NoticeStore(pool, ws), NotificationPublisher(publisher),
        settings.threshold_percents, loop,
    )  # fmt: skip
    settlements = Settlements(reservations, view, loop)
    feed = TotalsFeed(bootstrap, totals, thresholds.changed, settlements.seen)
    feed.start()

    server = auth.server(settings.grants, "policy")
    add_servicers(
        server,
        PolicyServicer(evaluator, reservations, settings.reservation_ttl_seconds),
        PolicyAdminServicer(limits, directory, evaluator, refresh.reload),
        DirectoryServicer(evaluator),
    )
    served = await serve(addr or settings.addr, SERVICE_NAMES, server)
    log.info("policy listening on port %d", served.port)

    approvals = Approvals(limits, bootstrap)
    serving = asyncio.Event()
    tasks = [
        asyncio.create_task(thresholds.run()),
        asyncio.create_task(refresh.run()),
        asyncio.create_task(settlements.run()),
        asyncio.create_task(housekeeping(reservations, evaluator)),
        asyncio.create_task(_set_serving_when_ready(served, feed, thresholds, serving)),
        asyncio.create_task(gcpacing.pace()),
    ]
    return RunningPolicy(
        served, pool, listener, evaluator, feed, refresh, thresholds, approvals, publisher,
        serving, tasks, asyncio.create_task(approvals.run()),
    )  # fmt: skip
