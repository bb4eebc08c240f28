"""Threshold notices in Postgres: which crossings (subject, period, percent) have
been announced, so that one crossing is announced once across every replica."""

from __future__ import annotations

import asyncpg


class NoticeStore:
    """One workspace's claimed crossings (asyncpg errors when Postgres is away)."""

    def __init__(self, pool: asyncpg.Pool, workspace_id: str) -> None:
        self._pool = pool
        self.workspace_id = workspace_id

    async def claim(self, subject: str, period_key: str, percent: int) -> bool:
        """True for exactly one caller (across replicas) per subject, period and percent."""
        got = await self._pool.fetchval(
            "INSERT INTO policy.threshold_notices (workspace_id, subject, period_key, percent)"
            " VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING RETURNING 1",
            self.workspace_id,
            subject,
            period_key,
            percent,
        )
        return got is not None

    async def unclaim(self, subject: str, period_key: str, percents: list[int]) -> None:
        """Give claimed crossings back (their announcement failed): the next total
        that shows them tries again."""
        await self._pool.execute(
            "DELETE FROM policy.threshold_notices WHERE workspace_id = $1 AND subject = $2"
            " AND period_key = $3 AND percent = ANY($4)",
            self.workspace_id,
            subject,
            period_key,
            percents,
        )
