"""Reservations: money set aside for a call in flight, and the open ones held in memory.

A reservation counts against its user's budget (and every pool the user draws on)
from Reserve until it is released, it expires, or the usage it was made for is in
the totals (settled). `ReservationsView` keeps the open ones in memory, for Check
and GetBudget to count without I/O. It is fed at start from Postgres and then by
NOTIFYs that every Reserve / Commit / Release sends from its own transaction, so
every replica sees a reservation within milliseconds. Reserve itself never trusts
this view: it re-reads the open reservations under a lock in Postgres (see
stores.reservations). Touched only from the event loop. Pure: no I/O here.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Collection, Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import NamedTuple, Protocol


@dataclass(frozen=True, slots=True)
class Reservation:
    """One reservation. `micros` is the actual cost once committed, else the estimate;
    `settled_in` the period keys whose total already includes this call (recorded in
    Postgres by the first replica that read such a total)."""

    reservation_id: str
    user_id: str
    request_id: str
    pools: tuple[str, ...]
    micros: int
    expires_at: datetime
    estimated_micros: int = 0
    committed: bool = False
    released: bool = False
    settled_in: tuple[str, ...] = ()


class Held(NamedTuple):
    """What the open reservations hold, as Postgres sums them under the Reserve lock:
    the user's micros against their limit's period, each pool's against its own, and
    how many reservations the user has open (settled or not)."""

    user: int
    pools: dict[str, int]
    user_open: int


def settled_here(
    reservations: Iterable[Reservation], settled: Callable[[str, str], bool], period_key: str
) -> list[str]:
    """Those of `reservations` that this replica knows are in the total of `period_key`
    and Postgres does not know of yet (Settlements records them there soon), as
    request_id + US + period_key: a Reserve's sums leave them out as the view does."""
    return [
        f"{h.request_id}\x1f{period_key}"
        for h in reservations
        if period_key not in h.settled_in and settled(h.request_id, period_key)
    ]


class Admission(Protocol):
    """A verdict on whether a new reservation may be made."""

    @property
    def admitted(self) -> bool: ...


def settle_refusal(r: Reservation, expired: bool, actual: int | None) -> str | None:
    """Why a Commit (`actual` given) or a Release (None) of `r` is refused, or None
    when it may go ahead. A settled reservation is final: released, committed or
    expired, it is refused naming that state (FAILED_PRECONDITION), so a Release can
    no longer take committed spend out of the budget before metering counts it, nor
    a second Commit overwrite the first. The one exception is the same Commit again
    (same actual amount, e.g. a retry whose first answer was lost): not refused, the
    caller answers it with the reservation unchanged (`is_repeat`). A repeated Release
    is refused as "already released" (PolicyClient.release reads that as done)."""
    rid = r.reservation_id
    if r.released:
        return f"reservation_id: {rid!r} is already released; a settled reservation is final"
    if r.committed:
        if actual is not None and actual == r.micros:
            return None
        return (
            f"reservation_id: {rid!r} is already committed (actual_micros={r.micros});"
            " a settled reservation is final"
        )
    if expired:
        return (
            f"reservation_id: {rid!r} is already expired (at {r.expires_at.isoformat()});"
            " its budget is free again and its usage counts when metered"
        )
    return None


def is_repeat(r: Reservation, actual: int | None) -> bool:
    """Whether a Commit of `actual` is the one `r` already had (answer `r` as it is)."""
    return r.committed and actual is not None and actual == r.micros


def to_notice(workspace_id: str, r: Reservation) -> str:
    """The NOTIFY payload that tells every replica of a new or changed reservation
    (short keys, and UTF-8 rather than JSON escapes, which take up to 12 bytes a
    character: a NOTIFY payload is limited to 8,000 bytes)."""
    return json.dumps(
        {
            "w": workspace_id,
            "id": r.reservation_id,
            "u": r.user_id,
            "r": r.request_id,
            "p": list(r.pools),
            "m": r.micros,
            "x": r.expires_at.isoformat(),
            "gone": r.released,
            "s": list(r.settled_in),
        },
        ensure_ascii=False,
    )


def from_notice(payload: str) -> tuple[str, Reservation]:
    """(workspace_id, reservation) of a `to_notice` payload."""
    d = json.loads(payload)
    return d["w"], Reservation(d["id"], d["u"], d["r"], tuple(d["p"]), d["m"],
                               datetime.fromisoformat(d["x"]), released=d["gone"],
                               settled_in=tuple(d.get("s", ())))  # fmt: skip


def open_micros(
    reservations: Iterable[Reservation],
    now: datetime,
    settled: Callable[[str, str], bool],
    period_key: str,
) -> int:
    """What the reservations still count against the total of `period_key`: not expired, and
    their usage not yet in that total (as this replica read it, or as Postgres says a
    replica did)."""
    return sum(
        h.micros
        for h in reservations
        if h.expires_at > now
        and not settled(h.request_id, period_key)
        and period_key not in h.settled_in
    )


class ReservationsView:
    """The open reservations, by id, by user and by pool."""

    def __init__(self) -> None:
        self._by_id: dict[str, Reservation] = {}
        self._by_user: dict[str, dict[str, Reservation]] = {}
        self._by_pool: dict[str, dict[str, Reservation]] = {}
        self._requests: set[str] = set()  # the request_ids of the open reservations

    def __len__(self) -> int:
        return len(self._by_id)

    def put(self, reservation: Reservation) -> None:
        """Add, replace (committed) or drop (released) one reservation."""
        r = reservation
        self._drop(r.reservation_id)
        if r.released:
            return
        self._by_id[r.reservation_id] = r
        self._requests.add(r.request_id)
        self._by_user.setdefault(r.user_id, {})[r.reservation_id] = r
        for g in r.pools:
            self._by_pool.setdefault(g, {})[r.reservation_id] = r

    def _drop(self, reservation_id: str) -> None:
        old = self._by_id.pop(reservation_id, None)
        if old is None:
            return
        self._requests.discard(old.request_id)
        for index, key in [(self._by_user, old.user_id)] + [(self._by_pool, g) for g in old.pools]:
            held = index.get(key)
            if held is not None:
                held.pop(reservation_id, None)
                if not held:
                    del index[key]

    def replace_all(self, reservations: Iterable[Reservation]) -> None:
        self._by_id.clear()
        self._by_user.clear()
        self._by_pool.clear()
        self._requests.clear()
        for r in reservations:
            self.put(r)

    def ids(self) -> set[str]:
        return set(self._by_id)

    def sync(self, fetched: Iterable[Reservation], known_before: set[str]) -> None:
        """Make the view what Postgres said, except for reservations that arrived (by NOTIFY)
        while it was being asked: those stay."""
        fetched = list(fetched)
        for rid in known_before - {h.reservation_id for h in fetched}:
            self._drop(rid)
        for h in fetched:
            self.put(h)

    async def sync_from(self, fetch: Callable[[], Awaitable[Iterable[Reservation]]]) -> None:
        """`sync` with what `fetch()` returns (Postgres's open reservations), taking the ids
        known *before* it is awaited: a reservation NOTIFYed while the read is in flight
        is newer than the read and stays. (Taking them after the await dropped exactly
        those: a hold made on another replica just after a reconnect went unseen.)"""
        known_before = self.ids()
        self.sync(await fetch(), known_before)

    def held_for(self, request_ids: Iterable[str]) -> list[str]:
        """Those of `request_ids` that an open reservation was made for."""
        return [r for r in request_ids if r in self._requests]

    def of_user(self, user_id: str) -> Collection[Reservation]:
        """The user's open reservations; an empty tuple (nothing made) for most people."""
        held = self._by_user.get(user_id)
        return held.values() if held else ()

    def of_pool(self, group_id: str) -> Collection[Reservation]:
        held = self._by_pool.get(group_id)
        return held.values() if held else ()

    def prune(self, now: datetime) -> int:
        """Drop the expired ones; how many."""
        gone = [rid for rid, h in self._by_id.items() if h.expires_at <= now]
        for rid in gone:
            self._drop(rid)
        return len(gone)
