"""What every gRPC client of ours shares: one channel, opened at construction and
closed by `close()` or by leaving `async with`.

The place where channel-wide choices live, so that each client makes them the same
way (the channel options and the caller's credential; TLS will join them here).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Self

import grpc


def bearer(token: str) -> tuple[tuple[str, str], ...]:
    """The call metadata that presents `token` (quartermaster.auth); () for no token."""
    return (("authorization", f"Bearer {token}"),) if token else ()


class ChannelClient:
    """Owns one `grpc.aio` channel to `target` (host:port). Subclasses build their stubs
    on `self._channel` and send `self._metadata` with every call: the bearer `token`
    (a credential of the server's QM_TOKENS; empty: none, and the server refuses).
    Per call rather than by a channel interceptor: grpc.aio's client interceptors
    cost every call a chain of coroutines. Closing twice is harmless (grpc ignores
    the second close)."""

    def __init__(
        self, target: str, options: Sequence[tuple[str, Any]] = (), token: str = ""
    ) -> None:
        self.target = target
        self._metadata = bearer(token)
        self._channel = grpc.aio.insecure_channel(target, options=list(options))

    async def close(self) -> None:
        await self._channel.close(None)

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.close()
