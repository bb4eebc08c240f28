"""The one place the requests service's object graph is built: the Postgres pool, the
request and outbox stores, the Kafka publisher, the outbox relay, the reconciler, the
clients of policy and metering it reads at create time, and the gRPC server with
RequestService (health + reflection; every other call authenticated,
quartermaster.auth). Everything is made once, in order, and handed what it needs.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass
from datetime import timedelta

import asyncpg

from quartermaster import auth
from quartermaster.db import close_pool, service_pool
from quartermaster.directory_client import DirectoryClient
from quartermaster.grpcguard import add_guarded
from quartermaster.grpcserver import Served, serve
from quartermaster.publisher import Publisher
from quartermaster.v1 import requests_pb2, requests_pb2_grpc
from services.requests.confirm import Confirmer
from services.requests.reconciler import Reconciler
from services.requests.relay import Relay
from services.requests.servicer import RequestServicer, Routing
from services.requests.settings import RequestsSettings
from services.requests.sources import DirectoryPeople, PolicyOverrides, SpendStanding
from services.requests.stores.outbox import OutboxStore
from services.requests.stores.requests import RequestStore

log = logging.getLogger("qm.requests")
SERVICE_NAME = requests_pb2.DESCRIPTOR.services_by_name["RequestService"].full_name


@dataclass
class RunningRequests:
    """The started service; `stop` ends it all (the relay finishes the batch in hand:
    what it did not mark sent is published again by the next one)."""

    pool: asyncpg.Pool
    store: RequestStore
    publisher: Publisher
    relay: Relay
    reconciler: Reconciler
    tasks: list[asyncio.Task[None]]
    served: Served
    directory: DirectoryClient
    standing: SpendStanding
    overrides: PolicyOverrides
    confirmer: Confirmer

    @property
    def port(self) -> int:
        return self.served.port

    async def stop(self, grace: float = 5.0) -> None:
        """Stop taking calls (in-flight ones finish within `grace`), then the loops."""
        await self.served.stop(grace)
        await self.directory.close()
        await self.standing.close()
        await self.overrides.close()
        self.relay.stopping = True
        self.confirmer.stopping = True
        self.reconciler.stopping = True
        for task in self.tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self.publisher.close()
        await close_pool(self.pool)


async def start(settings: RequestsSettings, addr: str | None = None) -> RunningRequests:
    """Connect, build and start the relay and reconciler loops and the gRPC server on
    `addr` (default: the setting; port 0 picks a free one). Raises OSError or an
    asyncpg error when PostgreSQL can't be reached at start."""
    pool = await service_pool(settings)
    store = RequestStore(pool, settings.workspace_id, settings.timing)
    publisher = Publisher(settings.kafka_bootstrap)
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
    tls, token = settings.client_tls, settings.client_token
    directory = DirectoryClient(settings.policy_addr, source="QM_REQUESTS_POLICY_ADDR",
                                deadline_s=settings.inputs_deadline_seconds, tls=tls,
                                token=token)  # fmt: skip
    standing = SpendStanding(settings.policy_addr, settings.usage_api_addr, tls=tls,
                             token=token, deadline_s=settings.inputs_deadline_seconds)  # fmt: skip
    routing = Routing(settings.step_rules, settings.fallback_approver, settings.timing.pending_for)
    servicer = RequestServicer(
        store, DirectoryPeople(directory, settings.workspace_admin_ids), standing, routing
    )
    server = auth.server(settings.grants, "requests")
    add_guarded(server, requests_pb2_grpc.add_RequestServiceServicer_to_server, servicer)
    overrides = PolicyOverrides(settings.policy_addr, tls=tls, token=token)
    retry_after = timedelta(seconds=settings.confirm_retry_seconds)
    confirmer = Confirmer(store, overrides, settings.reconcile_seconds, retry_after)
    tasks.append(asyncio.create_task(confirmer.run()))
    served = await serve(
        addr or settings.addr,
        [SERVICE_NAME],
        server,
        tls=settings.server_tls,
        health_addr=settings.health_addr,
    )
    await served.set_serving(True)
    log.info("RequestService listening on port %d", served.port)
    return RunningRequests(pool, store, publisher, relay, reconciler, tasks, served, directory,
                           standing, overrides, confirmer)  # fmt: skip
