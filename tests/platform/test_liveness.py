"""/livez beside /metrics (quartermaster.liveness): a stuck event loop is told from a
live one, by the metrics thread, with the reason.

metering's worker was probed on /metrics, which its metrics thread serves whatever the
loop does, so a worker whose loop was stuck was never restarted.
"""

from __future__ import annotations

import asyncio
import json
import time
import urllib.error
import urllib.request
from collections.abc import Iterator

import pytest
from prometheus_client.exposition import ThreadingWSGIServer

from quartermaster.liveness import LoopBeat, serve


def get(server: ThreadingWSGIServer, path: str) -> tuple[int, bytes]:
    port = server.server_address[1]
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


@pytest.fixture
def beat() -> LoopBeat:
    return LoopBeat(stale_after=0.5)


@pytest.fixture
def server(beat: LoopBeat) -> Iterator[ThreadingWSGIServer]:
    s = serve("127.0.0.1", 0, beat.problem)
    try:
        yield s
    finally:
        s.shutdown()
        s.server_close()


async def test_a_running_loop_is_alive_and_a_stuck_one_is_told_with_why(
    beat: LoopBeat, server: ThreadingWSGIServer
) -> None:
    assert get(server, "/livez")[0] == 200, "not started yet: setting up is not dead"
    beat.start(asyncio.get_running_loop())
    await asyncio.sleep(0.1)
    status, body = await asyncio.to_thread(get, server, "/livez")
    assert (status, json.loads(body)) == (200, {"status": "ok"})

    time.sleep(1.2)  # noqa: ASYNC251 - the point: the loop is stuck, its beats too
    status, body = get(server, "/livez")  # asked from here: the metrics thread answers
    assert status == 503
    answer = json.loads(body)
    assert answer["status"] == "unavailable"
    assert "the event loop has not run for 1 s" in answer["why"]

    await asyncio.sleep(0.2)  # running again: it beats
    assert (await asyncio.to_thread(get, server, "/livez"))[0] == 200


def test_metrics_are_served_beside_it(server: ThreadingWSGIServer) -> None:
    status, body = get(server, "/metrics")
    assert status == 200
    assert b"# TYPE" in body  # prometheus_client's own collectors at least


def test_a_port_in_use_is_an_oserror(server: ThreadingWSGIServer) -> None:
    with pytest.raises(OSError, match="in use"):
        serve("127.0.0.1", server.server_address[1])
