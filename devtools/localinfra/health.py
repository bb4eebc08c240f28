"""Waiting for a started service's gRPC health check: `make run` and the benches."""

from __future__ import annotations

import asyncio
import contextlib
import time

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from devtools.localinfra.process import ChildProcess
from quartermaster.grpcclient import open_channel
from quartermaster.tls import ClientTls


async def wait_serving(addr: str, tls: ClientTls | None, proc: ChildProcess, within: float) -> None:
    """Until `proc`'s gRPC health says SERVING; RuntimeError when it exits first,
    TimeoutError after `within` seconds."""
    deadline = time.monotonic() + within
    async with open_channel(addr, tls) as ch:
        stub = health_pb2_grpc.HealthStub(ch)
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(f"{proc.name} exited:\n{proc.log_tail()}")
            with contextlib.suppress(grpc.aio.AioRpcError):
                resp = await stub.Check(health_pb2.HealthCheckRequest(), timeout=1)
                if resp.status == health_pb2.HealthCheckResponse.SERVING:
                    return
            await asyncio.sleep(0.1)
    raise TimeoutError(f"{proc.name} was not SERVING within {within:.0f}s:\n{proc.log_tail()}")
