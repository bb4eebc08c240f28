"""Which topic incarnation metering's stored offsets belong to (`metering.topic_marks`),
and an operator's acceptance of a new one (`metering.topic_accepts`, kept for ever).

`accept` moves the stored offsets in the same transaction as the marks and the audit
row, holding the offset rows locked: a worker committing meanwhile waits, then finds
its fence moved (the offset it started from is gone) and plans again from the new
offsets. See `topic_check` for what the marks decide.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime

import asyncpg

from services.metering.state import Total, TotalKey
from services.metering.stores.counting import total_of
from services.metering.topic_check import Observed, Stored, TopicMark


class TopicStore:
    """One consumer's (`consumer`, QM_METERING_APP_ID) marks and offsets of the usage
    topic `usage` and the totals topic `totals`."""

    def __init__(self, pool: asyncpg.Pool, consumer: str, usage: str, totals: str) -> None:
        self.pool = pool
        self.consumer = consumer
        self.usage = usage
        self.totals = totals

    async def load(self) -> Stored:
        """The stored marks (None where none is recorded) and next offset per partition."""
        async with self.pool.acquire() as conn:
            marks = {
                r["topic"]: TopicMark(r["topic_id"], r["partitions"])
                for r in await conn.fetch(
                    "SELECT topic, topic_id, partitions FROM metering.topic_marks"
                    " WHERE consumer = $1",
                    self.consumer,
                )
            }
            offsets = await _offsets(conn, self.consumer, self.usage)
        return Stored(marks.get(self.usage), marks.get(self.totals), offsets)

    async def record_first(self, marks: dict[str, TopicMark], by: str, reason: str) -> None:
        """Record the marks of topics that have none yet (an existing mark is kept:
        only `accept` replaces one)."""
        await self.pool.executemany(
            """
            INSERT INTO metering.topic_marks
                (consumer, topic, topic_id, partitions, recorded_by, reason)
            VALUES ($1, $2, $3, $4, $5, $6)
            ON CONFLICT (consumer, topic) DO NOTHING
            """,
            [(self.consumer, t, m.topic_id, m.partitions, by, reason) for t, m in marks.items()],
        )

    async def accept(
        self,
        observed: Observed,
        problems: list[str],
        by: str,
        reason: str,
        publish: Callable[[dict[TotalKey, Total]], Awaitable[None]],
    ) -> dict[int, int]:
        """Accept the topics as the broker holds them: every partition's stored offset
        becomes its log start (so each record there now is counted), both marks
        become the observed ones, and an audit row says who, why and what was stored
        before. Then, still in the transaction, `publish` gets every total of a period
        not yet ended: a worker committing meanwhile waits on the locked offset rows,
        so its newer totals are published after these, never before. Returns the new
        offsets. ValueError when the usage or totals topic does not exist (nothing to
        accept); `publish`'s errors roll everything back."""
        if observed.usage is None or observed.totals is None:
            raise ValueError("the usage and totals topics must exist first: create the topics")
        new = {p: r.start for p, r in sorted(observed.logs.items())}
        async with self.pool.acquire() as conn, conn.transaction():
            old_marks = {
                r["topic"]: r
                for r in await conn.fetch(
                    "SELECT topic, topic_id, partitions FROM metering.topic_marks"
                    " WHERE consumer = $1 FOR UPDATE",
                    self.consumer,
                )
            }
            old = await _offsets(conn, self.consumer, self.usage, lock=True)
            await conn.execute(
                "DELETE FROM metering.offsets WHERE consumer = $1 AND topic = $2",
                self.consumer, self.usage,
            )  # fmt: skip
            await conn.executemany(
                "INSERT INTO metering.offsets (consumer, topic, partition, next_offset)"
                " VALUES ($1, $2, $3, $4)",
                [(self.consumer, self.usage, p, o) for p, o in new.items()],
            )
            for topic, mark in ((self.usage, observed.usage), (self.totals, observed.totals)):
                await conn.execute(
                    """
                    INSERT INTO metering.topic_marks
                        (consumer, topic, topic_id, partitions, recorded_by, reason)
                    VALUES ($1, $2, $3, $4, $5, $6)
                    ON CONFLICT (consumer, topic) DO UPDATE SET topic_id = EXCLUDED.topic_id,
                        partitions = EXCLUDED.partitions, recorded_at = now(),
                        recorded_by = EXCLUDED.recorded_by, reason = EXCLUDED.reason
                    """,
                    self.consumer, topic, mark.topic_id, mark.partitions, by, reason,
                )  # fmt: skip
            before = old_marks.get(self.usage)
            await conn.execute(
                """
                INSERT INTO metering.topic_accepts (consumer, topic, accepted_by, reason,
                    problems, old_topic_id, old_partitions, old_offsets, new_topic_id,
                    new_partitions, new_offsets)
                VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)
                """,
                self.consumer, self.usage, by, reason, problems,
                before["topic_id"] if before else None, before["partitions"] if before else None,
                json.dumps(old), observed.usage.topic_id, observed.usage.partitions,
                json.dumps(new),
            )  # fmt: skip
            await publish(await _open_totals(conn, datetime.now(UTC)))
        return new


async def _open_totals(conn: asyncpg.Connection, now: datetime) -> dict[TotalKey, Total]:
    """Every user's total of a period that has not ended at `now` (what policy needs to
    know again after the totals topic lost its records)."""
    rows = await conn.fetch(
        "SELECT * FROM metering.totals WHERE subject_kind = 'user' AND period_end > $1", now
    )
    # total_of reads the exact amount (micros and the picos remainder): the micros
    # column alone, taken as picos, republished every total as 0
    return {(r["subject_id"], r["period_kind"], r["period_key"]): total_of(r) for r in rows}


async def _offsets(
    conn: asyncpg.Connection, consumer: str, topic: str, lock: bool = False
) -> dict[int, int]:
    rows = await conn.fetch(
        "SELECT partition, next_offset FROM metering.offsets WHERE consumer = $1 AND topic = $2"
        + (" FOR UPDATE" if lock else ""),
        consumer,
        topic,
    )
    return {r["partition"]: r["next_offset"] for r in rows}
