"""The reconciler: every few seconds, acts on what is due by the clock (reminders,
escalations, pending expiries, grant ends) for every request whose `next_due_at` has
passed. It runs on the stored deadlines, not on timers, so what fell due while nothing
ran (downtime) is done at its first pass after; each action is a store change with its
outbox event like any other (so policy removes an ended grant's override from it).

Failure: a request whose change fails (PostgreSQL away, a lost race) is left due and
tried again at the next pass; one bad request never stops the others.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from datetime import UTC, datetime

import asyncpg

from quartermaster.db import RETRIED_NEXT_ROUND, outage_text
from services.requests.machine import Refused
from services.requests.stores.requests import Contended, RequestStore
from services.requests.timing import Timing, tick

log = logging.getLogger("qm.requests.reconciler")
# Transitions one request may take in one pass (a reminder, escalation and expiry
# all past due after downtime): more means a bug, not work.
MAX_STEPS = 10


def utc_now() -> datetime:
    return datetime.now(UTC)


class Reconciler:
    """Applies `timing.tick` at `clock()` to every request due, each `every` seconds."""

    def __init__(
        self,
        store: RequestStore,
        timing: Timing,
        every: float = 5.0,
        clock: Callable[[], datetime] = utc_now,
    ) -> None:
        self._store = store
        self._timing = timing
        self._every = every
        self._clock = clock
        self.actions = 0
        self.stopping = False

    async def pass_once(self) -> int:
        """One pass at `clock()`; how many transitions it made."""
        now = self._clock()
        made = 0
        for request_id in await self._store.due(now):
            try:
                for _ in range(MAX_STEPS):
                    out = await self._store.apply(request_id, lambda r: tick(r, now, self._timing))
                    if out is None:
                        break
                    made += 1
                    log.info("%s: %s", request_id, out.entries[-1].action)
            except (Refused, Contended, KeyError, OSError, asyncpg.PostgresError) as exc:
                log.warning("%s: not reconciled this pass: %s", request_id, exc)
            except Exception:  # one request's surprise must not hold up the others
                log.exception("%s: not reconciled this pass", request_id)
        self.actions += made
        return made

    async def run(self) -> None:
        """Until `stopping`: a failed pass is retried after `every` seconds, an
        unexpected one logged at ERROR with its traceback, so the loop never ends alone."""
        while not self.stopping:
            try:
                await self.pass_once()
            except RETRIED_NEXT_ROUND as exc:
                log.warning("reconciler pass failed, retrying: %s", outage_text(exc))
            except Exception:
                log.exception("reconciler pass failed unexpectedly, retrying")
            await asyncio.sleep(self._every)
