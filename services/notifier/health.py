"""The notifier's HTTP port for Prometheus and the probes (QM_NOTIFIER_METRICS_ADDR),
aiohttp as the HTTP ingest's (services.metering.ingest_http), which answers the same way:

    GET /metrics   Prometheus
    GET /livez     200 while starting and while every loop runs; 503 naming each loop
                   that has ended (a liveness probe: a restart mends a dead loop)
    GET /healthz   200 once started, every loop running and PostgreSQL answering a
                   query within CHECK_SECONDS; 503 saying which is not (a readiness probe)

Each answers JSON, `{"status": "ok" | "starting" | "unavailable", ...}` with what was
checked: `loops` {name: "running" | "ended: <why>"} and `postgres` ("ok" or why not).

Why these and no more: a channel that is down (Slack, SMTP, a webhook) is not here, as a
restart would not mend it and its deliveries wait retried; it shows in
qm_notifier_deliveries_total and qm_notifier_backlog. PostgreSQL out of reach is
readiness only: a restart can't bring it back (and a notifier that can't reach it at
start exits). The port is served before the notifier connects to anything, so /livez
answers while it starts (its startup probe) and /healthz says "starting".

A loop that ends while the notifier is not stopping is logged as an ERROR once, with its
exception: nothing else would say it, as its task is awaited only at stop.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from typing import Any

import asyncpg
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest

log = logging.getLogger("qm.notifier.health")
CHECK_SECONDS = 2.0  # longest PostgreSQL may take to answer before /healthz says 503
REUSE_SECONDS = 1.0  # a PostgreSQL answer is reused this long (probes come in bursts)


class Health:
    """The endpoints above; `started` hands it the running notifier's pool and loops
    (each task named after its loop, e.g. "sender")."""

    def __init__(self) -> None:
        self._pool: asyncpg.Pool | None = None
        self._loops: Sequence[asyncio.Task[None]] = ()
        self._stopping = False
        self._postgres: tuple[float, str] = (0.0, "")  # (when asked, "ok" or why not)

    def started(self, pool: asyncpg.Pool, loops: Sequence[asyncio.Task[None]]) -> None:
        """The notifier is running with `pool` and `loops`: check them from now on."""
        self._pool, self._loops = pool, loops
        for task in loops:
            task.add_done_callback(self._ended)

    def stopping(self) -> None:
        """The notifier is stopping: its loops end on purpose (not logged)."""
        self._stopping = True

    def _ended(self, task: asyncio.Task[None]) -> None:
        if self._stopping:
            return
        why = _why_ended(task)
        exc = None if task.cancelled() else task.exception()
        log.error("the notifier's %s loop ended (%s): /livez and /healthz say 503 until "
                  "the process restarts", task.get_name(), why, exc_info=exc)  # fmt: skip

    def loops(self) -> dict[str, str]:
        """{loop name: "running" or "ended: <why>"}."""
        return {
            t.get_name(): f"ended: {_why_ended(t)}" if t.done() else "running" for t in self._loops
        }

    async def postgres(self) -> str:
        """ "ok" when the pool runs a query within CHECK_SECONDS, else what went wrong;
        one answer is reused for REUSE_SECONDS."""
        at, said = self._postgres
        if self._pool is None or time.monotonic() - at <= REUSE_SECONDS:
            return said
        try:
            async with self._pool.acquire(timeout=CHECK_SECONDS) as conn:
                await conn.fetchval("SELECT 1", timeout=CHECK_SECONDS)
            said = "ok"
        except (TimeoutError, OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            said = f"out of reach ({type(exc).__name__}: {exc})"
        self._postgres = (time.monotonic(), said)
        return said

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/livez", self.livez)
        app.router.add_get("/healthz", self.healthz)
        app.router.add_get("/metrics", metrics_page)
        return app

    async def livez(self, _request: web.Request) -> web.Response:
        loops = self.loops()
        ok = all(v == "running" for v in loops.values())
        body: dict[str, Any] = {"status": "ok" if ok else "unavailable", "loops": loops}
        return web.json_response(body, status=200 if ok else 503)

    async def healthz(self, _request: web.Request) -> web.Response:
        if self._pool is None:
            return web.json_response({"status": "starting"}, status=503)
        loops = self.loops()
        postgres = await self.postgres()
        ok = postgres == "ok" and all(v == "running" for v in loops.values())
        body = {"status": "ok" if ok else "unavailable", "loops": loops, "postgres": postgres}
        return web.json_response(body, status=200 if ok else 503)

    async def serve(self, addr: str) -> web.AppRunner:
        """Listen on `addr` (host:port); the runner to clean up. SystemExit naming the
        address when it can't be bound (as telemetry's metrics server did)."""
        host, _, port = addr.rpartition(":")
        runner = web.AppRunner(self.app(), access_log=None)
        await runner.setup()
        try:
            await web.TCPSite(runner, host.strip("[]"), int(port)).start()
        except OSError as exc:
            await runner.cleanup()
            raise SystemExit(f"notifier: cannot serve metrics on {addr}: {exc}") from None
        log.info("metrics and health on http://%s (/metrics, /healthz, /livez)", addr)
        return runner


def _why_ended(task: asyncio.Task[None]) -> str:
    if task.cancelled():
        return "cancelled"
    exc = task.exception()
    return "returned" if exc is None else f"{type(exc).__name__}: {exc}"


async def metrics_page(_request: web.Request) -> web.Response:
    page = generate_latest(REGISTRY)
    return web.Response(body=page, headers={"Content-Type": CONTENT_TYPE_LATEST})
