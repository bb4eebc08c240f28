"""Threshold crossings: as totals arrive, a person (or a pooled group) crossing
50/80/100 % (QM_POLICY_THRESHOLDS) of their budget gets one notification intent per
period on `qm.notifications.v1`, however many events pushed them over and however
many replicas saw it: each crossing is claimed in Postgres (insert-or-nothing) first.

Failure: when publishing fails the claims are given back, so the next total that
shows the crossing tries again; when Postgres is away the person is looked at again
at their next total.
"""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime

from quartermaster.consumers import take_all
from quartermaster.db import RETRIED_NEXT_ROUND, outage_text
from quartermaster.money import credits
from quartermaster.notifications import NotificationPublisher, intent
from quartermaster.v1 import notifications_pb2
from services.policy.evaluator import Evaluator
from services.policy.rules import NoLimit
from services.policy.stores.notices import NoticeStore

log = logging.getLogger("qm.policy.thresholds")


class ThresholdWatch:
    """Looks at each person whose total changed, once `arm` was called (before that,
    while the totals are replayed at start, changes are ignored: a crossing missed
    while this replica was down is caught at the person's next total, since
    crossings compare absolute shares, not steps)."""

    def __init__(
        self,
        evaluator: Evaluator,
        notices: NoticeStore,
        publisher: NotificationPublisher,
        percents: tuple[int, ...],
        loop: asyncio.AbstractEventLoop,
    ) -> None:
        self._ev = evaluator
        self._notices = notices
        self._ws = notices.workspace_id
        self._percents = percents
        self._publisher = publisher
        self._queue: asyncio.Queue[str] = asyncio.Queue()
        self._loop = loop
        self._armed = False
        # (subject, period_key, percent) already claimed here or by another replica
        self._known: set[tuple[str, str, int]] = set()

    @property
    def published(self) -> int:
        return self._publisher.published

    def arm(self) -> None:
        self._armed = True

    def changed(self, user_id: str, _period_key: str) -> None:
        """Called by the totals consumer thread for every new total."""
        if self._armed:
            self._loop.call_soon_threadsafe(self._queue.put_nowait, user_id)

    async def run(self) -> None:
        while True:
            for user in set(await take_all(self._queue)):
                try:
                    await self._check(user)
                except RETRIED_NEXT_ROUND as exc:
                    log.warning("threshold check for %s failed (retried on its next total): %s",
                                user, outage_text(exc))  # fmt: skip

    async def _check(self, user_id: str) -> None:
        now = self._ev.clock()
        try:
            resolved = self._ev.resolve(user_id, now)
        except NoLimit:
            return
        limit = resolved.limit
        period = self._ev.period(limit.period, now)
        used = self._ev.totals.used(user_id, period.key)
        await self._cross(f"user:{user_id}", (user_id,), used, limit.micros, period.key,
                          f"your {limit.period}ly AI budget", limit.source)  # fmt: skip
        groups = self._ev.snapshot.groups
        for g, rule in resolved.pools:
            key = self._ev.period(rule.period, now).key
            group = groups.get(g)
            admins = group.admins if group is not None else ()
            used = self._ev.totals.pool_used(g, key)
            await self._cross(f"pool:{g}", admins, used, rule.micros, key,
                              f"the pooled budget of {g}", f"pool:{g}")  # fmt: skip

    async def _cross(
        self, subject: str, recipients: tuple[str, ...], used: int, limit: int, period_key: str,
        what: str, source: str,
    ) -> None:  # fmt: skip
        if limit <= 0 and used <= 0:
            return
        percent = used * 100 // limit if limit > 0 else 10**6
        crossed = [p for p in self._percents if percent >= p
                   and (subject, period_key, p) not in self._known]  # fmt: skip
        if not crossed:
            return
        claimed = []
        for p in crossed:
            if await self._notices.claim(subject, period_key, p):
                claimed.append(p)
            self._known.add((subject, period_key, p))
        if not claimed:
            return
        top = max(claimed)  # jumping 0 → 100 % says so once, not three times
        notes = [
            self._note(subject, r, top, used, limit, period_key, what, source) for r in recipients
        ]
        try:
            await self._publisher.publish(notes)
        except Exception:
            # Give the crossing back, so the next total tries again.
            for p in claimed:
                self._known.discard((subject, period_key, p))
            await self._notices.unclaim(subject, period_key, claimed)
            raise

    def _note(
        self, subject: str, recipient: str, percent: int, used: int, limit: int,
        period_key: str, what: str, source: str,
    ) -> notifications_pb2.Notification:  # fmt: skip
        if percent >= 100:
            title = f"You have used all of {what}"
            tail = " Ask for more credits if the work needs them."
        else:
            title = f"You have used {percent}% of {what}"
            tail = ""
        return intent(
            dedupe_key=f"threshold:{subject}:{period_key}:{percent}:{recipient}",
            kind=notifications_pb2.NOTIFICATION_KIND_THRESHOLD_CROSSED,
            workspace_id=self._ws,
            recipient_user_id=recipient,
            subject=title,
            body=f"{credits(used)} of {credits(limit)} credits used in {period_key}.{tail}",
            data={
                "subject": subject,
                "percent": str(percent),
                "used_micros": str(used),
                "limit_micros": str(limit),
                "period_key": period_key,
                "limit_source": source,
            },
            created_at=datetime.now(UTC),
        )
