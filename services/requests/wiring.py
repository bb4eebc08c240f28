"""The one place the requests service's object graph is built: the Postgres pool, the
request and outbox stores, the Kafka publisher, the outbox relay and the reconciler.
Everything is made once, in order, and handed what it needs. The gRPC servicer
(RequestService) joins here in a later step, over the same store.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass

import asyncpg

from quartermaster import kafka
from quartermaster.db import connect_pool
from services.requests.reconciler import Reconciler
from services.requests.relay import Relay
from services.requests.settings import RequestsSettings
from services.requests.stores.outbox import OutboxStore
from services.requests.stores.requests import RequestStore

log = logging.getLogger("qm.requests")


@dataclass
class RunningRequests:
    """The started service; `stop` ends it all (the relay finishes the batch in hand:
    what it did not mark sent is published again by the next one)."""

    pool: asyncpg.Pool
    store: RequestStore
    publisher: kafka.Publisher
    relay: Relay
    reconciler: Reconciler
    tasks: list[asyncio.Task[None]]

    async def stop(self) -> None:
        self.relay.stopping = True
        self.reconciler.stopping = True
        for task in self.tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self.publisher.close()
        await self.pool.close()


async def start(settings: RequestsSettings) -> RunningRequests:
    """Connect, build and start the relay and reconciler loops. Raises OSError or an
    asyncpg error when PostgreSQL can't be reached at start."""
    pool = await connect_pool(settings.database_url)
    store = RequestStore(pool, settings.workspace_id, settings.timing)
    publisher = kafka.Publisher(settings.kafka_bootstrap)
    relay = Relay(
        OutboxStore(pool),
        publisher,
        batch=settings.relay_batch,
        poll_seconds=settings.relay_poll_seconds,
        hold=settings.relay_hold,
    )
    reconciler = Reconciler(store, settings.timing, every=settings.reconcile_seconds)
    tasks = [asyncio.create_task(relay.run()), asyncio.create_task(reconciler.run())]
    log.info("requests relay and reconciler running for workspace %s", settings.workspace_id)
    return RunningRequests(pool, store, publisher, relay, reconciler, tasks)
