"""The delivery records (notifier.deliveries): the notifier's promise to deliver each
(dedupe key, recipient, channel) exactly once, kept in Postgres so that replicas and
redelivered intents share it.

Life of a row: inserted 'pending' if absent (`record`: a redelivered or duplicated
intent finds its row and adds nothing); claimed by one sender (`claim`: an atomic
UPDATE over rows locked FOR UPDATE SKIP LOCKED, so two replicas never hold one row);
then 'delivered', 'retrying' at a later `due`, or 'failed' with a reason. Writing an
outcome is fenced on the claim (`claimed_by` and state 'sending'): a sender whose
claim ran out and was handed on writes nothing.

The window between "the receiver accepted" and "marked delivered": a sender SIGKILLed
there leaves the row 'sending'. When its claim runs out, `reconcile` hands it back as
'retrying' with `unsure` set, and the next sender first asks the channel whether the
receiver has it already (Slack: the message carries the delivery id in its metadata,
looked up in the conversation's history) and records it delivered without sending
again. A channel that can't be asked (e-mail, webhooks) sends again with the same
delivery id (its Message-ID / webhook-id), for the receiver to drop: the one place
where at-least-once shows, and it is said so there.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Collection, Sequence
from dataclasses import dataclass
from datetime import datetime

import asyncpg

from services.notifier.channel import Message
from services.notifier.mapping import message_json, message_of
from services.notifier.plan import Plan
from services.notifier.schedule import Queued

_COLUMNS = """id, recipient, channel, address, display_name, message, attempts, unsure,
    intent_at, state, reason, ref, dedupe_key, created_at, delivered_at"""
_QUALIFIED = ", ".join("d." + c.strip() for c in _COLUMNS.split(","))
# The due rows a claim takes ($1 workspace, $2 limit), oldest first.
_PICK = """picked AS (
    SELECT id FROM notifier.deliveries
    WHERE workspace_id = $1 AND state IN ('pending', 'retrying') AND due <= now()
    ORDER BY due LIMIT $2 FOR UPDATE SKIP LOCKED)"""
# The same, with the channels of $5 one row at a time per address (see `claim`).
_PICK_SERIAL = """firsts AS (
    SELECT id, due, channel = ANY($5::text[]) AS serial,
        row_number() OVER (PARTITION BY channel, address ORDER BY due, id) AS nth
    FROM notifier.deliveries q
    WHERE workspace_id = $1 AND state IN ('pending', 'retrying') AND due <= now()
    AND NOT (channel = ANY($5::text[]) AND EXISTS (
        SELECT 1 FROM notifier.deliveries s
        WHERE s.workspace_id = $1 AND s.state = 'sending'
        AND s.channel = q.channel AND s.address = q.address))),
picked AS (
    SELECT p.id FROM notifier.deliveries p JOIN firsts f ON f.id = p.id
    WHERE (f.nth = 1 OR NOT f.serial) AND p.state IN ('pending', 'retrying')
    ORDER BY f.due LIMIT $2 FOR UPDATE OF p SKIP LOCKED)"""


@dataclass(frozen=True)
class Delivery:
    """One delivery row; `attempts` counts claims (this one included when claimed)."""

    id: int
    dedupe_key: str
    recipient: str
    channel: str
    address: str
    display_name: str
    message: Message
    attempts: int
    unsure: bool
    state: str
    reason: str
    ref: str
    intent_at: datetime
    created_at: datetime
    delivered_at: datetime | None


def _delivery(r: asyncpg.Record) -> Delivery:
    raw = r["message"]
    return Delivery(
        id=r["id"], dedupe_key=r["dedupe_key"], recipient=r["recipient"],
        channel=r["channel"], address=r["address"], display_name=r["display_name"],
        message=message_of(json.loads(raw) if isinstance(raw, str) else raw),
        attempts=r["attempts"], unsure=r["unsure"], state=r["state"], reason=r["reason"],
        ref=r["ref"], intent_at=r["intent_at"], created_at=r["created_at"],
        delivered_at=r["delivered_at"],
    )  # fmt: skip


class DeliveryStore:
    """Delivery rows of one workspace; `sender` names this process in claims."""

    def __init__(self, pool: asyncpg.Pool, workspace_id: str, sender: str) -> None:
        self._pool = pool
        self.workspace_id = workspace_id
        self.sender = sender

    async def record(self, plan: Plan) -> int:
        """Insert the plan's deliveries and digest entries that are not there yet, in
        one transaction; the number of deliveries new. Raises asyncpg/OS errors (then
        nothing was written and the caller must not commit the intent's offset)."""
        async with self._pool.acquire() as conn, conn.transaction():
            return await self._insert(conn, plan)

    async def _insert(self, conn: asyncpg.Connection, plan: Plan) -> int:
        rows = [(self.workspace_id, p.dedupe_key, p.recipient, p.channel, p.message.kind,
                 p.address, p.display_name, message_json(p.message), p.intent_at)
                for p in plan.deliveries]  # fmt: skip
        queued = [(self.workspace_id, q.user_id, q.dedupe_key, q.kind, q.subject, q.line)
                  for q in plan.digest]  # fmt: skip
        new = 0
        if rows:
            new = await conn.fetchval(
                """
                WITH ins AS (
                    INSERT INTO notifier.deliveries (workspace_id, dedupe_key, recipient,
                        channel, kind, address, display_name, message, intent_at)
                    SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[],
                        $5::text[], $6::text[], $7::text[], $8::jsonb[], $9::timestamptz[])
                    ON CONFLICT (workspace_id, dedupe_key, recipient, channel) DO NOTHING
                    RETURNING 1)
                SELECT count(*) FROM ins
                """,
                *[list(col) for col in zip(*rows, strict=True)],
            )
        if queued:
            await conn.executemany(
                """
                INSERT INTO notifier.digest_queue
                    (workspace_id, user_id, dedupe_key, kind, subject, line)
                VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT DO NOTHING
                """,
                queued,
            )
        return int(new or 0)

    async def take_digests(
        self, before: datetime, build: Callable[[list[Queued]], Awaitable[Plan]]
    ) -> int:
        """The facts queued before `before` and not yet in a digest, made into the
        deliveries `build` plans, in one transaction (rows another replica is taking
        are skipped, so each fact goes into one digest); how many facts were taken."""
        async with self._pool.acquire() as conn, conn.transaction():
            rows = await conn.fetch(
                """
                SELECT user_id, dedupe_key, kind, subject, line FROM notifier.digest_queue
                WHERE workspace_id = $1 AND digest_key IS NULL AND queued_at < $2
                FOR UPDATE SKIP LOCKED
                """,
                self.workspace_id, before,
            )  # fmt: skip
            if not rows:
                return 0
            waiting = [Queued(r["user_id"], r["dedupe_key"], r["kind"], r["subject"], r["line"])
                       for r in rows]  # fmt: skip
            plan = await build(waiting)
            await self._insert(conn, plan)
            keys = {p.recipient: p.dedupe_key for p in plan.deliveries}
            await conn.executemany(
                "UPDATE notifier.digest_queue SET digest_key = $4"
                " WHERE workspace_id = $1 AND user_id = $2 AND dedupe_key = $3",
                [(self.workspace_id, q.user_id, q.dedupe_key, keys.get(q.user_id, "none"))
                 for q in waiting],
            )  # fmt: skip
            return len(waiting)

    async def claim(
        self, limit: int, lease_seconds: float, serial: Collection[str] = ()
    ) -> list[Delivery]:
        """Up to `limit` due rows, now this sender's for `lease_seconds`, oldest due
        first. For the channels in `serial` (those that send one message at a time to
        an address: Slack, paced per conversation), at most one row per address and
        none of an address with a row being sent: a burst of 300 messages to one
        person no longer fills every slot with sends that wait on that person's pace
        while everyone else's wait on them (each address's oldest due row takes its
        turn). Rows another sender is claiming at this instant are skipped, not waited
        for (SKIP LOCKED), so no row is ever claimed twice."""
        picked = _PICK_SERIAL if serial else _PICK
        serial_arg = [list(serial)] if serial else []
        rows = await self._pool.fetch(
            f"""
            WITH {picked}
            UPDATE notifier.deliveries d SET state = 'sending', claimed_by = $3,
                claimed_until = now() + make_interval(secs => $4), attempts = d.attempts + 1,
                updated_at = now()
            FROM picked WHERE d.id = picked.id
            RETURNING {_QUALIFIED}
            """,
            self.workspace_id, limit, self.sender, lease_seconds, *serial_arg,
        )  # fmt: skip
        return [_delivery(r) for r in rows]

    async def _close(self, delivery_id: int, sql: str, *args: object) -> bool:
        done = await self._pool.fetchval(
            f"""
            UPDATE notifier.deliveries SET {sql}, claimed_until = NULL, updated_at = now()
            WHERE id = $1 AND state = 'sending' AND claimed_by = $2
            RETURNING true
            """,
            delivery_id, self.sender, *args,
        )  # fmt: skip
        return bool(done)

    async def delivered(self, delivery_id: int, ref: str) -> bool:
        """Mark it delivered; False when the claim was no longer this sender's."""
        return await self._close(delivery_id,
            "state = 'delivered', ref = $3, reason = '', unsure = false, delivered_at = now()",
            ref)  # fmt: skip

    async def retry(self, delivery_id: int, after_seconds: float, reason: str) -> bool:
        """Try again in `after_seconds`; False when the claim was no longer this sender's."""
        return await self._close(delivery_id,
            "state = 'retrying', due = now() + make_interval(secs => $3), reason = $4",
            after_seconds, reason)  # fmt: skip

    async def failed(self, delivery_id: int, reason: str) -> bool:
        """Failed for good (until replayed); False when the claim was no longer ours."""
        return await self._close(delivery_id, "state = 'failed', reason = $3", reason)

    async def reconcile(self) -> int:
        """Hand back claims that ran out (their sender died or hung) as 'retrying' now,
        marked `unsure`; how many."""
        return int(await self._pool.fetchval(
            """
            WITH gone AS (
                UPDATE notifier.deliveries SET state = 'retrying', unsure = true, due = now(),
                    claimed_by = '', claimed_until = NULL, updated_at = now(),
                    reason = 'claim ran out without an outcome'
                WHERE workspace_id = $1 AND state = 'sending' AND claimed_until < now()
                RETURNING 1)
            SELECT count(*) FROM gone
            """,
            self.workspace_id,
        ))  # fmt: skip

    async def backlog(self) -> dict[tuple[str, str], int]:
        """{(channel, state): rows} of the deliveries not yet done (pending, retrying,
        sending)."""
        rows = await self._pool.fetch(
            """
            SELECT channel, state, count(*) AS n FROM notifier.deliveries
            WHERE workspace_id = $1 AND state IN ('pending', 'retrying', 'sending')
            GROUP BY channel, state
            """,
            self.workspace_id,
        )  # fmt: skip
        return {(r["channel"], r["state"]): int(r["n"]) for r in rows}

    async def list(self, states: Sequence[str] = (), limit: int = 50) -> list[Delivery]:
        """Newest first, only `states` when given."""
        rows = await self._pool.fetch(
            f"""
            SELECT {_COLUMNS} FROM notifier.deliveries
            WHERE workspace_id = $1 AND (cardinality($2::text[]) = 0 OR state = ANY($2))
            ORDER BY id DESC LIMIT $3
            """,
            self.workspace_id, list(states), limit,
        )  # fmt: skip
        return [_delivery(r) for r in rows]

    async def replay(self, delivery_id: int) -> Delivery | None:
        """A failed delivery made pending again, due now, attempts reset; None when
        there is no failed delivery with that id in the workspace."""
        row = await self._pool.fetchrow(
            f"""
            UPDATE notifier.deliveries SET state = 'pending', due = now(), attempts = 0,
                reason = '', updated_at = now()
            WHERE workspace_id = $1 AND id = $2 AND state = 'failed'
            RETURNING {_COLUMNS}
            """,
            self.workspace_id, delivery_id,
        )  # fmt: skip
        return _delivery(row) if row is not None else None
