"""`python -m services.metering.api`: the Cost API server (UsageService) until
SIGTERM/SIGINT. It only reads metering's Postgres schema, so it scales by replicas."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass

import asyncpg

from quartermaster import auth, kafka, telemetry
from quartermaster.db import RETRIED_NEXT_ROUND, close_pool, outage_text, run_service
from quartermaster.grpcguard import add_guarded
from quartermaster.grpcserver import Served, serve, until_signalled
from quartermaster.settings import load_or_exit
from quartermaster.v1 import cost_pb2, cost_pb2_grpc, prices_pb2, prices_pb2_grpc
from services.metering.compaction import compact
from services.metering.settings import MeteringSettings
from services.metering.wiring import Api, build_api

log = logging.getLogger("qm.metering.api")
SERVICE_NAME = cost_pb2.DESCRIPTOR.services_by_name["UsageService"].full_name
PRICES_SERVICE = prices_pb2.DESCRIPTOR.services_by_name["PriceCatalogService"].full_name


@dataclass
class RunningApi:
    """A started API server; `stop` ends calls, the compactor and the pool, in order."""

    served: Served
    api: Api
    compactor: asyncio.Task[None]

    async def stop(self, grace: float) -> None:
        await self.served.stop(grace)
        await self.api.directory.close()
        self.compactor.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self.compactor
        await close_pool(self.api.pool)


async def _compact_forever(pool: asyncpg.Pool, settings: MeteringSettings) -> None:
    while True:
        await asyncio.sleep(settings.compact_seconds)
        try:
            await compact(pool, settings.timezone)
        except RETRIED_NEXT_ROUND as exc:
            # Daily figures lag a little longer; the next round catches up.
            log.warning("daily rollup compaction failed: %s", outage_text(exc))


async def start(settings: MeteringSettings, addr: str | None = None) -> RunningApi:
    """Serve the Cost API and the price catalog on `addr` (default QM_USAGE_API_ADDR;
    port 0 picks a free one) and compact daily rollups every QM_USAGE_COMPACT_SECONDS."""
    api = await build_api(settings)
    server = auth.server(settings.grants, "metering api")
    # Guarded as policy's are (quartermaster.grpcguard): an unparsable request or a NUL
    # is refused naming the field, a database out of reach answers UNAVAILABLE.
    add_guarded(server, cost_pb2_grpc.add_UsageServiceServicer_to_server, api.usage)
    add_guarded(server, prices_pb2_grpc.add_PriceCatalogServiceServicer_to_server, api.prices)
    services = [SERVICE_NAME, PRICES_SERVICE]
    served = await serve(
        addr or settings.api_addr,
        services,
        server,
        tls=settings.server_tls,
        health_addr=settings.api_health_addr,
    )
    await served.set_serving(True)
    return RunningApi(served, api, asyncio.create_task(_compact_forever(api.pool, settings)))


async def _serve(settings: MeteringSettings) -> None:
    running = await start(settings)
    await until_signalled(lambda: running.stop(5.0))


def main() -> None:
    settings = load_or_exit(MeteringSettings, "metering api")
    telemetry.setup("metering-api", settings.log_level, metrics_addr=settings.api_metrics_addr)
    kafka.configure(settings)
    run_service("metering api", _serve(settings))


if __name__ == "__main__":
    main()
