"""Open reservations held in memory, for Check and GetBudget to count without I/O.

Fed at start from Postgres and then by NOTIFYs that every Reserve / Commit / Release
sends from its own transaction, so every replica sees a hold within milliseconds.
Reserve itself never trusts this view: it re-reads the holds under a lock in
Postgres (see store.reserve). Touched only from the event loop.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable
from datetime import datetime

from services.policy.store import Hold


def open_micros(
    holds: Iterable[Hold], now: datetime, settled: Callable[[str, str], bool], period_key: str
) -> int:
    """What the holds still count against the total of `period_key`: not expired, and
    their usage not yet in that total (as this replica read it, or as Postgres says a
    replica did)."""
    return sum(
        h.micros
        for h in holds
        if h.expires_at > now
        and not settled(h.request_id, period_key)
        and period_key not in h.settled_in
    )


class HoldsView:
    def __init__(self) -> None:
        self._by_id: dict[str, Hold] = {}
        self._by_user: dict[str, dict[str, Hold]] = {}
        self._by_pool: dict[str, dict[str, Hold]] = {}
        self._requests: set[str] = set()  # the request_ids of the open holds

    def __len__(self) -> int:
        return len(self._by_id)

    def put(self, hold: Hold) -> None:
        """Add, replace (committed) or drop (released) one hold."""
        self._drop(hold.reservation_id)
        if hold.released:
            return
        self._by_id[hold.reservation_id] = hold
        self._requests.add(hold.request_id)
        self._by_user.setdefault(hold.user_id, {})[hold.reservation_id] = hold
        for g in hold.pools:
            self._by_pool.setdefault(g, {})[hold.reservation_id] = hold

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

    def replace_all(self, holds: Iterable[Hold]) -> None:
        self._by_id.clear()
        self._by_user.clear()
        self._by_pool.clear()
        self._requests.clear()
        for h in holds:
            self.put(h)

    def ids(self) -> set[str]:
        return set(self._by_id)

    def sync(self, fetched: Iterable[Hold], known_before: set[str]) -> None:
        """Make the view what Postgres said, except for holds that arrived (by NOTIFY)
        while it was being asked: those stay."""
        fetched = list(fetched)
        for rid in known_before - {h.reservation_id for h in fetched}:
            self._drop(rid)
        for h in fetched:
            self.put(h)

    def held_for(self, request_ids: Iterable[str]) -> list[str]:
        """Those of `request_ids` that an open hold was made for."""
        return [r for r in request_ids if r in self._requests]

    def of_user(self, user_id: str) -> Collection[Hold]:
        """The user's open holds; an empty tuple (nothing made) for most people."""
        held = self._by_user.get(user_id)
        return held.values() if held else ()

    def of_pool(self, group_id: str) -> Collection[Hold]:
        held = self._by_pool.get(group_id)
        return held.values() if held else ()

    def prune(self, now: datetime) -> int:
        gone = [rid for rid, h in self._by_id.items() if h.expires_at <= now]
        for rid in gone:
            self._drop(rid)
        return len(gone)
