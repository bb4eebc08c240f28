"""`python -m services.notifier`: read intents and request events, deliver them, until
SIGTERM/SIGINT, then stop."""

from __future__ import annotations

import asyncio

from quartermaster import kafka, telemetry
from quartermaster.grpcserver import until_signalled
from quartermaster.settings import load_or_exit
from services.notifier import wiring
from services.notifier.settings import NotifierSettings


async def _run(settings: NotifierSettings) -> None:
    running = await wiring.start(settings)
    await until_signalled(running.stop)


def main() -> None:
    settings = load_or_exit(NotifierSettings, "notifier")
    telemetry.setup("notifier", settings.log_level, metrics_addr=settings.metrics_addr)
    kafka.configure(settings)
    asyncio.run(_run(settings))


if __name__ == "__main__":
    main()
