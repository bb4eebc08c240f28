"""Which DLQ records were replayed (`metering.dlq_replays`), and recording a replay.

`replay` records the records and sends them in one transaction: the rows are
inserted, the records sent (the broker has them when `send` returns), then COMMIT.
Should the send fail, nothing is recorded and the records can be replayed again.
Should the process die after the send and before the COMMIT, they are not recorded
either: replaying them again sends them again, and metering skips their events by
event_id within its dedupe window (24 h by default), so they still count once.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence

import asyncpg

from services.metering.dead_letter import DeadLetterView


class ReplayStore:
    """The replay log of the usage DLQ."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool

    async def replayed(self, views: Sequence[DeadLetterView]) -> set[str]:
        """Which of `views` (by `where`) were replayed before."""
        if not views:
            return set()
        async with self.pool.acquire() as conn:
            rows = await conn.fetch(
                """
                SELECT r.dlq_partition, r.dlq_offset FROM metering.dlq_replays r
                JOIN unnest($1::int[], $2::bigint[], $3::timestamptz[]) AS v(p, o, at)
                  ON r.dlq_partition = v.p AND r.dlq_offset = v.o AND r.dlq_at = v.at
                """,
                [v.partition for v in views], [v.offset for v in views],
                [v.at for v in views],
            )  # fmt: skip
        return {f"{r['dlq_partition']}@{r['dlq_offset']}" for r in rows}

    async def replay(
        self,
        views: Sequence[DeadLetterView],
        by: str,
        reason: str,
        send: Callable[[], Awaitable[None]],
    ) -> None:
        """Record `views` as replayed by `by` for `reason` and await `send` (which sends
        them) inside the same transaction (see the module docstring). asyncpg's errors
        and `send`'s propagate; nothing is recorded then."""
        async with self.pool.acquire() as conn, conn.transaction():
            await conn.executemany(
                """
                INSERT INTO metering.dlq_replays
                    (dlq_partition, dlq_offset, dlq_at, replayed_by, reason)
                VALUES ($1, $2, $3, $4, $5)
                ON CONFLICT (dlq_partition, dlq_offset, dlq_at) DO UPDATE
                    SET replayed_at = now(), replayed_by = EXCLUDED.replayed_by,
                        reason = EXCLUDED.reason
                """,
                [(v.partition, v.offset, v.at, by, reason) for v in views],
            )
            await send()
