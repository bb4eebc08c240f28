"""`python -m services.metering`: run one metering worker until SIGTERM/SIGINT."""

from __future__ import annotations

import asyncio
import sys

import asyncpg
import faust

from quartermaster import telemetry
from quartermaster.settings import SettingsError
from services.metering.pricing import CatalogError, PriceCatalog
from services.metering.settings import MeteringSettings
from services.metering.wiring import build_counting
from services.metering.worker import create_app


def main() -> None:
    try:
        settings = MeteringSettings.from_env()
        catalog = PriceCatalog.from_file(settings.prices_file)
    except (SettingsError, CatalogError) as exc:
        sys.stderr.write(f"metering: {exc}\n")
        raise SystemExit(2) from None
    telemetry.setup("metering", settings.log_level, metrics_addr=settings.metrics_addr)
    # The graph is built on the loop the faust worker then runs: the asyncpg pool is
    # bound to it, and the agent gets a finished graph instead of building it late.
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    try:
        counting = loop.run_until_complete(build_counting(settings, catalog))
    except (OSError, asyncpg.PostgresError) as exc:
        # Before joining the consumer group: a worker that can't count must not own
        # partitions. The supervisor restarts it.
        sys.stderr.write(f"metering: cannot start on Postgres (QM_DATABASE_URL): {exc}\n")
        raise SystemExit(1) from None
    app = create_app(settings, counting)
    # Not faust's CLI: its `worker` command turns the web server back on (port 6066).
    worker = faust.Worker(app, loop=loop, loglevel=settings.log_level, quiet=True)
    worker.execute_from_commandline()


if __name__ == "__main__":
    main()
