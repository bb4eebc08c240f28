"""What every gRPC client of ours shares: how a channel is opened (TLS or plaintext),
and `ChannelClient`, one channel opened at construction and closed by `close()` or by
leaving `async with`.

Every channel of ours, grpc.aio or blocking, is opened by `open_channel` or
`open_blocking_channel`, so TLS is chosen in one place: with a `ClientTls` the channel
verifies the server's certificate against its CA (and shows a client certificate when
it has one); with None it is plaintext. A server whose certificate the client does not
trust, or one that wants a client certificate it lacks, fails every call with
UNAVAILABLE, as an unreachable server does.
The caller's bearer credential is sent per call (`bearer`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Self

import grpc

from quartermaster import telemetry
from quartermaster.tls import ClientTls

Options = Sequence[tuple[str, Any]]


def channel_credentials(tls: ClientTls) -> grpc.ChannelCredentials:
    """gRPC channel credentials from `tls` (its CA, or gRPC's default roots when it has
    none; its client certificate and key, when it has them)."""
    return grpc.ssl_channel_credentials(
        root_certificates=tls.root_ca,
        private_key=tls.private_key,
        certificate_chain=tls.cert_chain,
    )


def _options(tls: ClientTls | None, options: Options) -> list[tuple[str, Any]]:
    if tls is not None and tls.server_name:
        return [*options, ("grpc.ssl_target_name_override", tls.server_name)]
    return list(options)


def open_channel(target: str, tls: ClientTls | None, options: Options = ()) -> grpc.aio.Channel:
    """A grpc.aio channel to `target` (host:port): TLS with `tls`, plaintext with None;
    with tracing on, every call on it has a client span and sends its trace context."""
    traced = telemetry.client_interceptors() or None
    if tls is None:
        return grpc.aio.insecure_channel(
            target, options=_options(tls, options), interceptors=traced
        )
    return grpc.aio.secure_channel(
        target, channel_credentials(tls), _options(tls, options), interceptors=traced
    )


def open_blocking_channel(
    target: str, tls: ClientTls | None, options: Options = ()
) -> grpc.Channel:
    """A blocking channel (for CLIs) to `target`, as `open_channel` opens one."""
    if tls is None:
        return grpc.insecure_channel(target, options=_options(tls, options))
    return grpc.secure_channel(target, channel_credentials(tls), _options(tls, options))


def bearer(token: str) -> tuple[tuple[str, str], ...]:
    """The call metadata that presents `token` (quartermaster.auth); () for no token."""
    return (("authorization", f"Bearer {token}"),) if token else ()


class ChannelClient:
    """Owns one `grpc.aio` channel to `target` (host:port), TLS with `tls` (None:
    plaintext). Subclasses build their stubs on `self._channel` and send
    `self._metadata` with every call: the bearer `token` (a credential of the server's
    QM_TOKENS; empty: none, and the server refuses). Per call rather than by a channel
    interceptor: grpc.aio's client interceptors cost every call a chain of coroutines.
    Closing twice is harmless (grpc ignores the second close)."""

    def __init__(
        self, target: str, options: Options = (), *, tls: ClientTls | None, token: str = ""
    ) -> None:
        self.target = target
        self._metadata = bearer(token)
        self._channel = open_channel(target, tls, options)

    async def close(self) -> None:
        await self._channel.close(None)

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.close()
