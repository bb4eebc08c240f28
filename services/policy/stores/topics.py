"""The totals topic incarnation policy serves from (`policy.topic_marks`) and the
operator's acceptances of a new one (`policy.topic_accepts`, kept for ever); see
services.policy.topic_mark."""

from __future__ import annotations

import asyncpg

from services.policy.topic_mark import TopicMark


class TopicMarkStore:
    """One workspace's mark of one topic. asyncpg errors when Postgres is away."""

    def __init__(self, pool: asyncpg.Pool, workspace_id: str, topic: str) -> None:
        self._pool = pool
        self.workspace_id = workspace_id
        self.topic = topic

    async def load(self) -> TopicMark | None:
        """The recorded mark; None when none is."""
        row = await self._pool.fetchrow(
            "SELECT topic_id, partitions FROM policy.topic_marks"
            " WHERE workspace_id = $1 AND topic = $2",
            self.workspace_id,
            self.topic,
        )
        return None if row is None else TopicMark(row["topic_id"], row["partitions"])

    async def record_first(self, mark: TopicMark) -> TopicMark:
        """Record `mark` when none is recorded (a replica that found none); the mark
        recorded now (another replica's, when it was first)."""
        await self._pool.execute(
            "INSERT INTO policy.topic_marks (workspace_id, topic, topic_id, partitions,"
            " recorded_by, reason) VALUES ($1, $2, $3, $4, 'policy', 'first start')"
            " ON CONFLICT (workspace_id, topic) DO NOTHING",
            self.workspace_id, self.topic, mark.topic_id, mark.partitions,
        )  # fmt: skip
        recorded = await self.load()
        assert recorded is not None
        return recorded

    async def accept(self, mark: TopicMark, by: str, reason: str) -> TopicMark | None:
        """Make `mark` the recorded one, with an audit row saying who, why and what
        was recorded before (returned; None when nothing was). ValueError for a blank
        `by` or `reason`."""
        if not by.strip() or not reason.strip():
            raise ValueError("--by and --reason must not be blank: the audit row names both")
        async with self._pool.acquire() as conn, conn.transaction():
            row = await conn.fetchrow(
                "SELECT topic_id, partitions FROM policy.topic_marks"
                " WHERE workspace_id = $1 AND topic = $2 FOR UPDATE",
                self.workspace_id, self.topic,
            )  # fmt: skip
            old = None if row is None else TopicMark(row["topic_id"], row["partitions"])
            await conn.execute(
                "INSERT INTO policy.topic_marks (workspace_id, topic, topic_id, partitions,"
                " recorded_by, reason) VALUES ($1, $2, $3, $4, $5, $6)"
                " ON CONFLICT (workspace_id, topic) DO UPDATE SET topic_id = EXCLUDED.topic_id,"
                " partitions = EXCLUDED.partitions, recorded_at = now(),"
                " recorded_by = EXCLUDED.recorded_by, reason = EXCLUDED.reason",
                self.workspace_id, self.topic, mark.topic_id, mark.partitions, by, reason,
            )  # fmt: skip
            await conn.execute(
                "INSERT INTO policy.topic_accepts (workspace_id, topic, accepted_by, reason,"
                " old_topic_id, old_partitions, new_topic_id, new_partitions)"
                " VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
                self.workspace_id, self.topic, by, reason,
                old.topic_id if old else None, old.partitions if old else None,
                mark.topic_id, mark.partitions,
            )  # fmt: skip
        return old
