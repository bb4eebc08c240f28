"""Reservations in Postgres: made under locks, committed or released, and told to
every replica by a NOTIFY from the same transaction (reservations.to_notice)."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Mapping
from datetime import timedelta
from typing import Any, TypeVar

import asyncpg

from services.policy.errors import Conflict, NotFound
from services.policy.reservations import (
    Admission,
    Reservation,
    is_repeat,
    settle_refusal,
    to_notice,
)

# NOTIFY channel: every replica puts the reservation in its ReservationsView. Its old
# name stays: replicas of the previous release listen on it during a rolling update.
RESERVATIONS_CHANNEL = "qm_policy_holds_changed"
V = TypeVar("V", bound=Admission)


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
        ttl_seconds: float, admit: Callable[[list[Reservation]], V],
    ) -> tuple[V | None, Reservation | None, bool]:  # fmt: skip
        """Under locks on the user and each of their pools (taken in one order on every
        replica), read the open reservations and ask `admit(reservations)` for a
        verdict; when it says yes (`verdict.admitted`), write the reservation. Returns
        (verdict, reservation, existed): a request_id that already has a reservation
        returns that one unchanged (verdict None)."""
        ws = self.workspace_id
        keys = sorted([f"{ws}\x1fuser\x1f{user_id}"] + [f"{ws}\x1fpool\x1f{g}" for g in pools])
        # Three round trips under the locks (read; write and notify; commit): the locks
        # serialize every Reserve of one user, so their hold time bounds how many a
        # second one user's callers get through.
        async with self._pool.acquire() as conn, conn.transaction():
            # Every lock in one statement, in `keys` order (volatile functions in the
            # select list run after ORDER BY), and the transaction's now() with them.
            now = await conn.fetchval(
                "SELECT max(now()) FROM (SELECT pg_advisory_xact_lock(hashtextextended(k, 0))"
                " FROM unnest($1::text[]) WITH ORDINALITY AS t(k, i) ORDER BY i) AS locked",
                keys,
            )
            rows = await conn.fetch(
                "SELECT *, request_id = $4 AS same FROM policy.reservations"
                " WHERE workspace_id = $1 AND (request_id = $4 OR (released_at IS NULL"
                " AND expires_at > now() AND (user_id = $2 OR pools && $3::text[])))",
                ws, user_id, list(pools), request_id,
            )  # fmt: skip
            for r in rows:
                if r["same"]:
                    return None, _reservation(r), True
            verdict = admit([_reservation(r) for r in rows])
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
