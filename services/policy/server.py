"""Wiring: Postgres, the totals and holds views, and the gRPC server (health +
reflection) with PolicyService, PolicyAdminService and DirectoryService."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
from dataclasses import dataclass, field

import asyncpg
import grpc

from quartermaster import gcpacing
from quartermaster.credentials import Credentials
from quartermaster.db import connect_pool
from quartermaster.grpcserver import Served, serve
from quartermaster.v1 import policy_pb2, policy_pb2_grpc
from services.policy import store
from services.policy.admin import DirectoryServicer, PolicyAdminServicer
from services.policy.events import Approvals, ThresholdWatch, take_all
from services.policy.holds import HoldsView
from services.policy.service import Evaluator, LimitHolder, PolicyServicer
from services.policy.settings import PolicySettings
from services.policy.totals import TotalsView

log = logging.getLogger("qm.policy")
SERVICE_NAMES = [
    policy_pb2.DESCRIPTOR.services_by_name[name].full_name
    for name in ("PolicyService", "PolicyAdminService", "DirectoryService")
]
SERVICE_NAME = SERVICE_NAMES[0]
HOUSEKEEPING_SECONDS = 60.0


@dataclass
class RunningPolicy:
    served: Served
    pool: asyncpg.Pool
    totals: TotalsView
    holds: HoldsView
    limits: LimitHolder
    evaluator: Evaluator
    settings: PolicySettings
    # Set once limits are loaded and the totals view has read every partition to its end.
    serving: asyncio.Event = field(default_factory=asyncio.Event)
    tasks: list[asyncio.Task[None]] = field(default_factory=list)
    # LISTENs for limit and hold changes (its own connection, outside the pool)
    listener: asyncpg.Connection | None = None
    changed: asyncio.Event = field(default_factory=asyncio.Event)
    _reload_lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    reloads: int = 0
    thresholds: ThresholdWatch | None = None
    approvals: Approvals | None = None
    approvals_task: asyncio.Task[None] | None = None

    @property
    def port(self) -> int:
        return self.served.port

    async def reload(self) -> None:
        """Read the workspace's rules and directory again and swap them in whole."""
        async with self._reload_lock:
            snap = await store.load_snapshot(
                self.pool, self.settings.workspace_id, self.limits.snapshot
            )
            self.evaluator.warm(snap)  # before any Check can see it
            self.limits.snapshot = snap
            self.totals.set_pools(snap.pool_members())
            self.reloads += 1
            # The snapshot lives until the next change: keep the collector from
            # walking its hundreds of thousands of objects again and again.
            gc.freeze()

    async def stop(self, grace: float) -> None:
        """Stop taking calls, let in-flight ones finish within `grace`, then close."""
        await self.served.stop(grace)
        if self.approvals is not None and self.approvals_task is not None:
            self.approvals.stopping = True
            with contextlib.suppress(asyncio.CancelledError):
                await self.approvals_task
        for task in self.tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self.totals.on_change = None
        self.totals.on_settled = None
        self.totals.stop()
        if self.thresholds is not None:
            self.thresholds.close()
        if self.listener is not None:
            await self.listener.close()
        await self.pool.close()


class Settlements:
    """Requests that a total reported as counted, on their way to their holds in
    Postgres (store.mark_settled): a replica started after the totals topic dropped
    that total learns it there, instead of counting the hold and its usage both."""

    BATCH = 5_000

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._queue: asyncio.Queue[tuple[str, list[str]]] = asyncio.Queue()

    def seen(self, period_key: str, request_ids: list[str]) -> None:
        """Called by the totals consumer thread."""
        self._loop.call_soon_threadsafe(self._queue.put_nowait, (period_key, request_ids))

    async def run(self, pool: asyncpg.Pool, workspace_id: str, holds: HoldsView) -> None:
        while True:
            by_period: dict[str, list[str]] = {}
            for key, ids in await take_all(self._queue):
                # Most counted requests were never reserved: only holds are written.
                held = holds.held_for(ids)
                if held:
                    by_period.setdefault(key, []).extend(held)
            for key, ids in by_period.items():
                for i in range(0, len(ids), self.BATCH):
                    chunk = ids[i : i + self.BATCH]
                    try:
                        await store.mark_settled(pool, workspace_id, key, chunk)
                    except (OSError, asyncpg.PostgresError) as exc:
                        # This replica knows anyway; one started later may count these
                        # holds until they expire.
                        log.warning("could not record %d settled requests: %s", len(chunk), exc)


async def _refresh(running: RunningPolicy) -> None:
    """Reload when Postgres says the rules changed (NOTIFY, within milliseconds on
    every replica), and check config_version every refresh_seconds anyway (a missed
    notification, or a listener connection that was lost, costs at most that long)."""
    settings = running.settings
    while True:
        notified = False
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(running.changed.wait(), settings.refresh_seconds)
            notified = True
        running.changed.clear()
        try:
            if not notified:
                version = await store.config_version(running.pool, settings.workspace_id)
                if version == running.limits.snapshot.version:
                    continue
            await running.reload()
        except (OSError, asyncpg.PostgresError) as exc:
            # Keep answering with the last known rules; Postgres may be back soon.
            log.warning("could not refresh limits, keeping the last ones: %s", exc)


async def _housekeeping(running: RunningPolicy) -> None:
    """Drop expired holds from memory; delete day-old ones from Postgres."""
    while True:
        await asyncio.sleep(HOUSEKEEPING_SECONDS)
        running.holds.prune(running.evaluator.clock())
        try:
            await store.forget_old_holds(running.pool, 86_400)
            # Holds whose NOTIFY was missed (a lost listener) come back here.
            before = running.holds.ids()
            fetched = await store.open_holds(running.pool, running.settings.workspace_id)
            running.holds.sync(fetched, before)
        except (OSError, asyncpg.PostgresError) as exc:
            log.warning("hold housekeeping failed, will retry: %s", exc)


async def _set_serving_when_ready(running: RunningPolicy) -> None:
    # A short poll (the totals consumer is a thread), and only at start.
    while not running.totals.caught_up:  # noqa: ASYNC110
        await asyncio.sleep(0.05)
    if running.thresholds is not None:
        # From here on: a crossing missed while this replica was down is caught at the
        # person's next total (crossings compare absolute shares, not steps).
        running.totals.on_change = running.thresholds.changed
    # Every user's totals are in memory now, for good: out of the collector's way.
    gcpacing.settle()
    await running.served.set_serving(True)
    running.serving.set()
    log.info("policy is serving (%d totals records read)", running.totals.records)


async def start(settings: PolicySettings, addr: str | None = None) -> RunningPolicy:
    """Start a policy server on `addr` (default: the setting; port 0 picks a free one)."""
    ws = settings.workspace_id
    pool = await connect_pool(settings.database_url, max_size=10)
    # LISTEN before the first read, so no change can fall between the two.
    listener = await asyncpg.connect(settings.database_url)
    changed = asyncio.Event()
    holds = HoldsView()

    def on_change(_c: object, _pid: object, _channel: object, payload: str) -> None:
        if payload == ws:
            changed.set()

    def on_hold(_c: object, _pid: object, _channel: object, payload: str) -> None:
        workspace, hold = store.hold_from_payload(payload)
        if workspace == ws:
            holds.put(hold)

    await listener.add_listener(store.CHANGED_CHANNEL, on_change)
    await listener.add_listener(store.HOLDS_CHANNEL, on_hold)
    snap = await store.load_snapshot(pool, ws)
    holds.replace_all(await store.open_holds(pool, ws))
    limits = LimitHolder(snap)
    totals = TotalsView(settings.kafka_bootstrap)
    settlements = Settlements(asyncio.get_running_loop())
    totals.on_settled = settlements.seen
    totals.set_pools(snap.pool_members())
    evaluator = Evaluator(limits, totals, holds, settings.timezone, settings.warn_percent)
    evaluator.warm()
    gc.freeze()
    totals.start()

    server = grpc.aio.server()
    running_ref: list[RunningPolicy] = []

    async def reload() -> None:
        await running_ref[0].reload()

    policy_pb2_grpc.add_PolicyServiceServicer_to_server(
        PolicyServicer(evaluator, pool, ws, settings.reservation_ttl_seconds), server
    )
    policy_pb2_grpc.add_PolicyAdminServiceServicer_to_server(
        PolicyAdminServicer(pool, ws, limits, Credentials(settings.admin_credentials), reload),
        server,
    )
    policy_pb2_grpc.add_DirectoryServiceServicer_to_server(DirectoryServicer(limits), server)
    served = await serve(addr or settings.addr, SERVICE_NAMES, server)
    log.info("policy listening on port %d", served.port)
    running = RunningPolicy(
        served, pool, totals, holds, limits, evaluator, settings, listener=listener,
        changed=changed,
    )  # fmt: skip
    running_ref.append(running)
    running.thresholds = ThresholdWatch(
        evaluator, pool, ws, settings.kafka_bootstrap, settings.threshold_percents
    )
    running.tasks.append(asyncio.create_task(running.thresholds.run()))
    running.approvals = Approvals(pool, ws, settings.kafka_bootstrap)
    running.approvals_task = asyncio.create_task(running.approvals.run())
    running.tasks.append(asyncio.create_task(_refresh(running)))
    running.tasks.append(asyncio.create_task(settlements.run(pool, ws, holds)))
    running.tasks.append(asyncio.create_task(_housekeeping(running)))
    running.tasks.append(asyncio.create_task(_set_serving_when_ready(running)))
    running.tasks.append(asyncio.create_task(gcpacing.pace()))
    return running
