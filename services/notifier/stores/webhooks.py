"""Which webhook endpoints are disabled (notifier.webhooks_disabled): an endpoint that
answered 410 Gone is posted nothing more until a person enables it again."""

from __future__ import annotations

import time

import asyncpg

WEBHOOK = "webhook"
# How long the set of disabled endpoints is kept between reads: planning reads it per
# batch, and an endpoint enabled again is posted to again within this long.
DISABLED_TTL_S = 5.0


class WebhookGate:
    """Disabled endpoints of one workspace, by name. A Sender asks `closed` before a
    webhook delivery and calls `close` on a 410; planning leaves out `disabled()`."""

    def __init__(self, pool: asyncpg.Pool, workspace_id: str) -> None:
        self._pool = pool
        self.workspace_id = workspace_id
        self._cache: tuple[float, dict[str, str]] | None = None

    async def disabled(self, fresh: bool = False) -> dict[str, str]:
        """name → why it was disabled (cached DISABLED_TTL_S unless `fresh`). Raises
        asyncpg/OS errors (the caller tries again)."""
        now = time.monotonic()
        if fresh or self._cache is None or now - self._cache[0] > DISABLED_TTL_S:
            rows = await self._pool.fetch(
                "SELECT name, reason FROM notifier.webhooks_disabled WHERE workspace_id = $1",
                self.workspace_id,
            )  # fmt: skip
            self._cache = (now, {r["name"]: r["reason"] for r in rows})
        return self._cache[1]

    async def closed(self, channel: str, recipient: str) -> str | None:
        """Why a delivery on `channel` to `recipient` must not be sent (its webhook
        endpoint is disabled), or None. Read fresh: a 410 seen by another replica a
        moment ago stops this one too."""
        if channel != WEBHOOK:
            return None
        reason = (await self.disabled(fresh=True)).get(recipient)
        return None if reason is None else f"endpoint {recipient} is disabled: {reason}"

    async def close(self, channel: str, recipient: str, reason: str) -> None:
        """Disable `recipient`'s endpoint (a webhook that answered 410); the first
        reason is kept."""
        if channel != WEBHOOK:
            return
        await self._pool.execute(
            "INSERT INTO notifier.webhooks_disabled (workspace_id, name, reason)"
            " VALUES ($1, $2, $3) ON CONFLICT DO NOTHING",
            self.workspace_id, recipient, reason,
        )  # fmt: skip
        self._cache = None

    async def enable(self, name: str) -> bool:
        """Post to `name` again; False when it was not disabled."""
        done = await self._pool.fetchval(
            "DELETE FROM notifier.webhooks_disabled WHERE workspace_id = $1 AND name = $2"
            " RETURNING true",
            self.workspace_id, name,
        )  # fmt: skip
        self._cache = None
        return bool(done)
