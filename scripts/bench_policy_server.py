"""One server process for `make bench-policy`: the real policy server, or a bare
grpc.aio echo service that answers the same method shape with a canned response.

    bench_policy_server.py policy PORTFILE TIMINGS   # env: the QM_* settings
    bench_policy_server.py echo PORTFILE TIMINGS

It writes its port to PORTFILE once serving. Both servers time every call inside
the handler with the same wrapper (wall and CPU ns around it: for policy the
validation, resolution, decision and response; for the echo, handing back the
canned answer, the instrument's own floor) and write the durations to TIMINGS on
SIGTERM. The wrapper's cost is thus paid on both sides of the comparison.
"""

from __future__ import annotations

import asyncio
import json
import random
import signal
import statistics
import sys
import time
from array import array
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import grpc

from quartermaster.v1 import policy_pb2


def _echo_response() -> policy_pb2.CheckResponse:
    """A CheckResponse as large as policy's, so both sides (de)serialize alike: every
    bench user is in a department with a pooled budget, so policy's answers carry that
    pool's standing too."""
    r = policy_pb2.CheckResponse(
        decision=policy_pb2.DECISION_ALLOW, used_micros=123_456, limit_micros=10_000_000,
        remaining_micros=9_876_544, limit_source="group:team-17",
        reason="within budget: 0.12 of 10.00 credits used (group:team-17)",
        period=policy_pb2.PERIOD_MONTH, enforcement=policy_pb2.ENFORCEMENT_HARD,
        pools=[policy_pb2.PoolStanding(
            group_id="dept-7", used_micros=59_617_936_434, limit_micros=500_000_000_000,
            remaining_micros=440_382_063_566, period=policy_pb2.PERIOD_MONTH,
        )],
    )  # fmt: skip
    r.period_start.FromSeconds(1_793_491_200)
    r.period_end.FromSeconds(1_796_083_200)
    return r


Handler = Callable[..., Awaitable[Any]]


def timed(inner: Handler, spent: array[int]) -> Handler:
    """`inner`, appending its wall-clock ns and then its CPU ns to `spent` per call."""

    async def timed_call(*args: Any) -> Any:
        t, c = time.perf_counter_ns(), time.thread_time_ns()
        try:
            return await inner(*args)
        finally:
            spent.append(time.perf_counter_ns() - t)
            spent.append(time.thread_time_ns() - c)

    return timed_call


async def _echo(portfile: Path, timings: Path) -> None:
    canned = _echo_response()

    async def answer(request: policy_pb2.CheckRequest, context: Any) -> policy_pb2.CheckResponse:
        return canned

    spent = array("q")
    check = timed(answer, spent)

    # Parses the request and serializes the response, as a generated servicer does:
    # the transport and protobuf, with no decision.
    method = grpc.unary_unary_rpc_method_handler(
        check,
        request_deserializer=policy_pb2.CheckRequest.FromString,
        response_serializer=policy_pb2.CheckResponse.SerializeToString,
    )
    handler = grpc.method_handlers_generic_handler("bench.Echo", {"Check": method})
    server = grpc.aio.server()
    server.add_generic_rpc_handlers((handler,))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    portfile.write_text(str(port))  # noqa: ASYNC240 - once, before any call
    await _until_term()
    await server.stop(1)
    timings.write_bytes(spent.tobytes())  # noqa: ASYNC240 - after the last call


async def _policy(portfile: Path, timings: Path) -> None:
    from services.policy import wiring
    from services.policy.policy_servicer import PolicyServicer
    from services.policy.settings import PolicySettings
    from services.policy.stores.reservations import ReservationStore

    spent = array("q")  # wall-clock ns, then CPU ns, per call
    inner = PolicyServicer.Check
    # Before start: the server binds the servicer's methods when it is registered.
    PolicyServicer.Check = timed(inner, spent)  # type: ignore[method-assign,assignment]
    running = await wiring.start(PolicySettings.from_env(), addr="127.0.0.1:0")
    await asyncio.wait_for(running.serving.wait(), 600)
    # The servicer alone, before any client runs: the decision without a transport
    # or a client competing for the CPU.
    store = ReservationStore(running.pool, "bench")
    servicer = PolicyServicer(running.evaluator, store, 600, running.readiness)
    users = len(running.evaluator.snapshot.users)
    rng = random.Random(3)
    alone = array("q")
    for _ in range(20_000):
        req = policy_pb2.CheckRequest(
            user_id=f"user-{rng.randrange(users)}", product="chat", model="gpt-5",
            estimated_micros=5_000,
        )  # fmt: skip
        t = time.perf_counter_ns()
        await inner(servicer, req, None)  # type: ignore[arg-type]
        alone.append(time.perf_counter_ns() - t)
    timings.with_suffix(".alone").write_bytes(alone.tobytes())
    rss = _rss_mb()  # the 100,000 people loaded, before anything else happened
    portfile.write_text(str(running.port))  # noqa: ASYNC240 - once, before any call
    await _until_term()
    # After the clients: reloads leave a high-water mark in the heap.
    reloads = await _reloads(running)
    reloads.update(rss_mb_100k_users=rss, rss_mb_after_reloads=_rss_mb())
    timings.with_suffix(".reloads").write_text(json.dumps(reloads))
    await running.stop(1)
    timings.write_bytes(spent.tobytes())  # noqa: ASYNC240 - after the last call


def _rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return round(int(line.split()[1]) / 1024, 1)
    return float("nan")


async def _reloads(running: Any) -> dict[str, float]:
    """Median ms of a reload after a change of limits only and after a directory
    change (directory_version moved), and the longest the event loop went without
    running anything during either kind: how long Checks would wait."""
    loop = asyncio.get_running_loop()
    out: dict[str, float] = {}
    for kind in ("rules", "directory"):
        spent: list[float] = []
        stalls = [0.0]

        async def tick(stalls: list[float] = stalls) -> None:
            last = loop.time()
            while True:
                await asyncio.sleep(0)
                now = loop.time()
                stalls.append(now - last)
                last = now

        for _ in range(3):
            if kind == "directory":
                await running.pool.execute(
                    "UPDATE policy.workspaces SET directory_version = directory_version + 1"
                )
            ticker = asyncio.create_task(tick())
            await asyncio.sleep(0.01)
            t = time.perf_counter()
            await running.reload()
            spent.append(time.perf_counter() - t)
            ticker.cancel()
        out[f"reload_{kind}_ms"] = round(statistics.median(spent) * 1e3, 1)
        out[f"reload_{kind}_stall_ms"] = round(max(stalls) * 1e3, 1)
    return out


async def _until_term() -> None:
    done = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, done.set)
    await done.wait()


def main() -> None:
    kind, portfile, timings = sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3])
    asyncio.run(_echo(portfile, timings) if kind == "echo" else _policy(portfile, timings))


if __name__ == "__main__":
    main()
