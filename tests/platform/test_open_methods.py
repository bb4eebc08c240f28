"""Health and reflection, the methods every server of ours answers without a token
(quartermaster.grpcserver): garbage and unimplemented methods get a plain status, never
UNKNOWN quoting a class name, and nothing is logged for them (anyone could flood the
log). A real server from `serve()` on a free port, sent raw bytes."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2

from quartermaster.auth import server as auth_server
from quartermaster.grpcserver import LIVENESS_SERVICE, serve
from quartermaster.tokens import parse_tokens
from tests.helpers import TOKENS_SPEC

GARBAGE = b"\xff"
HEALTH = "/grpc.health.v1.Health/"
REFLECTION = "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo"


def _raw(ch: grpc.aio.Channel, method: str, streaming: bool = False) -> Any:
    ident = lambda b: b  # noqa: E731 -- raw bytes both ways
    if streaming:
        return ch.stream_stream(method, request_serializer=ident, response_deserializer=ident)
    return ch.unary_unary(method, request_serializer=ident, response_deserializer=ident)


@pytest.fixture
async def target() -> AsyncIterator[str]:
    server = auth_server(parse_tokens(TOKENS_SPEC), "tests")
    served = await serve("127.0.0.1:0", ["quartermaster.v1.PolicyService"], server, tls=None)
    try:
        yield f"127.0.0.1:{served.port}"
    finally:
        await served.stop(0)


async def test_garbage_and_unimplemented_get_plain_statuses_and_no_log(
    target: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    async with grpc.aio.insecure_channel(target) as ch:
        calls = [
            _raw(ch, HEALTH + "Check")(GARBAGE),
            _raw(ch, HEALTH + "List")(b""),
            _raw(ch, HEALTH + "List")(GARBAGE),
        ]
        got = []
        for call in calls:
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await call
            got.append((err.value.code(), err.value.details()))
        watch = _raw(ch, HEALTH + "Watch", streaming=True)(iter([GARBAGE]))
        with pytest.raises(grpc.aio.AioRpcError) as err:
            async for _ in watch:
                pass
        got.append((err.value.code(), err.value.details()))
        stream = _raw(ch, REFLECTION, streaming=True)(iter([GARBAGE]))
        with pytest.raises(grpc.aio.AioRpcError) as err:
            async for _ in stream:
                pass
        got.append((err.value.code(), err.value.details()))

    invalid, unimpl = grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.UNIMPLEMENTED
    assert got == [
        (invalid, "request: not a valid grpc.health.v1.Health/Check request message"),
        (unimpl, "this method is not implemented here"),
        (invalid, "request: not a valid grpc.health.v1.Health/List request message"),
        (invalid, "request: not a valid grpc.health.v1.Health/Watch request message"),
        (
            invalid,
            "request: not a valid grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo"
            " request message",
        ),
    ]
    noisy = [r for r in caplog.records if r.levelno >= logging.WARNING and "plaintext" not in r.msg]
    assert noisy == [], [r.getMessage() for r in noisy]


async def test_health_and_reflection_still_answer_well_formed_calls(target: str) -> None:
    async with grpc.aio.insecure_channel(target) as ch:
        stub = health_pb2_grpc.HealthStub(ch)
        overall = await stub.Check(health_pb2.HealthCheckRequest(service=""))
        # Not ready yet (nobody said so), but alive: what the chart's probes ask.
        assert overall.status == health_pb2.HealthCheckResponse.NOT_SERVING
        alive = await stub.Check(health_pb2.HealthCheckRequest(service=LIVENESS_SERVICE))
        assert alive.status == health_pb2.HealthCheckResponse.SERVING
        info = ch.stream_stream(
            REFLECTION,
            request_serializer=reflection_pb2.ServerReflectionRequest.SerializeToString,
            response_deserializer=reflection_pb2.ServerReflectionResponse.FromString,
        )
        answers = [
            a async for a in info(iter([reflection_pb2.ServerReflectionRequest(list_services="")]))
        ]
    names = {s.name for s in answers[0].list_services_response.service}
    assert "quartermaster.v1.PolicyService" in names
    assert "grpc.health.v1.Health" in names
