"""Confirmation that policy acted on a grant: a request shows `installing` from its
approval until policy has its override, and `removing` from its end or revocation until
policy no longer has it (CreditRequest.override_status).

How: every pass asks policy's PolicyAdminService.ListLimits once for the active
overrides (by request id) and marks what it finds (installing → installed) and what it
no longer finds (removing → removed). Polling the listing was chosen over an ack that
policy would publish: it needs nothing new in policy (no topic, producer or consumer
with failure modes of their own), reads PostgreSQL, which is what every policy replica
loads, and asking twice is harmless.

Retry: a grant still unconfirmed `retry_after` after its change has its event marked
unsent in the outbox, so the relay publishes it again (policy, keyed by request id,
applies it once); this repeats every `retry_after` until policy confirms. The relay
itself retries until the broker has the event, and policy's consumer until PostgreSQL
has the override; this covers an event lost past those.

Failure: policy unreachable leaves everything as it is, tried again at the next pass.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from datetime import datetime, timedelta

import asyncpg

from services.requests.reconciler import utc_now
from services.requests.sources import OverrideSource, Unreachable
from services.requests.stores.requests import RequestStore

log = logging.getLogger("qm.requests.confirm")


class Confirmer:
    """Marks grants confirmed from `policy`'s overrides every `every` seconds, and
    republishes the event of one unconfirmed after `retry_after`."""

    def __init__(
        self,
        store: RequestStore,
        policy: OverrideSource,
        every: float = 5.0,
        retry_after: timedelta = timedelta(seconds=60),
        clock: Callable[[], datetime] = utc_now,
    ) -> None:
        self._store = store
        self._policy = policy
        self._every = every
        self._retry_after = retry_after
        self._clock = clock
        self.confirmed = 0
        self.resent = 0
        self._last_sent: dict[str, datetime] = {}
        self.stopping = False

    async def pass_once(self) -> int:
        """One pass; how many grants it confirmed. Raises Unreachable when policy can't
        answer (nothing changed)."""
        waiting = await self._store.unconfirmed()
        if not waiting:
            return 0
        granted = await self._policy.granted()
        installed = [u.request_id for u in waiting
                     if u.status == "installing" and u.request_id in granted]  # fmt: skip
        removed = [u.request_id for u in waiting
                   if u.status == "removing" and u.request_id not in granted]  # fmt: skip
        made = await self._store.confirm(installed, "installing", "installed")
        made += await self._store.confirm(removed, "removing", "removed")
        done = set(installed) | set(removed)
        now = self._clock()
        # When each event was last (re)sent: kept only for grants still waiting.
        self._last_sent = {u.event_id: self._last_sent.get(u.event_id, u.since)
                           for u in waiting if u.request_id not in done}  # fmt: skip
        late = [u for u in waiting if u.event_id in self._last_sent
                and now - self._last_sent[u.event_id] >= self._retry_after]  # fmt: skip
        if late:
            self.resent += await self._store.resend([u.event_id for u in late])
            for u in late:
                self._last_sent[u.event_id] = now
            names = ", ".join(u.request_id for u in late[:10])
            log.warning(
                "policy has not confirmed %d grant(s): events sent again: %s", len(late), names
            )
        self.confirmed += made
        return made

    async def run(self) -> None:
        """Until `stopping`: a failed pass is retried after `every` seconds, an
        unexpected one logged at ERROR with its traceback, so the loop never ends alone."""
        while not self.stopping:
            try:
                await self.pass_once()
            except (Unreachable, OSError, asyncpg.PostgresError) as exc:
                log.warning("confirmation pass failed, retrying: %s", exc)
            except Exception:
                log.exception("confirmation pass failed unexpectedly, retrying")
            await asyncio.sleep(self._every)
