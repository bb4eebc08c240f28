"""The outbox as the relay sees it: unsent events in the order they were written,
marking them sent once the broker has them, and setting aside one the broker refuses
for good (it is then never sent, and says why)."""

from __future__ import annotations

from dataclasses import dataclass

import asyncpg


@dataclass(frozen=True)
class OutboxRecord:
    """One event to publish: `key` and `payload` are the Kafka record's bytes."""

    id: int
    event_id: str
    topic: str
    key: bytes
    payload: bytes


class OutboxStore:
    """requests.outbox over an asyncpg pool (every workspace's events: one relay)."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool

    async def unsent(self, limit: int) -> list[OutboxRecord]:
        """Up to `limit` unsent events, oldest first (so one request's events keep their
        order on its partition)."""
        rows = await self._pool.fetch(
            "SELECT id, event_id, topic, key, payload FROM requests.outbox"
            " WHERE sent_at IS NULL AND set_aside_at IS NULL ORDER BY id LIMIT $1",
            limit,
        )
        return [OutboxRecord(r["id"], r["event_id"], r["topic"], r["key"], r["payload"])
                for r in rows]  # fmt: skip

    async def mark_sent(self, ids: list[int]) -> None:
        """Mark these events published. Lost (a crash before it) means they are
        published again: consumers dedupe on the event (policy: on the request id)."""
        await self._pool.execute(
            "UPDATE requests.outbox SET sent_at = now() WHERE id = ANY($1::bigint[])", ids
        )

    async def set_aside(self, row_id: int, reason: str) -> None:
        """Never publish this event (the broker refuses it for good): it stays, with
        `reason` and the time, for an operator; the relay goes on with the next."""
        await self._pool.execute(
            "UPDATE requests.outbox SET set_aside_at = now(), set_aside_reason = $2"
            " WHERE id = $1",
            row_id, reason,
        )  # fmt: skip

    async def set_aside_rows(self) -> list[tuple[str, str]]:
        """(event id, reason) of every event set aside, oldest first."""
        rows = await self._pool.fetch(
            "SELECT event_id, set_aside_reason FROM requests.outbox"
            " WHERE set_aside_at IS NOT NULL ORDER BY id"
        )
        return [(r["event_id"], r["set_aside_reason"]) for r in rows]

    async def backlog(self) -> int:
        """How many events wait to be published (those set aside wait for nothing)."""
        return int(await self._pool.fetchval(
            "SELECT count(*) FROM requests.outbox WHERE sent_at IS NULL"
            " AND set_aside_at IS NULL"))  # fmt: skip
