"""`python -m services.requests`: serve RequestService and run the outbox relay and the
reconciler until SIGTERM/SIGINT, then stop gracefully."""

from __future__ import annotations

from quartermaster import kafka, telemetry
from quartermaster.db import run_service
from quartermaster.grpcserver import until_signalled
from quartermaster.settings import load_or_exit
from services.requests import wiring
from services.requests.settings import RequestsSettings


async def _run(settings: RequestsSettings) -> None:
    running = await wiring.start(settings)
    await until_signalled(lambda: running.stop(settings.grace_seconds))


def main() -> None:
    settings = load_or_exit(RequestsSettings, "requests")
    telemetry.setup("requests", settings.log_level, metrics_addr=settings.metrics_addr)
    kafka.configure(settings)
    run_service("requests", _run(settings))


if __name__ == "__main__":
    main()
