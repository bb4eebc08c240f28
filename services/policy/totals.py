"""Usage totals held in memory: the index that `qm.usage.totals.v1` records fold into.

Pure (no Kafka here: totals_feed.TotalsFeed reads the topic and feeds `apply`). The
topic carries absolute totals, so the newest record per key is the truth and
applying one any number of times is harmless. The feed applies from its thread;
readers on the event loop only do dict look-ups, which are atomic under the GIL.

Pooled budgets are sums over their members, kept up to date as totals arrive (each
new total adds its difference to the user's pools) and recomputed whole when the
membership changes. Request ids that a total reports as counted settle the
reservations made for them.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Mapping
from typing import NamedTuple

from quartermaster.v1 import usage_pb2
from quartermaster.workspaces import ForeignRecords

log = logging.getLogger("qm.policy.totals")
# How long a settled request id is remembered: longer than any reservation lives.
SETTLED_MEMORY_SECONDS = 26 * 3600


class Applied(NamedTuple):
    """What one applied total was about, and the request ids it reported as counted
    that had not been seen counted before (their reservations are settled)."""

    user_id: str
    period_key: str
    settled: list[str]


class TotalsIndex:
    """user → micros used per period, pooled sums per (group, period), and which
    requests' usage the totals already include."""

    def __init__(self, workspace_id: str = "") -> None:
        # Totals naming another workspace are skipped (counted, said once each): the
        # totals topic may be shared, and a user id of theirs may be one of ours.
        self.foreign = ForeignRecords(workspace_id, "qm.usage.totals.v1 (policy)", log)
        # period_key → user_id → the newest total's micros, and when metering made it
        # (ns since the epoch). Plain ints in a dict per period: a Check reads one with
        # a single look-up (Evaluator keeps the current period's dict at hand), and
        # 100,000 people's month cost ~150 bytes each.
        self._used: dict[str, dict[str, int]] = {}
        self._made: dict[str, dict[str, int]] = {}
        self.records = 0
        self.rejected = 0
        # (request_id, period_key) → when a total of that period first included the
        # request's usage (monotonic seconds). Per period: metering publishes the day,
        # week and month totals one after another, and a reservation must keep counting
        # against the month until the month's total has the usage.
        self._settled: dict[tuple[str, str], float] = {}
        self._pruned_at = time.monotonic()
        # user_id → the pooled groups they draw on; (group_id, period_key) → sum
        self._pools_of: Mapping[str, tuple[str, ...]] = {}
        self._pool_used: dict[tuple[str, str], int] = {}
        self._pool_lock = threading.Lock()

    def used(self, user_id: str, period_key: str) -> int:
        return self.of_period(period_key).get(user_id, 0)

    def of_period(self, period_key: str) -> Mapping[str, int]:
        """user_id → micros used in the period: the view's own dict, kept up to date
        (for readers that look many people up in one period)."""
        found = self._used.get(period_key)
        if found is None:
            found = self._used.setdefault(period_key, {})
        return found

    def pool_used(self, group_id: str, period_key: str) -> int:
        return self._pool_used.get((group_id, period_key), 0)

    def settled(self, request_id: str, period_key: str) -> bool:
        return (request_id, period_key) in self._settled

    def set_pools(self, pools_of: Mapping[str, tuple[str, ...]]) -> None:
        """Who draws on which pool; the sums are recomputed when it changed."""
        with self._pool_lock:
            if pools_of is self._pools_of or pools_of == self._pools_of:
                return
            sums: dict[tuple[str, str], int] = {}
            for period_key, users in list(self._used.items()):
                for user_id, used in list(users.items()):
                    for g in pools_of.get(user_id, ()):
                        key = (g, period_key)
                        sums[key] = sums.get(key, 0) + used
            self._pools_of = pools_of
            self._pool_used = sums

    def apply(self, value: bytes | None) -> Applied | None:
        """Fold one record's value (a UsageTotal) into the index (newest `updated_at`
        wins); None for a record that is not a user's total (counted in `rejected`
        when it is not a UsageTotal at all) or is another workspace's (`foreign`)."""
        msg = usage_pb2.UsageTotal()
        try:
            msg.ParseFromString(value or b"")
        except Exception:
            self.rejected += 1
            log.warning("ignoring a totals record that is not a UsageTotal")
            return None
        if msg.subject_kind != usage_pb2.SUBJECT_KIND_USER or not msg.subject_id:
            return None
        if self.foreign.foreign(msg.workspace_id):
            return None
        user_id, period_key, micros = msg.subject_id, msg.period_key, msg.used_micros
        made = msg.updated_at.seconds * 1_000_000_000 + msg.updated_at.nanos
        with self._pool_lock:
            used = self._used.get(period_key)
            if used is None:
                used = self._used.setdefault(period_key, {})
            stamps = self._made.setdefault(period_key, {})
            if made >= stamps.get(user_id, made):
                stamps[user_id] = made
                delta = micros - used.get(user_id, 0)
                used[user_id] = micros
                for g in self._pools_of.get(user_id, ()):
                    pool_key = (g, period_key)
                    self._pool_used[pool_key] = self._pool_used.get(pool_key, 0) + delta
        fresh = []
        if msg.settled_request_ids:
            # Only after the total that includes them: a reader in between sees the
            # reservation and the usage both (too much, for a moment), never neither.
            now = time.monotonic()
            for rid in msg.settled_request_ids:
                if (rid, period_key) not in self._settled:
                    self._settled[(rid, period_key)] = now
                    fresh.append(rid)
            if now - self._pruned_at > 600:
                self._forget_settled(now)
        self.records += 1
        return Applied(user_id, period_key, fresh)

    def _forget_settled(self, now: float) -> None:
        self._pruned_at = now
        horizon = now - SETTLED_MEMORY_SECONDS
        self._settled = {r: t for r, t in self._settled.items() if t >= horizon}
