"""`python -m services.metering.ingest`: metering's HTTP ingest until SIGTERM/SIGINT,
for producers that don't speak Kafka (endpoints: `ingest_http`).

A process of its own, not a part of the Cost API: it needs only the broker (it keeps
taking usage while PostgreSQL is down, which the Cost API does not survive), it scales
with producers rather than with queries, and a flood of posts never slows a cost
query. It speaks HTTPS with the process's QM_TLS_CERT_FILE / QM_TLS_KEY_FILE (and
asks clients for certificates with QM_TLS_CLIENT_CA_FILE), plain HTTP without them.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import ssl
from dataclasses import dataclass

from aiohttp import web

from quartermaster import kafka, telemetry
from quartermaster.settings import load_or_exit
from services.metering.ingest_http import USAGE_PATH, Ingest
from services.metering.settings import MeteringSettings
from services.metering.wiring import build_ingest

log = logging.getLogger("qm.metering.ingest")


@dataclass
class RunningIngest:
    """A started ingest: its `url` (of POST /v1/usage) and `port`."""

    ingest: Ingest
    runner: web.AppRunner
    url: str
    port: int

    async def stop(self) -> None:
        """Stop taking requests, finish those in hand, then deliver what is queued."""
        await self.runner.cleanup()
        await asyncio.to_thread(self.ingest.producer.close)


def _tls(settings: MeteringSettings) -> ssl.SSLContext | None:
    if settings.tls_cert_file is None or settings.tls_key_file is None:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(settings.tls_cert_file, settings.tls_key_file)
    if settings.tls_client_ca_file is not None:
        context.load_verify_locations(settings.tls_client_ca_file)
        context.verify_mode = ssl.CERT_REQUIRED
    return context


async def start(settings: MeteringSettings, addr: str | None = None) -> RunningIngest:
    """Serve the ingest on `addr` (default QM_METERING_INGEST_ADDR; port 0 picks a free
    one). OSError when the address can't be bound."""
    ingest = build_ingest(settings)
    if not ingest.reporters.count:
        log.error("QM_TOKENS holds no credential with role reporter: every post is refused")
    runner = web.AppRunner(ingest.app(), access_log=None)
    await runner.setup()
    host, _, port = (addr or settings.ingest_addr).rpartition(":")
    tls = _tls(settings)
    site = web.TCPSite(runner, host, int(port), ssl_context=tls)
    try:
        await site.start()
    except OSError:
        await runner.cleanup()
        ingest.producer.close(0)
        raise
    bound = runner.addresses[0][1]
    url = f"{'https' if tls else 'http'}://{host}:{bound}{USAGE_PATH}"
    log.info("HTTP ingest on %s (%d reporter credentials)", url, ingest.reporters.count)
    return RunningIngest(ingest, runner, url, bound)


async def _serve(settings: MeteringSettings) -> None:
    running = await start(settings)
    done = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, done.set)
    await done.wait()
    await running.stop()


def main() -> None:
    settings = load_or_exit(MeteringSettings, "metering ingest")
    telemetry.setup("metering-ingest", settings.log_level)
    telemetry.metrics_for_prometheus("metering-ingest")
    kafka.configure(settings)
    try:
        asyncio.run(_serve(settings))
    except OSError as exc:
        raise SystemExit(
            f"metering ingest: cannot serve on {settings.ingest_addr}: {exc}"
        ) from None


if __name__ == "__main__":
    main()
