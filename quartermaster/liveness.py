"""Liveness over HTTP for the processes whose Prometheus port is their only one: GET
/livez beside /metrics, and `LoopBeat`, which tells a live asyncio event loop from a
stuck one.

Why: metering's worker answered its probes with /metrics, served by a thread that runs
whatever the loop does, so a worker whose loop was stuck (a blocking call, a deadlock in
a library) was never restarted. The loop now beats every BEAT_SECONDS; /livez answers
503 once it has missed beats for `stale_after` seconds, naming how long. The probe is
answered by the metrics thread, so it says why instead of timing out.

    GET /livez     200 {"status": "ok"} | 503 {"status": "unavailable", "why": "..."}
    GET /metrics   (and any other path) Prometheus, as prometheus_client serves it
"""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, make_server

from prometheus_client import make_wsgi_app
from prometheus_client.exposition import ThreadingWSGIServer

BEAT_SECONDS = 1.0

Liveness = Callable[[], str]
"""Why the process is not alive ("" when it is)."""


class LoopBeat:
    """Beats on an event loop once `start`ed; `problem()` (any thread) says "" while the
    last beat is under `stale_after` seconds old, else how long the loop has not run.
    Before `start` it says "" (a process still setting up is not dead)."""

    def __init__(self, stale_after: float = 30.0) -> None:
        self.stale_after = stale_after
        self._last: float | None = None  # monotonic; a float is written atomically

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        """Beat on `loop` from now on (the beats run whenever the loop does)."""
        self._last = time.monotonic()
        loop.call_soon_threadsafe(self._beat, loop)

    def _beat(self, loop: asyncio.AbstractEventLoop) -> None:
        self._last = time.monotonic()
        loop.call_later(BEAT_SECONDS, self._beat, loop)

    def problem(self) -> str:
        if self._last is None:
            return ""
        age = time.monotonic() - self._last
        if age < self.stale_after:
            return ""
        return f"the event loop has not run for {age:.0f} s (stuck: restart it)"


class _Quiet(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        """Probes every few seconds would fill the log."""


def _app(liveness: Liveness) -> Callable[..., Iterable[bytes]]:
    metrics_app = make_wsgi_app()

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        if environ.get("PATH_INFO") != "/livez":
            return metrics_app(environ, start_response)  # type: ignore[no-any-return]
        why = liveness()
        body = json.dumps({"status": "unavailable", "why": why} if why else {"status": "ok"})
        start_response("503 Service Unavailable" if why else "200 OK",
                       [("Content-Type", "application/json")])  # fmt: skip
        return [body.encode()]

    return app


def serve(host: str, port: int, liveness: Liveness = lambda: "") -> ThreadingWSGIServer:
    """Serve /livez and /metrics on host:port from a daemon thread; the server (its
    `server_address` says the port, when `port` was 0). OSError when the port can't
    be bound."""
    # The family of the host (an IPv6 "::" as well as "0.0.0.0"), as prometheus_client's
    # own start_http_server picks it.
    family = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM,
                                flags=socket.AI_PASSIVE)[0][0]  # fmt: skip
    server_class = type("Server", (ThreadingWSGIServer,), {"address_family": family})
    server: ThreadingWSGIServer = make_server(
        host, port, _app(liveness), server_class, handler_class=_Quiet
    )
    threading.Thread(target=server.serve_forever, name="metrics", daemon=True).start()
    return server
