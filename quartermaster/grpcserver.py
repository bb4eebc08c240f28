"""A grpc.aio server with the standard health service and server reflection on.

Every gRPC server of ours starts through `serve()`, so `grpcurl` and Kubernetes
probes work against all of them the same way, and each listens with TLS (mutual when
its settings say so) or, when none is configured, in plaintext with a WARNING.

Health and reflection need no credential, so anyone can send them anything: their
methods are hardened like our own (grpcguard): a request that doesn't parse is
INVALID_ARGUMENT naming the problem, a method the library leaves unimplemented
(Health/List) UNIMPLEMENTED with a plain message, and neither logs anything. The health
service "liveness" is SERVING while the process runs (for liveness probes); the
overall one ("") and each service's name follow the server's readiness.

A health port (`serve(..., health_addr=)`): a second, plaintext server with the health
service alone (no reflection, no application service), answering from the same
HealthServicer, so it says what the main port's health service says. It exists for the
kubelet, whose native gRPC probes speak plaintext only: with TLS on the main port they
could not ask it. It tells nothing but SERVING / NOT_SERVING per service name.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import signal
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, NoReturn

import grpc
from google.protobuf.message import DecodeError
from grpc_health.v1 import _async as health_aio
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection, reflection_pb2_grpc
from grpc_reflection.v1alpha._async import ReflectionServicer

from quartermaster import rpcmetrics
from quartermaster.tls import ServerTls
from quartermaster.validation import InvalidRequest, Problems

log = logging.getLogger("qm.grpc")

# The longest status message we send, in UTF-8 bytes. It travels in the grpc-message
# trailer, percent-encoded (up to 3 bytes per byte), and a client refuses trailers over
# its metadata limit (8 KB by default) with RESOURCE_EXHAUSTED: the caller would hear
# "resource exhausted" instead of what was wrong with its request.
MAX_DETAILS_BYTES = 1024
# The health service name that is SERVING while the process runs, whatever the
# readiness: a liveness probe asks it, so a replica is never restarted for being not
# ready (e.g. waiting for an operator), only for not answering at all.
LIVENESS_SERVICE = "liveness"


def bounded(message: str) -> str:
    """`message`, cut to MAX_DETAILS_BYTES of UTF-8 (on a character boundary) with
    a note of how much was cut."""
    if len(message) <= MAX_DETAILS_BYTES // 4:
        return message  # fits whatever its characters are
    raw = message.encode("utf-8", "replace")
    if len(raw) <= MAX_DETAILS_BYTES:
        return message
    head = raw[: MAX_DETAILS_BYTES - 40].decode("utf-8", "ignore")
    return f"{head} ... ({len(raw)} bytes, cut)"


async def abort(
    context: grpc.aio.ServicerContext[Any, Any], code: grpc.StatusCode, message: str
) -> NoReturn:
    """End the call with `code` and `message`, bounded (see `bounded`); grpc.aio
    raises AbortError (its stubs don't say so)."""
    await context.abort(code, bounded(message))
    raise AssertionError("abort returned")


async def refuse(context: grpc.aio.ServicerContext[Any, Any], problems: Problems) -> None:
    """End the call with INVALID_ARGUMENT naming the problems (the first few, and how
    many more: Problems.message), when there is any (returns when the request is fine)."""
    if problems:
        await abort(context, grpc.StatusCode.INVALID_ARGUMENT, problems.message())


async def refuse_invalid(
    context: grpc.aio.ServicerContext[Any, Any], exc: InvalidRequest
) -> NoReturn:
    """End the call with INVALID_ARGUMENT naming the problems `exc` carries."""
    await abort(context, grpc.StatusCode.INVALID_ARGUMENT, str(exc))


@dataclass
class Served:
    """A started server: `port` the one it listens on; `health_port` the plaintext
    health-only port (0: none), whose server is `health_server`."""

    server: grpc.aio.Server
    port: int
    health: health_aio.HealthServicer
    services: tuple[str, ...]
    health_server: grpc.aio.Server | None = None
    health_port: int = 0

    async def set_serving(self, serving: bool) -> None:
        status = (
            health_pb2.HealthCheckResponse.SERVING
            if serving
            else health_pb2.HealthCheckResponse.NOT_SERVING
        )
        for name in ("", *self.services):
            await self.health.set(name, status)
        await self.health.set(LIVENESS_SERVICE, health_pb2.HealthCheckResponse.SERVING)
        for name in self.services:
            rpcmetrics.set_serving(name, serving)

    async def stop(self, grace: float) -> None:
        """Say NOT_SERVING, stop taking calls, let in-flight ones finish within `grace`."""
        await self.health.enter_graceful_shutdown()
        for name in self.services:
            rpcmetrics.set_serving(name, False)
        # The health port stops with the main one: until then it says NOT_SERVING, as
        # the main port does (a probe in between sees the replica going, not gone).
        stops = [self.server.stop(grace)]
        if self.health_server is not None:
            stops.append(self.health_server.stop(grace))
        await asyncio.gather(*stops)


def server_credentials(tls: ServerTls) -> grpc.ServerCredentials:
    """gRPC server credentials from `tls`: its certificate and key, and with a client CA
    a demand for a client certificate signed by it (a client without one is refused in
    the handshake, before any call)."""
    return grpc.ssl_server_credentials(
        [(tls.private_key, tls.cert_chain)],
        root_certificates=tls.client_ca,
        require_client_auth=tls.client_ca is not None,
    )


def _listen(server: grpc.aio.Server, addr: str, tls: ServerTls | None) -> int:
    if tls is None:
        # Said once per server at start: bearer tokens and budgets travel in clear.
        log.warning(
            "gRPC on %s is plaintext (no TLS): set QM_TLS_CERT_FILE and QM_TLS_KEY_FILE", addr
        )
        return server.add_insecure_port(addr)
    log.info("gRPC on %s with TLS%s", addr, " (mutual)" if tls.client_ca else "")
    return server.add_secure_port(addr, server_credentials(tls))


async def serve(
    addr: str,
    services: Sequence[str],
    server: grpc.aio.Server,
    *,
    tls: ServerTls | None,
    health_addr: str = "",
) -> Served:
    """Add health + reflection to `server` (servicers already added), listen on `addr`
    (port 0: a free one) with `tls` (None: plaintext, logged as a WARNING), start it,
    and report NOT_SERVING until told otherwise. With `health_addr` (host:port, port 0:
    a free one) also serve the health service alone there, in plaintext (see the module
    docstring; `Served.health_port`). RuntimeError when it can't listen on either."""
    hs = health_aio.HealthServicer()
    served = Served(server, 0, hs, tuple(services))
    await served.set_serving(False)
    names = (*services, health.SERVICE_NAME, reflection.SERVICE_NAME)
    _add_hardened(server, health_pb2_grpc.add_HealthServicer_to_server, hs)
    _add_hardened(
        server, reflection_pb2_grpc.add_ServerReflectionServicer_to_server,
        ReflectionServicer(names),
    )  # fmt: skip
    if health_addr:
        # Bound before the main port, so a taken address stops the start before the
        # server takes any call.
        served.health_server, served.health_port = await _serve_health(health_addr, hs)
    port = _listen(server, addr, tls)
    if port == 0:
        if served.health_server is not None:
            await served.health_server.stop(None)
        raise RuntimeError(f"could not listen on {addr}")
    await server.start()
    served.port = port
    return served


async def _serve_health(addr: str, hs: health_aio.HealthServicer) -> tuple[grpc.aio.Server, int]:
    """A started plaintext server on `addr` with `hs` alone, and its port; RuntimeError
    when it can't listen. No interceptors: health needs no credential, and its calls are
    not counted (rpcmetrics.NOT_COUNTED) on the main port either."""
    server = grpc.aio.server()
    _add_hardened(server, health_pb2_grpc.add_HealthServicer_to_server, hs)
    # Plaintext on purpose, and said once: it answers SERVING / NOT_SERVING only.
    port = server.add_insecure_port(addr)
    if port == 0:
        raise RuntimeError(f"could not listen on {addr} (health)")
    await server.start()
    log.info("gRPC health only, plaintext, on %s (for probes)", addr)
    return server, port


class _Garbled:
    """What the hardened parser hands a method instead of a request it could not parse."""

    __slots__ = ("problem",)

    def __init__(self, problem: str) -> None:
        self.problem = problem


def _parser(parse: Callable[[bytes], Any], method: str) -> Callable[[bytes], Any]:
    def parse_or_garbled(data: bytes) -> Any:
        try:
            return parse(data)
        except DecodeError:
            return _Garbled(f"request: not a valid {method} request message")

    return parse_or_garbled


async def _unimplemented(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> NoReturn:
    await abort(context, grpc.StatusCode.UNIMPLEMENTED, "this method is not implemented here")


async def _failed(context: grpc.aio.ServicerContext[Any, Any], method: str) -> NoReturn:
    # One line with the traceback per failure, under a reference the caller is given.
    ref = uuid.uuid4().hex[:12]
    log.exception("%s failed (ref %s)", method, ref)
    await abort(context, grpc.StatusCode.INTERNAL, f"{method} failed in the server (log ref {ref})")


def _behavior(behavior: Any, method: str, streaming_in: bool, streaming_out: bool) -> Any:
    """`behavior` with a garbled request answered INVALID_ARGUMENT and an unexpected
    exception INTERNAL (grpc would answer UNKNOWN quoting the class and log a
    traceback per call: anyone could flood the log through these open methods)."""

    async def checked(requests: AsyncIterator[Any], context: Any) -> AsyncIterator[Any]:
        async for r in requests:
            if r.__class__ is _Garbled:
                await abort(context, grpc.StatusCode.INVALID_ARGUMENT, r.problem)
            yield r

    async def unary(request: Any, context: Any) -> Any:
        if request.__class__ is _Garbled:
            await abort(context, grpc.StatusCode.INVALID_ARGUMENT, request.problem)
        try:
            return await behavior(request, context)
        except (grpc.aio.AbortError, asyncio.CancelledError):
            raise
        except Exception:
            await _failed(context, method)

    async def streams(request: Any, context: Any) -> AsyncIterator[Any]:
        if streaming_in:
            request = checked(request, context)
        elif request.__class__ is _Garbled:
            await abort(context, grpc.StatusCode.INVALID_ARGUMENT, request.problem)
        try:
            if inspect.isasyncgenfunction(behavior):
                async for answer in behavior(request, context):
                    yield answer
            else:  # writes its answers itself (context.write), e.g. Health/Watch
                await behavior(request, context)
        except (grpc.aio.AbortError, asyncio.CancelledError):
            raise
        except Exception:
            await _failed(context, method)

    if not (inspect.iscoroutinefunction(behavior) or inspect.isasyncgenfunction(behavior)):
        # A generated base class's default: grpc would answer UNIMPLEMENTED quoting
        # NotImplementedError and log its traceback.
        behavior = _unimplemented
    return streams if streaming_in or streaming_out else unary


def _harden(handler: grpc.RpcMethodHandler[Any, Any], method: str) -> Any:
    """`handler` (any kind) with the answers of `_behavior`."""
    h: Any = handler
    parse = _parser(h.request_deserializer, method)
    ins, outs = h.request_streaming, h.response_streaming
    if ins and not outs:  # none in health or reflection
        raise ValueError(f"{method}: stream-unary methods are not hardened")
    behavior = h.unary_unary or h.unary_stream or h.stream_stream
    wrapped = _behavior(behavior, method, ins, outs)
    make = {
        (False, False): grpc.unary_unary_rpc_method_handler,
        (False, True): grpc.unary_stream_rpc_method_handler,
        (True, True): grpc.stream_stream_rpc_method_handler,
    }[(ins, outs)]
    return make(wrapped, request_deserializer=parse, response_serializer=h.response_serializer)


class _Recorder:
    """Stands in for the server while a generated add_*_to_server runs."""

    def __init__(self) -> None:
        self.services: list[tuple[str, dict[str, Any]]] = []

    def add_generic_rpc_handlers(self, _handlers: object) -> None:
        pass  # the same handlers come to add_registered_method_handlers

    def add_registered_method_handlers(self, service: str, handlers: dict[str, Any]) -> None:
        self.services.append((service, handlers))


def _add_hardened(server: grpc.aio.Server, add: Callable[[Any, Any], None], servicer: Any) -> None:
    """Add `servicer` as the generated `add` would, every method hardened (`_behavior`)."""
    recorder = _Recorder()
    add(servicer, recorder)
    for service, handlers in recorder.services:
        hardened = {name: _harden(h, f"{service}/{name}") for name, h in handlers.items()}
        server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(service, hardened),))
        server.add_registered_method_handlers(service, hardened)  # type: ignore[attr-defined]


async def until_signalled(stop: Callable[[], Awaitable[None]]) -> None:
    """Wait for SIGTERM or SIGINT, then run `stop` (a graceful shutdown)."""
    done = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, done.set)
    await done.wait()
    await stop()
