"""Wiring: Postgres, the totals view and the gRPC server (health + reflection)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass, field

import asyncpg
import grpc

from quartermaster.db import connect_pool
from quartermaster.grpcserver import Served, serve
from quartermaster.v1 import policy_pb2, policy_pb2_grpc
from services.policy import store
from services.policy.service import LimitHolder, PolicyServicer
from services.policy.settings import PolicySettings
from services.policy.totals import TotalsView

log = logging.getLogger("qm.policy")
SERVICE_NAME = policy_pb2.DESCRIPTOR.services_by_name["PolicyService"].full_name


@dataclass
class RunningPolicy:
    served: Served
    pool: asyncpg.Pool
    totals: TotalsView
    # Set once limits are loaded and the totals view has read every partition to its end.
    serving: asyncio.Event = field(default_factory=asyncio.Event)
    tasks: list[asyncio.Task[None]] = field(default_factory=list)
    # LISTENs for limit changes (its own connection, outside the pool)
    listener: asyncpg.Connection | None = None

    @property
    def port(self) -> int:
        return self.served.port

    async def stop(self, grace: float) -> None:
        """Stop taking calls, let in-flight ones finish within `grace`, then close."""
        await self.served.stop(grace)
        for task in self.tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self.totals.stop()
        if self.listener is not None:
            await self.listener.close()
        await self.pool.close()


async def _refresh_limits(
    pool: asyncpg.Pool, workspace_id: str, holder: LimitHolder, every: float,
    changed: asyncio.Event,
) -> None:  # fmt: skip
    """Re-read limits when Postgres says they changed (NOTIFY, within milliseconds on
    every replica) and every `every` seconds anyway (a missed notification, or a
    listener connection that was lost, costs at most that long)."""
    while True:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(changed.wait(), every)
        changed.clear()
        try:
            holder.workspace = await store.workspace_limit(pool, workspace_id)
        except (OSError, asyncpg.PostgresError) as exc:
            # Keep answering with the last known limits; Postgres may be back soon.
            log.warning("could not refresh limits, keeping the last ones: %s", exc)


async def _set_serving_when_ready(running: RunningPolicy, holder: LimitHolder) -> None:
    # Two conditions from two places (a consumer thread, the refresh task): a short
    # poll is simpler than bridging both into asyncio events, and runs only at start.
    while not (running.totals.caught_up and holder.workspace is not None):  # noqa: ASYNC110
        await asyncio.sleep(0.05)
    await running.served.set_serving(True)
    running.serving.set()
    log.info("policy is serving (%d totals records read)", running.totals.records)


async def start(settings: PolicySettings, addr: str | None = None) -> RunningPolicy:
    """Start a policy server on `addr` (default: the setting; port 0 picks a free one)."""
    pool = await connect_pool(settings.database_url)
    holder = LimitHolder(await store.workspace_limit(pool, settings.workspace_id))
    totals = TotalsView(settings.kafka_bootstrap)
    totals.start()

    server = grpc.aio.server()
    policy_pb2_grpc.add_PolicyServiceServicer_to_server(
        PolicyServicer(totals, holder, settings.timezone, settings.warn_percent), server
    )
    served = await serve(addr or settings.addr, [SERVICE_NAME], server)
    log.info("policy listening on port %d", served.port)
    running = RunningPolicy(served, pool, totals)
    changed = asyncio.Event()
    running.listener = await asyncpg.connect(settings.database_url)
    await running.listener.add_listener(store.CHANGED_CHANNEL, lambda *_: changed.set())
    running.tasks.append(
        asyncio.create_task(
            _refresh_limits(pool, settings.workspace_id, holder, settings.refresh_seconds, changed)
        )
    )
    running.tasks.append(asyncio.create_task(_set_serving_when_ready(running, holder)))
    return running
