"""`python -m services.metering`: run one metering worker until SIGTERM/SIGINT, or
until its counting fails in a way it cannot handle (then exit status EXIT_CRASHED,
for the supervisor to restart it), or until it finds the broker's topics are not the
ones its stored offsets count (exit status EXIT_REFUSED, with an ERROR saying what to
do: restarting alone will not help; see `topic_check`)."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
import threading

from quartermaster import kafka, telemetry
from quartermaster.db import RETRIED_NEXT_ROUND
from quartermaster.liveness import LoopBeat
from quartermaster.redact import mask_urls
from quartermaster.settings import SettingsError
from services.metering.pricing import CatalogError, PriceCatalog
from services.metering.settings import MeteringSettings
from services.metering.topic_check import TopicRefused
from services.metering.wiring import Counting, build_counting
from services.metering.worker import run

log = logging.getLogger("qm.metering")
EXIT_CRASHED = 70  # EX_SOFTWARE
EXIT_REFUSED = 78  # EX_CONFIG: the topics need an operator (topic_check.TopicRefused)
# How long a graceful stop after a crash may take before the process is ended hard.
STOP_GRACE_SECONDS = 20.0


class Crash:
    """Ends the process when counting crashed: `__call__(exc)` logs it, asks the
    worker to stop as on SIGTERM (it leaves the consumer group, closes the pool) and,
    should that hang, ends the process after STOP_GRACE_SECONDS. `reason` is what
    crashed, for main() to turn into the exit status."""

    def __init__(self) -> None:
        self.reason: BaseException | None = None

    def __call__(self, exc: BaseException) -> None:
        if self.reason is not None:
            return
        self.reason = exc
        if isinstance(exc, TopicRefused):
            log.error("%s", exc)
        else:
            log.critical(
                "metering stops: counting crashed (%s: %s); nothing of the batch in hand "
                "was acked, so a restarted worker counts it again",
                type(exc).__name__, exc, exc_info=exc,
            )  # fmt: skip
        timer = threading.Timer(STOP_GRACE_SECONDS, os._exit, args=(self.exit_status(),))
        timer.daemon = True
        timer.start()
        os.kill(os.getpid(), signal.SIGTERM)

    def exit_status(self) -> int:
        """EXIT_REFUSED for a refusal of the topics, EXIT_CRASHED for anything else."""
        return EXIT_REFUSED if isinstance(self.reason, TopicRefused) else EXIT_CRASHED


def main() -> None:
    try:
        settings = MeteringSettings.from_env()
        catalog = PriceCatalog.from_file(settings.prices_file)
    except (SettingsError, CatalogError) as exc:
        sys.stderr.write(f"metering: {exc}\n")
        raise SystemExit(2) from None
    # /livez on the metrics port says whether the loop that counts still runs: the
    # worker has no other port, and /metrics is served by a thread that runs regardless.
    beat = LoopBeat()
    telemetry.setup("metering", settings.log_level, metrics_addr=settings.metrics_addr,
                    liveness=beat.problem)  # fmt: skip
    kafka.configure(settings)
    # The graph is built on the loop the worker then runs: the asyncpg pool is bound to it.
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    beat.start(loop)
    try:
        counting = loop.run_until_complete(build_counting(settings, catalog))
    except RETRIED_NEXT_ROUND as exc:
        # Before joining the consumer group: a worker that can't count must not own
        # partitions. The supervisor restarts it.
        why = mask_urls(str(exc))
        sys.stderr.write(f"metering: cannot start on Postgres (QM_DATABASE_URL): {why}\n")
        raise SystemExit(1) from None
    _verify_topics(loop, counting)
    crash = Crash()
    stopping = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stopping.set)
    try:
        left = loop.run_until_complete(run(settings, counting, crash, stopping))
    finally:
        loop.close()
    status = 0 if crash.reason is None else crash.exit_status()
    if not left:
        # The consumer's thread is stuck in librdkafka (a broker that does not answer):
        # Python's exit would wait on it for good.
        log.info("metering stopped (without leaving the consumer group)")
        logging.shutdown()
        os._exit(status)
    if crash.reason is not None:
        raise SystemExit(status)
    log.info("metering stopped")


def _verify_topics(loop: asyncio.AbstractEventLoop, counting: Counting) -> None:
    """Before joining the consumer group: refuse (EXIT_REFUSED) when the broker's
    topics are not the ones the stored offsets count. A broker that does not answer
    yet is not a refusal: each partition is checked again before it is counted."""
    try:
        loop.run_until_complete(counting.guard.verify())
    except TopicRefused as exc:
        log.error("%s", exc)
        loop.run_until_complete(counting.pool.close())
        raise SystemExit(EXIT_REFUSED) from None
    except OSError as exc:
        log.warning("topics not checked at start (%s); checked before counting", exc)


if __name__ == "__main__":
    main()
