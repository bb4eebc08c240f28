"""The requests store: credit requests, their append-only timeline, votes and the
outbox, in schema `requests`. The I/O edge around services.requests.machine.

Every change is one transaction: the request's new row (only if it is still at the
version the change was computed from), its timeline entries, the vote, and one outbox
row per entry. So a change and its event commit together or not at all; the relay
(services.requests.relay) publishes the outbox afterwards.

Concurrency: `apply` reads the request, computes the change with the pure machine and
writes it with `UPDATE ... WHERE version = <read version>`. Of concurrent changes one
matches; the others find 0 rows, read the request again and compute again, and the
machine then refuses them on what it says now (decided already: by whom and when).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

import asyncpg

from quartermaster.topics import Topic
from services.requests.machine import Entry, Outcome, Request, State
from services.requests.mapping import Listed, event_id, event_pb, listed_pb
from services.requests.paging import Position
from services.requests.stores.codec import entry_of, request_of, standing_json, steps_json
from services.requests.timing import Timing, next_due

# Changes of one request are few; this many rounds means something is wrong.
MAX_ATTEMPTS = 100
_COLUMNS = ("workspace_id", "request_id", "requester", "amount_micros", "duration_seconds",
            "justification", "links", "product", "project", "standing", "state", "version",
            "steps", "current_step", "granted_micros", "granted_seconds", "created_at",
            "expires_at", "approved_at", "ends_at", "decided_by", "decided_at",
            "decision_reason", "override_status")  # fmt: skip


def _columns(standing: str) -> str:
    return ", ".join(standing if c == "standing" else f"r.{c}" for c in _COLUMNS)


# A listed request's columns: its wire form (mapping.Listed), and for a row stored
# before there was one, the columns to map it from, its standing without the history
# (up to 20 past requests each, most of the work of a page; Get has the whole
# standing). A row with a wire form leaves its standing unread: a standing with its
# history is large enough to be stored out of line, and fetching it is most of the
# page's work in PostgreSQL.
LISTED = "r.listed, " + _columns(
    "CASE WHEN r.listed IS NULL THEN r.standing - 'history' END AS standing"
)
# A past request, as the history an approver sees lists it: no standing at all.
PAST = _columns("'{}'::jsonb AS standing")


def listed_of_row(row: Mapping[str, Any]) -> Listed:
    """A LISTED row as a list reads it (mapped from its columns when it has no wire form)."""
    wire = row["listed"]
    if wire is not None:
        return Listed(row["created_at"], row["request_id"], row["override_status"], wire)
    req = request_of(row)
    return Listed(req.created_at, req.request_id, req.override_status, b"", req)


def override_status(old: Request, new: Request) -> str:
    """What a change does to the grant's override: an approval starts "installing", an
    end or revocation of an approved grant "removing"; otherwise it stays."""
    if new.state is State.APPROVED and old.state is not State.APPROVED:
        return "installing"
    if new.state in (State.ENDED, State.REVOKED) and old.state is State.APPROVED:
        return "removing"
    return old.override_status


@dataclass(frozen=True)
class Unconfirmed:
    """A grant whose override policy has not confirmed installed or removed yet, and the
    event (id) that asked for it, republished when confirmation is late."""

    request_id: str
    status: str
    since: datetime
    event_id: str


class Contended(RuntimeError):
    """A change lost the race MAX_ATTEMPTS times in a row (retry later)."""


class RequestStore:
    """Credit requests of one workspace over an asyncpg pool. `timing` sets each row's
    next_due_at (when the reconciler next has something to do for it)."""

    def __init__(self, pool: asyncpg.Pool, workspace_id: str, timing: Timing) -> None:
        self._pool = pool
        self.workspace_id = workspace_id
        self._timing = timing

    async def create(self, out: Outcome) -> tuple[Request, bool]:
        """Store a new request (from machine.create) with its entry and event; (the
        request, created). A request_id stored already returns that request, unchanged
        (created False): the caller's id makes asking idempotent. ValueError for a
        request of another workspace."""
        req = out.request
        if req.workspace_id != self.workspace_id:
            raise ValueError(f"workspace_id: {req.workspace_id!r} is not this store's "
                             f"{self.workspace_id!r}")  # fmt: skip
        async with self._pool.acquire() as conn, conn.transaction():
            inserted = await conn.fetchval(
                """
                INSERT INTO requests.requests
                    (workspace_id, request_id, requester, amount_micros, duration_seconds,
                     justification, links, product, project, standing, state, version, steps,
                     current_step, granted_micros, granted_seconds, created_at, expires_at,
                     next_due_at, listed)
                VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16,
                        $17, $18, $19, $20)
                ON CONFLICT DO NOTHING RETURNING 1
                """,
                self.workspace_id, req.request_id, req.requester, req.amount_micros,
                req.duration_seconds, req.justification, list(req.links), req.product,
                req.project, standing_json(req.standing), req.state.value, req.version,
                steps_json(req.steps), req.current_step, req.granted_micros,
                req.granted_seconds, req.created_at, req.expires_at, next_due(req, self._timing),
                listed_pb(req).SerializeToString(),
            )  # fmt: skip
            if not inserted:
                existing = await self.get(req.request_id, conn)
                assert existing is not None
                return existing, False
            await self._record(conn, req, out)
            await self._awaiting(conn, req, fresh=True)
        return req, True

    async def get(
        self, request_id: str, conn: asyncpg.Connection | asyncpg.Pool | None = None
    ) -> Request | None:
        """The request as stored, or None."""
        row = await (conn or self._pool).fetchrow(
            "SELECT * FROM requests.requests WHERE workspace_id = $1 AND request_id = $2",
            self.workspace_id,
            request_id,
        )
        return request_of(row) if row is not None else None

    async def timeline(self, request_id: str) -> list[Entry]:
        """The request's timeline, oldest first."""
        rows = await self._pool.fetch(
            "SELECT * FROM requests.timeline WHERE workspace_id = $1 AND request_id = $2"
            " ORDER BY id",
            self.workspace_id,
            request_id,
        )
        return [entry_of(r) for r in rows]

    async def apply(
        self, request_id: str, change: Callable[[Request], Outcome | None]
    ) -> Outcome | None:
        """Apply `change` (a pure machine operation on the stored request) and store its
        outcome in one transaction. Returns the outcome (None: `change` had nothing to
        do). Raises KeyError for an unknown request, whatever `change` raises (Refused),
        and Contended when it lost MAX_ATTEMPTS races in a row."""
        for _ in range(MAX_ATTEMPTS):
            req = await self.get(request_id)
            if req is None:
                raise KeyError(f"request_id: no request {request_id!r}")
            out = change(req)
            if out is None:
                return None
            status = override_status(req, out.request)
            if status != out.request.override_status:
                out = replace(out, request=replace(out.request, override_status=status))
            async with self._pool.acquire() as conn, conn.transaction():
                if await self._update(conn, req.version, out.request):
                    await self._record(conn, out.request, out)
                    if out.request.awaiting() != req.awaiting():
                        await self._awaiting(conn, out.request)
                    return out
        raise Contended(f"request {request_id}: {MAX_ATTEMPTS} concurrent changes won over this")

    async def _update(self, conn: asyncpg.Connection, version: int, new: Request) -> bool:
        """Write `new` if the row is still at `version`; whether it was."""
        status = await conn.execute(
            """
            UPDATE requests.requests SET
                state = $4, version = $5, steps = $6, current_step = $7, granted_micros = $8,
                granted_seconds = $9, approved_at = $10, ends_at = $11, decided_by = $12,
                decided_at = $13, decision_reason = $14, next_due_at = $15, override_status = $16,
                listed = $17
            WHERE workspace_id = $1 AND request_id = $2 AND version = $3
            """,
            self.workspace_id, new.request_id, version, new.state.value, new.version,
            steps_json(new.steps), new.current_step, new.granted_micros, new.granted_seconds,
            new.approved_at, new.ends_at, new.decided_by, new.decided_at, new.decision_reason,
            next_due(new, self._timing), new.override_status, listed_pb(new).SerializeToString(),
        )  # fmt: skip
        return bool(status == "UPDATE 1")

    async def _awaiting(self, conn: asyncpg.Connection, req: Request, fresh: bool = False) -> None:
        """Who `req` waits on now (requests.awaiting), in `conn`'s transaction."""
        if not fresh:
            await conn.execute(
                "DELETE FROM requests.awaiting WHERE workspace_id = $1 AND request_id = $2",
                self.workspace_id, req.request_id,
            )  # fmt: skip
        await conn.executemany(
            "INSERT INTO requests.awaiting (workspace_id, user_id, request_id, created_at)"
            " VALUES ($1, $2, $3, $4)",
            [(self.workspace_id, u, req.request_id, req.created_at) for u in req.awaiting()],
        )

    async def _record(self, conn: asyncpg.Connection, req: Request, out: Outcome) -> None:
        """The outcome's timeline entries, vote and outbox events, in `conn`'s transaction."""
        await conn.executemany(
            "INSERT INTO requests.timeline (workspace_id, request_id, version, at, actor,"
            " action, from_state, to_state, reason, via)"
            " VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
            [(self.workspace_id, req.request_id, e.version, e.at, e.actor, e.action,
              e.from_state.value, e.to_state.value, e.reason, e.via) for e in out.entries],
        )  # fmt: skip
        if out.vote is not None:
            v = out.vote
            await conn.execute(
                "INSERT INTO requests.votes (workspace_id, request_id, user_id, step, approve,"
                " version, at) VALUES ($1, $2, $3, $4, $5, $6, $7)",
                self.workspace_id, req.request_id, v.user_id, v.step, v.approve, req.version,
                out.entries[-1].at,
            )  # fmt: skip
        await conn.executemany(
            "INSERT INTO requests.outbox (event_id, topic, key, payload) VALUES ($1, $2, $3, $4)",
            [(event_id(req.request_id, e.version, e.action), Topic.REQUESTS.value,
              req.request_id.encode(), event_pb(req, e).SerializeToString())
             for e in out.entries],
        )  # fmt: skip

    async def due(self, now: datetime, limit: int = 100) -> list[str]:
        """Ids of requests the reconciler has something to do for at `now`, oldest first."""
        rows = await self._pool.fetch(
            "SELECT request_id FROM requests.requests WHERE workspace_id = $1"
            " AND next_due_at <= $2 ORDER BY next_due_at LIMIT $3",
            self.workspace_id,
            now,
            limit,
        )
        return [r["request_id"] for r in rows]

    async def of_requester(self, requester: str, limit: int = 50) -> list[Request]:
        """The requester's requests, newest first (their history, for the approver), each
        without its standing (PAST: nobody reads it there)."""
        rows = await self._pool.fetch(
            f"SELECT {PAST} FROM requests.requests r WHERE workspace_id = $1"
            " AND requester = $2 ORDER BY created_at DESC, request_id DESC LIMIT $3",
            self.workspace_id,
            requester,
            limit,
        )
        return [request_of(r) for r in rows]

    async def awaiting(
        self, user_id: str, limit: int = 50, after: Position | None = None
    ) -> list[Listed]:
        """Pending requests whose current step asks `user_id` and that they haven't
        approved yet, oldest first (created_at, then request_id), `limit` of them after
        `after` (None: from the first). Read in order from requests.awaiting's index,
        as lists show them (mapping.Listed)."""
        args: list[object] = [self.workspace_id, user_id, limit]
        since = ""
        if after is not None:
            since = "AND (a.created_at, a.request_id) > ($4, $5)"
            args += [after.created_at, after.request_id]
        rows = await self._pool.fetch(
            f"""
            SELECT {LISTED} FROM requests.awaiting a
            JOIN requests.requests r USING (workspace_id, request_id)
            WHERE a.workspace_id = $1 AND a.user_id = $2 {since}
            ORDER BY a.created_at, a.request_id LIMIT $3
            """,
            *args,
        )
        return [listed_of_row(r) for r in rows]

    async def page(
        self, *, requester: str = "", states: Sequence[str] = (), limit: int = 50,
        after: Position | None = None,
    ) -> list[Listed]:  # fmt: skip
        """Requests newest first (created_at, then request_id, both descending):
        `requester`'s ("": everyone's), in `states` (empty: any), `limit` of them after
        `after` (None: from the newest). The indexes requests_page and
        requests_requester_page give them in this order, as lists show them
        (mapping.Listed)."""
        where = ["workspace_id = $1", "state = ANY($2::text[]) OR cardinality($2::text[]) = 0"]
        args: list[object] = [self.workspace_id, list(states), limit]
        if requester:
            args.append(requester)
            where.append(f"requester = ${len(args)}")
        if after is not None:
            args += [after.created_at, after.request_id]
            where.append(f"(created_at, request_id) < (${len(args) - 1}, ${len(args)})")
        rows = await self._pool.fetch(
            f"SELECT {LISTED} FROM requests.requests r"
            f" WHERE {' AND '.join(f'({w})' for w in where)}"
            " ORDER BY created_at DESC, request_id DESC LIMIT $3",
            *args,
        )
        return [listed_of_row(r) for r in rows]

    async def unconfirmed(self, limit: int = 500) -> list[Unconfirmed]:
        """Grants whose override policy has yet to confirm installed or removed, oldest
        change first (the partial index requests_unconfirmed finds them)."""
        rows = await self._pool.fetch(
            "SELECT request_id, override_status, state, version, approved_at, ends_at"
            " FROM requests.requests WHERE workspace_id = $1"
            " AND override_status IN ('installing', 'removing') ORDER BY ends_at LIMIT $2",
            self.workspace_id,
            limit,
        )
        out = []
        for r in rows:
            installing = r["override_status"] == "installing"
            action = "approved" if installing else r["state"]
            since = r["approved_at"] if installing else r["ends_at"]
            out.append(Unconfirmed(r["request_id"], r["override_status"], since,
                                   event_id(r["request_id"], r["version"], action)))  # fmt: skip
        return out

    async def confirm(self, request_ids: Sequence[str], was: str, now: str) -> int:
        """Mark these grants' override `now` ("installed", "removed") where it still is
        `was`; how many. Not a transition: the request's version stays."""
        status = await self._pool.execute(
            "UPDATE requests.requests SET override_status = $4 WHERE workspace_id = $1"
            " AND request_id = ANY($2::text[]) AND override_status = $3",
            self.workspace_id, list(request_ids), was, now,
        )  # fmt: skip
        return int(status.split()[-1])

    async def resend(self, event_ids: Sequence[str]) -> int:
        """Mark these outbox events unsent, so the relay publishes them again (policy,
        keyed by request id, applies an event it has seen once); how many."""
        status = await self._pool.execute(
            "UPDATE requests.outbox SET sent_at = NULL WHERE event_id = ANY($1::text[])"
            " AND sent_at IS NOT NULL",
            list(event_ids),
        )
        return int(status.split()[-1])
