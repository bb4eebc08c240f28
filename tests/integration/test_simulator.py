"""make run's demo traffic (devtools.simulator) goes on when policy refuses or is away:
a broker that lost its topics, or a replica not ready, had ended make run with the
simulator's traceback before the service that refused could say why."""

from __future__ import annotations

import asyncio
import io
from contextlib import asynccontextmanager

import grpc
import pytest

from devtools import simulator
from devtools.localinfra import free_port
from quartermaster.v1 import policy_pb2
from tests.helpers import serve_policy_methods

served = asynccontextmanager(serve_policy_methods)


async def test_a_policy_that_is_not_ready_is_said_once_and_the_traffic_goes_on() -> None:
    calls = 0

    async def not_ready(
        _request: object, context: grpc.aio.ServicerContext[object, object]
    ) -> None:
        nonlocal calls
        calls += 1
        await context.abort(grpc.StatusCode.UNAVAILABLE, "policy is not ready: totals")

    methods = {name: (not_ready, policy_pb2.CheckRequest if name == "Check"
                      else policy_pb2.GetBudgetRequest, policy_pb2.CheckResponse)
               for name in ("Check", "GetBudget")}  # fmt: skip
    out = io.StringIO()
    async with served(methods) as addr:
        # No broker on that port: nothing is reported (every Check is refused anyway).
        task = asyncio.create_task(
            simulator.run(f"127.0.0.1:{free_port()}", addr, "ws", out, report_every=0.2)
        )
        await asyncio.sleep(1.5)
        assert not task.done(), "it went on"
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    said = out.getvalue()
    assert calls > 3, "it kept calling"
    line = "(demo traffic: policy answered UNAVAILABLE: policy is not ready: totals; going on)"
    assert said.count(line) == 1, said
