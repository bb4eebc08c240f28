"""Reservations in Postgres: made under locks, committed or released, and told to
every replica by a NOTIFY from the same transaction (reservations.to_notice)."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, TypeVar

import asyncpg

from services.policy.errors import Conflict, NotFound, TooMany
from services.policy.reservations import (
    Admission,
    Held,
    Reservation,
    is_repeat,
    settle_refusal,
    to_notice,
)

# NOTIFY channel: every replica puts the reservation in its ReservationsView. Its old
# name stays: replicas of the previous release listen on it during a rolling update.
RESERVATIONS_CHANNEL = "qm_policy_holds_changed"
V = TypeVar("V", bound=Admission)
# What a Reserve reads under its locks: how many reservations the user has open, the
# micros they hold against the user's period ($3) and each pool's ($4, $5) except
# those settled in it (in Postgres, or here: $6), and any reservation of request_id
# $7, in one row. Aggregates over the partial indexes (open user's, open pools' GIN):
# no reservation travels to Python, and the user's are at most max_open.
_OPEN = "workspace_id = $1 AND released_at IS NULL AND expires_at > now()"
_UNSETTLED = "NOT (k = ANY(settled_periods)) AND NOT (request_id || chr(31) || k = ANY($6))"
SUMS = (
    "SELECT u.user_open, u.user_held, ARRAY(SELECT (SELECT"
    " coalesce(sum(coalesce(actual_micros, estimated_micros)), 0) FROM policy.reservations"
    f" WHERE {_OPEN} AND pools @> ARRAY[p.g] AND {_UNSETTLED})"
    " FROM unnest($4::text[], $5::text[]) WITH ORDINALITY AS p(g, k, i) ORDER BY p.i)"
    " AS pool_held, e.* FROM (SELECT count(*) AS user_open,"
    " coalesce(sum(coalesce(actual_micros, estimated_micros))"
    f" FILTER (WHERE {_UNSETTLED}), 0) AS user_held"
    f" FROM policy.reservations, (SELECT $3::text AS k) AS uk WHERE {_OPEN} AND user_id = $2)"
    " AS u LEFT JOIN policy.reservations AS e ON e.workspace_id = $1 AND e.request_id = $7"
)


@dataclass(frozen=True, slots=True)
class Periods:
    """Against what a Reserve sums the open reservations: the period key of the user's
    limit, those of their pools (in the order of the pools), the requests this replica
    knows settled (reservations.settled_here), and how many a user may have open."""

    user_key: str
    pool_keys: tuple[str, ...]
    settled_here: tuple[str, ...]
    max_open: int


def _reservation(r: Mapping[str, Any]) -> Reservation:
    actual = r["actual_micros"]
    return Reservation(
        str(r["reservation_id"]), r["user_id"], r["request_id"], tuple(r["pools"]),
        actual if actual is not None else r["estimated_micros"], r["expires_at"],
        r["estimated_micros"], actual is not None, r["released_at"] is not None,
        tuple(r["settled_periods"]),
    )  # fmt: skip


class ReservationStore:
    """One workspace's reservations. Raises NotFound / Conflict (services.policy.errors)
    and asyncpg errors when Postgres is away."""

    def __init__(self, pool: asyncpg.Pool, workspace_id: str) -> None:
        self._pool = pool
        self.workspace_id = workspace_id

    async def mark_settled(self, period_key: str, request_ids: list[str]) -> int:
        """Record that the total of `period_key` includes these requests' usage, on
        their reservations (most requests have none); how many learnt it now."""
        result = await self._pool.execute(
            "UPDATE policy.reservations SET settled_periods = array_append(settled_periods, $3)"
            " WHERE workspace_id = $1 AND request_id = ANY($2::text[])"
            " AND NOT ($3 = ANY(settled_periods))",
            self.workspace_id,
            request_ids,
            period_key,
        )
        return int(result.split()[-1])

    async def open_reservations(self) -> list[Reservation]:
        """Every reservation neither released nor expired."""
        rows = await self._pool.fetch(
            "SELECT * FROM policy.reservations WHERE workspace_id = $1 AND released_at IS NULL"
            " AND expires_at > now()",
            self.workspace_id,
        )
        return [_reservation(r) for r in rows]

    async def reserve(
        self, user_id: str, pools: tuple[str, ...], request_id: str, estimated: int,
        ttl_seconds: float, admit: Callable[[Held], V], periods: Periods,
    ) -> tuple[V | None, Reservation | None, bool]:  # fmt: skip
        """Under locks on the user and each of their pools (taken in one order on every
        replica), sum what the open reservations hold (`periods`: against which period
        keys, and the requests this replica knows settled) and ask `admit(held)` for a
        verdict; when it says yes (`verdict.admitted`), write the reservation. Returns
        (verdict, reservation, existed): a request_id that already has a reservation
        returns that one unchanged (verdict None). TooMany when the user already has
        `periods.max_open` open reservations."""
        ws = self.workspace_id
        keys = sorted([f"{ws}\x1fuser\x1f{user_id}"] + [f"{ws}\x1fpool\x1f{g}" for g in pools])
        # Three round trips under the locks (lock; sum; write and notify) and the
        # commit: the locks serialize every Reserve of one user, so their hold time
        # bounds how many a second one user's callers get through.
        async with self._pool.acquire() as conn, conn.transaction():
            # Every lock in one statement, in `keys` order (volatile functions in the
            # select list run after ORDER BY), and the transaction's now() with them.
            now = await conn.fetchval(
                "SELECT max(now()) FROM (SELECT pg_advisory_xact_lock(hashtextextended(k, 0))"
                " FROM unnest($1::text[]) WITH ORDINALITY AS t(k, i) ORDER BY i) AS locked",
                keys,
            )
            # Sums, not rows: a Reserve's cost does not grow with the holds (issue 14).
            row = await conn.fetchrow(
                SUMS, ws, user_id, periods.user_key, list(pools), list(periods.pool_keys),
                list(periods.settled_here), request_id,
            )  # fmt: skip
            assert row is not None
            if row["reservation_id"] is not None:
                return None, _reservation(row), True
            if row["user_open"] >= periods.max_open:
                raise TooMany(
                    f"user_id: {user_id!r} has {row['user_open']} open reservations, the"
                    f" most one user may have ({periods.max_open}:"
                    " QM_POLICY_MAX_OPEN_RESERVATIONS); commit or release them first"
                )
            held = Held(
                int(row["user_held"]), dict(zip(pools, map(int, row["pool_held"]), strict=True)),
                row["user_open"],
            )  # fmt: skip
            verdict = admit(held)
            if not verdict.admitted:
                return verdict, None, False
            # The row as it will be, so that the INSERT and its NOTIFY are one statement
            # (a data-modifying WITH runs whether or not the query reads it).
            reservation = Reservation(
                str(uuid.uuid4()), user_id, request_id, pools, estimated,
                now + timedelta(seconds=float(ttl_seconds)), estimated,
            )  # fmt: skip
            await conn.execute(
                "WITH made AS (INSERT INTO policy.reservations (reservation_id, workspace_id,"
                " user_id, request_id, pools, estimated_micros, expires_at)"
                " VALUES ($1, $2, $3, $4, $5, $6, $7)) SELECT pg_notify($8, $9)",
                uuid.UUID(reservation.reservation_id), ws, user_id, request_id, list(pools),
                estimated, reservation.expires_at, RESERVATIONS_CHANNEL,
                to_notice(ws, reservation),
            )  # fmt: skip
            return verdict, reservation, False

    async def settle(
        self, reservation_id: str, actual: int | None, keep_seconds: float
    ) -> Reservation:
        """Commit (actual given: the reservation becomes the actual cost, kept
        `keep_seconds` for the usage to reach the totals) or release (actual None).
        Conflict when it is settled already (reservations.settle_refusal); the same
        Commit again returns the reservation unchanged."""
        try:
            rid = uuid.UUID(reservation_id)
        except ValueError:
            raise NotFound(f"reservation_id: {reservation_id!r} is not a reservation id") from None
        async with self._pool.acquire() as conn, conn.transaction():
            row = await conn.fetchrow(
                "SELECT *, expires_at <= now() AS expired FROM policy.reservations"
                " WHERE reservation_id = $1 AND workspace_id = $2 FOR UPDATE",
                rid,
                self.workspace_id,
            )
            if row is None:
                raise NotFound(f"reservation_id: no reservation {reservation_id!r}")
            found = _reservation(row)
            refusal = settle_refusal(found, row["expired"], actual)
            if refusal is not None:
                raise Conflict(refusal)
            if is_repeat(found, actual):
                return found
            if actual is None:
                row = await conn.fetchrow(
                    "UPDATE policy.reservations SET released_at = now()"
                    " WHERE reservation_id = $1 RETURNING *",
                    rid,
                )
            else:
                row = await conn.fetchrow(
                    "UPDATE policy.reservations SET actual_micros = $2,"
                    " expires_at = greatest(expires_at, now() + make_interval(secs => $3))"
                    " WHERE reservation_id = $1 RETURNING *",
                    rid,
                    actual,
                    float(keep_seconds),
                )
            reservation = _reservation(row)
            await conn.execute(
                "SELECT pg_notify($1, $2)",
                RESERVATIONS_CHANNEL,
                to_notice(self.workspace_id, reservation),
            )
            return reservation

    async def forget_old(self, older_than_seconds: float) -> int:
        """Delete reservations (of every workspace) released or expired longer ago than
        `older_than_seconds`; how many."""
        status: str = await self._pool.execute(
            "DELETE FROM policy.reservations"
            " WHERE coalesce(released_at, expires_at) < now() - make_interval(secs => $1)",
            float(older_than_seconds),
        )
        return int(status.split()[-1])
