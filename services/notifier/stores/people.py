"""Per-person channel preferences (notifier.preferences) and where each approver's
Slack copy of a request went (notifier.slack_messages)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

import asyncpg

from services.notifier.plan import Preference


class PreferenceStore:
    """Preferences of one workspace's people; a person without a row has none."""

    def __init__(self, pool: asyncpg.Pool, workspace_id: str) -> None:
        self._pool = pool
        self.workspace_id = workspace_id

    async def of(self, user_ids: Sequence[str]) -> dict[str, Preference]:
        """user id → their preference, for those who have one."""
        rows = await self._pool.fetch(
            "SELECT user_id, channels, digest FROM notifier.preferences"
            " WHERE workspace_id = $1 AND user_id = ANY($2::text[])",
            self.workspace_id, list(user_ids),
        )  # fmt: skip
        return {r["user_id"]: Preference(tuple(r["channels"]), r["digest"]) for r in rows}

    async def listed(self, user_ids: Sequence[str] = ()) -> dict[str, Preference]:
        """user id → preference, of `user_ids` (every person who has one when empty),
        by user id."""
        rows = await self._pool.fetch(
            "SELECT user_id, channels, digest FROM notifier.preferences WHERE workspace_id = $1"
            " AND (cardinality($2::text[]) = 0 OR user_id = ANY($2)) ORDER BY user_id",
            self.workspace_id, list(user_ids),
        )  # fmt: skip
        return {r["user_id"]: Preference(tuple(r["channels"]), r["digest"]) for r in rows}

    async def clear(self, user_id: str) -> bool:
        """Back to the workspace default; False when `user_id` had no preference."""
        done = await self._pool.fetchval(
            "DELETE FROM notifier.preferences WHERE workspace_id = $1 AND user_id = $2"
            " RETURNING true",
            self.workspace_id, user_id,
        )  # fmt: skip
        return bool(done)

    async def record_default(self, default: Preference, set_by: str) -> None:
        """The workspace default a notifier starting now applies (replicas started with
        different QM_NOTIFIER_DEFAULT_CHANNELS: the last one to start is recorded)."""
        await self._pool.execute(
            """
            INSERT INTO notifier.defaults (workspace_id, channels, set_by) VALUES ($1, $2, $3)
            ON CONFLICT (workspace_id) DO UPDATE
            SET channels = excluded.channels, set_by = excluded.set_by, updated_at = now()
            """,
            self.workspace_id, list(default.channels), set_by,
        )  # fmt: skip

    async def default_in_force(self) -> tuple[Preference, str, datetime] | None:
        """(default, the notifier that recorded it, when, UTC) of the running notifier;
        None when none has started in this workspace."""
        row = await self._pool.fetchrow(
            "SELECT channels, set_by, updated_at FROM notifier.defaults WHERE workspace_id = $1",
            self.workspace_id,
        )  # fmt: skip
        if row is None:
            return None
        return Preference(tuple(row["channels"])), row["set_by"], row["updated_at"]

    async def set(self, user_id: str, preference: Preference) -> None:
        """Replace `user_id`'s preference."""
        await self._pool.execute(
            """
            INSERT INTO notifier.preferences (workspace_id, user_id, channels, digest)
            VALUES ($1, $2, $3, $4)
            ON CONFLICT (workspace_id, user_id) DO UPDATE
            SET channels = excluded.channels, digest = excluded.digest, updated_at = now()
            """,
            self.workspace_id, user_id, list(preference.channels), preference.digest,
        )  # fmt: skip


@dataclass(frozen=True)
class SlackCopy:
    """One approver's Slack message of a request: `channel` and `ts` name it."""

    user_id: str
    channel: str
    ts: str


class SlackCopies:
    """Where the Slack copies of each request went, for chat.update after a decision."""

    def __init__(self, pool: asyncpg.Pool, workspace_id: str) -> None:
        self._pool = pool
        self.workspace_id = workspace_id

    async def save(self, request_id: str, copy: SlackCopy) -> None:
        """Remember a copy (a reminder adds one; saving one twice is harmless)."""
        await self._pool.execute(
            """
            INSERT INTO notifier.slack_messages (workspace_id, request_id, user_id, channel, ts)
            VALUES ($1, $2, $3, $4, $5)
            ON CONFLICT DO NOTHING
            """,
            self.workspace_id, request_id, copy.user_id, copy.channel, copy.ts,
        )  # fmt: skip

    async def of(self, request_id: str) -> list[SlackCopy]:
        """Every copy of the request's message, by user id."""
        rows = await self._pool.fetch(
            "SELECT user_id, channel, ts FROM notifier.slack_messages"
            " WHERE workspace_id = $1 AND request_id = $2 ORDER BY user_id, ts",
            self.workspace_id, request_id,
        )  # fmt: skip
        return [SlackCopy(r["user_id"], r["channel"], r["ts"]) for r in rows]
