"""A grpc.aio server with the standard health service and server reflection on.

Every gRPC server of ours starts through `serve()`, so `grpcurl` and Kubernetes
probes work against all of them the same way, and each listens with TLS (mutual when
its settings say so) or, when none is configured, in plaintext with a WARNING.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, NoReturn

import grpc
from grpc_health.v1 import _async as health_aio
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from quartermaster.tls import ServerTls
from quartermaster.validation import InvalidRequest, Problems

log = logging.getLogger("qm.grpc")

# The longest status message we send, in UTF-8 bytes. It travels in the grpc-message
# trailer, percent-encoded (up to 3 bytes per byte), and a client refuses trailers over
# its metadata limit (8 KB by default) with RESOURCE_EXHAUSTED: the caller would hear
# "resource exhausted" instead of what was wrong with its request.
MAX_DETAILS_BYTES = 1024


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
    server: grpc.aio.Server
    port: int
    health: health_aio.HealthServicer
    services: tuple[str, ...]

    async def set_serving(self, serving: bool) -> None:
        status = (
            health_pb2.HealthCheckResponse.SERVING
            if serving
            else health_pb2.HealthCheckResponse.NOT_SERVING
        )
        for name in ("", *self.services):
            await self.health.set(name, status)

    async def stop(self, grace: float) -> None:
        """Say NOT_SERVING, stop taking calls, let in-flight ones finish within `grace`."""
        await self.health.enter_graceful_shutdown()
        await self.server.stop(grace)


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
    addr: str, services: Sequence[str], server: grpc.aio.Server, *, tls: ServerTls | None
) -> Served:
    """Add health + reflection to `server` (servicers already added), listen on `addr`
    (port 0: a free one) with `tls` (None: plaintext, logged as a WARNING), start it,
    and report NOT_SERVING until told otherwise. RuntimeError when it can't listen."""
    hs = health_aio.HealthServicer()
    served = Served(server, 0, hs, tuple(services))
    await served.set_serving(False)
    health_pb2_grpc.add_HealthServicer_to_server(hs, server)
    reflection.enable_server_reflection(
        (*services, health.SERVICE_NAME, reflection.SERVICE_NAME), server
    )
    port = _listen(server, addr, tls)
    if port == 0:
        raise RuntimeError(f"could not listen on {addr}")
    await server.start()
    served.port = port
    return served


async def until_signalled(stop: Callable[[], Awaitable[None]]) -> None:
    """Wait for SIGTERM or SIGINT, then run `stop` (a graceful shutdown)."""
    done = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, done.set)
    await done.wait()
    await stop()
