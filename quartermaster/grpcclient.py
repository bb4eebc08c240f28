"""What every gRPC client of ours shares: one channel, opened at construction and
closed by `close()` or by leaving `async with`.

The place where channel-wide choices live, so that each client makes them the same
way (today the channel options; TLS credentials will join them here).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Self

import grpc


class ChannelClient:
    """Owns one `grpc.aio` channel to `target` (host:port). Subclasses build their stubs
    on `self._channel`. Closing twice is harmless (grpc ignores the second close)."""

    def __init__(self, target: str, options: Sequence[tuple[str, Any]] = ()) -> None:
        self.target = target
        self._channel = grpc.aio.insecure_channel(target, options=list(options))

    async def close(self) -> None:
        await self._channel.close(None)

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.close()
