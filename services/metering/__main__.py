"""`python -m services.metering`: run one metering worker until SIGTERM/SIGINT, or
until its counting fails in a way it cannot handle (then exit status EXIT_CRASHED,
for the supervisor to restart it)."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
import threading

import asyncpg
import faust

from quartermaster import telemetry
from quartermaster.redact import mask_urls
from quartermaster.settings import SettingsError
from services.metering.pricing import CatalogError, PriceCatalog
from services.metering.settings import MeteringSettings
from services.metering.wiring import build_counting
from services.metering.worker import create_app

log = logging.getLogger("qm.metering")
EXIT_CRASHED = 70  # EX_SOFTWARE
# How long a graceful stop after a crash may take before the process is ended hard.
STOP_GRACE_SECONDS = 20.0


class Crash:
    """Ends the process when counting crashed: `__call__(exc)` logs it, asks the faust
    worker to stop as on SIGTERM (it leaves the consumer group, closes the pool) and,
    should that hang, ends the process after STOP_GRACE_SECONDS. `reason` is what
    crashed, for main() to turn into the exit status."""

    def __init__(self) -> None:
        self.reason: BaseException | None = None

    def __call__(self, exc: BaseException) -> None:
        if self.reason is not None:
            return
        self.reason = exc
        log.critical(
            "metering stops: counting crashed (%s: %s); nothing of the batch in hand was "
            "acked, so a restarted worker counts it again",
            type(exc).__name__, exc, exc_info=exc,
        )  # fmt: skip
        timer = threading.Timer(STOP_GRACE_SECONDS, os._exit, args=(EXIT_CRASHED,))
        timer.daemon = True
        timer.start()
        os.kill(os.getpid(), signal.SIGTERM)


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
        why = mask_urls(str(exc))
        sys.stderr.write(f"metering: cannot start on Postgres (QM_DATABASE_URL): {why}\n")
        raise SystemExit(1) from None
    crash = Crash()
    app = create_app(settings, counting, crash)
    # Not faust's CLI: its `worker` command turns the web server back on (port 6066).
    worker = faust.Worker(app, loop=loop, loglevel=settings.log_level, quiet=True)
    try:
        worker.execute_from_commandline()  # always ends in SystemExit
    finally:
        if crash.reason is not None:
            # in place of the SystemExit(0) of a stop on SIGTERM
            raise SystemExit(EXIT_CRASHED)


if __name__ == "__main__":
    main()
