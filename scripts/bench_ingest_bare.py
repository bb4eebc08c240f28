"""The bare endpoint bench_ingest.py compares the HTTP ingest with: aiohttp, as the
ingest, reading the same body (`json.loads`, a JSON array or object, or NDJSON a line at
a time) and answering 202 with the event count, nothing else (no credential check, no
validation, no broker).

    .venv/bin/python scripts/bench_ingest_bare.py HOST:PORT
"""

from __future__ import annotations

import json
import sys

from aiohttp import web


async def post(request: web.Request) -> web.Response:
    body = await request.read()
    if request.content_type == "application/x-ndjson":
        n = sum(1 for line in body.splitlines() if line.strip() and json.loads(line) is not None)
    else:
        value = json.loads(body)
        n = len(value) if isinstance(value, list) else 1
    return web.json_response({"accepted": n}, status=202)


async def healthz(_request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


def main() -> None:
    host, _, port = sys.argv[1].rpartition(":")
    app = web.Application(client_max_size=1_048_576)
    app.router.add_post("/v1/usage", post)
    app.router.add_get("/healthz", healthz)
    web.run_app(app, host=host, port=int(port), access_log=None, print=None)


if __name__ == "__main__":
    main()
