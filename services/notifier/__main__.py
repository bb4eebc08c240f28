"""`python -m services.notifier`: read intents and request events, deliver them, until
SIGTERM/SIGINT, then stop. With QM_NOTIFIER_METRICS_ADDR, its port serves /metrics and
the probes' /livez and /healthz (services.notifier.health) from before it connects."""

from __future__ import annotations

from quartermaster import kafka, telemetry
from quartermaster.db import run_service
from quartermaster.grpcserver import until_signalled
from quartermaster.settings import load_or_exit
from services.notifier import wiring
from services.notifier.health import Health
from services.notifier.settings import NotifierSettings


async def _run(settings: NotifierSettings) -> None:
    health = Health()
    runner = await health.serve(settings.metrics_addr) if settings.metrics_addr else None
    try:
        running = await wiring.start(settings)
        health.started(running.pool, running.tasks)

        async def stop() -> None:
            health.stopping()
            await running.stop()

        await until_signalled(stop)
    finally:
        if runner is not None:
            await runner.cleanup()


def main() -> None:
    settings = load_or_exit(NotifierSettings, "notifier")
    # /metrics is served by Health's port, beside the probes' paths.
    telemetry.setup("notifier", settings.log_level)
    if settings.metrics_addr:
        telemetry.metrics_for_prometheus("notifier")
    kafka.configure(settings)
    run_service("notifier", _run(settings))


if __name__ == "__main__":
    main()
