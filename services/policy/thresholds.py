"""policy's two event loops beside the RPCs.

ThresholdWatch: as totals arrive, a person (or a pooled group) crossing 50/80/100 %
(QM_POLICY_THRESHOLDS) of their budget gets one notification intent per period on
`qm.notifications.v1`, however many events pushed them over and however many
replicas saw it: each crossing is claimed in Postgres (insert-or-nothing) first.

Approvals: `request.approved` events on `qm.requests.v1` install the additive
override the approval carries. The override is keyed by request_id, so a
redelivered or duplicated event changes nothing. Every replica reads the whole
topic from its beginning (no consumer group: no joins, leaves or rebalances to wait
for; approvals are few) and the first to install an approval wins; a replay finds
each one already there with one indexed read.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from datetime import UTC, datetime, timedelta
from typing import TypeVar

import asyncpg
from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, Message, TopicPartition

from quartermaster import kafka
from quartermaster.money import credits
from quartermaster.topics import CONTENT_TYPE, PROTOBUF, Topic
from quartermaster.v1 import notifications_pb2, requests_pb2
from quartermaster.wire import timestamp
from services.policy import store
from services.policy.rules import NoLimit, Override
from services.policy.service import Evaluator

log = logging.getLogger("qm.policy.events")
APPROVED = "request.approved"
APPROVALS_ACTOR = "requests-service"


T = TypeVar("T")


async def take_all(queue: asyncio.Queue[T]) -> list[T]:
    """Wait for one item, then take every item already queued behind it (work that
    arrives from another thread in bursts is done once per burst)."""
    out = [await queue.get()]
    while not queue.empty():
        out.append(queue.get_nowait())
    return out


class ThresholdWatch:
    def __init__(
        self,
        evaluator: Evaluator,
        pool: asyncpg.Pool,
        workspace_id: str,
        bootstrap: str,
        percents: tuple[int, ...],
    ) -> None:
        self._ev = evaluator
        self._pool = pool
        self._ws = workspace_id
        self._percents = percents
        self._publisher = kafka.Publisher(bootstrap)
        self._queue: asyncio.Queue[str] = asyncio.Queue()
        self._loop = asyncio.get_running_loop()
        # (subject, period_key, percent) already claimed here or by another replica
        self._known: set[tuple[str, str, int]] = set()
        self.published = 0

    def changed(self, user_id: str, _period_key: str) -> None:
        """Called by the totals consumer thread for every new total."""
        self._loop.call_soon_threadsafe(self._queue.put_nowait, user_id)

    async def run(self) -> None:
        while True:
            users = set(await take_all(self._queue))
            for user in users:
                try:
                    await self._check(user)
                except (OSError, asyncpg.PostgresError) as exc:
                    log.warning("threshold check for %s failed (retried on its next total): %s",
                                user, exc)  # fmt: skip

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
        snap = self._ev.limits.snapshot
        for g, rule in resolved.pools:
            key = self._ev.period(rule.period, now).key
            group = snap.groups.get(g)
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
            if await store.claim_notice(self._pool, self._ws, subject, period_key, p):
                claimed.append(p)
            self._known.add((subject, period_key, p))
        if not claimed:
            return
        top = max(claimed)  # jumping 0 → 100 % says so once, not three times
        notes = [
            self._note(subject, r, top, used, limit, period_key, what, source) for r in recipients
        ]
        try:
            await self._publish(notes)
        except Exception:
            # Give the crossing back, so the next total tries again.
            for p in claimed:
                self._known.discard((subject, period_key, p))
            await self._pool.execute(
                "DELETE FROM policy.threshold_notices WHERE workspace_id = $1 AND subject = $2"
                " AND period_key = $3 AND percent = ANY($4)",
                self._ws, subject, period_key, claimed,
            )  # fmt: skip
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
        return notifications_pb2.Notification(
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
            created_at=timestamp(datetime.now(UTC)),
        )

    async def _publish(self, notes: list[notifications_pb2.Notification]) -> None:
        headers: list[tuple[str, str | bytes | None]] = [(CONTENT_TYPE, PROTOBUF.encode())]
        await self._publisher.send(
            [
                (
                    Topic.NOTIFICATIONS.value,
                    n.recipient_user_id.encode(),
                    n.SerializeToString(),
                    headers,
                )
                for n in notes
            ]
        )
        self.published += len(notes)

    def close(self) -> None:
        self._publisher.close()


def override_of(event: requests_pb2.RequestEvent) -> Override:
    """The additive override an approval carries; ValueError names what is missing."""
    req = event.request
    problems = []
    if not req.request_id:
        problems.append("request.request_id: empty")
    if not req.requester_user_id:
        problems.append("request.requester_user_id: empty")
    if req.amount_micros <= 0:
        problems.append("request.amount_micros: must be positive")
    starts = (
        event.override_starts_at.ToDatetime(tzinfo=UTC)
        if event.HasField("override_starts_at")
        else event.occurred_at.ToDatetime(tzinfo=UTC)
    )
    if event.HasField("override_expires_at"):
        expires = event.override_expires_at.ToDatetime(tzinfo=UTC)
    elif req.duration_seconds > 0:
        expires = starts + timedelta(seconds=req.duration_seconds)
    else:
        problems.append("override_expires_at: missing, and request.duration_seconds is 0")
        expires = starts
    if not problems and expires <= starts:
        problems.append("override_expires_at: not after override_starts_at")
    if problems:
        raise ValueError("; ".join(problems))
    why = req.justification.strip() or "no justification given"
    return Override(
        override_id=f"req-{req.request_id}"[:256],
        user_id=req.requester_user_id,
        additive=True,
        micros=req.amount_micros,
        period=None,
        enforcement=None,
        granted_by=event.actor_user_id or req.approver_user_id or APPROVALS_ACTOR,
        reason=f"approved credit request {req.request_id}: {why}"[:2000],
        starts_at=starts,
        expires_at=expires,
        review_at=None,
        request_id=req.request_id,
    )


class Approvals:
    def __init__(self, pool: asyncpg.Pool, workspace_id: str, bootstrap: str) -> None:
        self._pool = pool
        self._ws = workspace_id
        self._bootstrap = bootstrap
        self._consumer = Consumer({
            "bootstrap.servers": bootstrap,
            # Required by the client even without group membership; never committed.
            "group.id": f"qm-policy-approvals-{uuid.uuid4()}",
            "enable.auto.commit": False,
            "fetch.wait.max.ms": 50,
        })  # fmt: skip
        self.installed = 0
        self.repeated = 0
        self.rejected = 0
        self.stopping = False

    async def run(self) -> None:
        """Until `stopping`; then closes the consumer (never while a poll runs)."""
        try:
            topic = Topic.REQUESTS.value
            meta = await asyncio.to_thread(self._consumer.list_topics, topic, 30)
            self._consumer.assign(
                [TopicPartition(topic, p, OFFSET_BEGINNING) for p in meta.topics[topic].partitions]
            )
            await self._consume()
        finally:
            self._consumer.close()

    async def _consume(self) -> None:
        while not self.stopping:
            msg: Message | None = await asyncio.to_thread(self._consumer.poll, 0.2)
            if msg is None:
                continue
            err = msg.error()
            if err is not None:
                if err.code() != KafkaError._PARTITION_EOF:
                    log.warning("requests consumer: %s", err)
                continue
            while True:
                try:
                    await self._handle(msg)
                    break
                except (OSError, asyncpg.PostgresError) as exc:
                    # Postgres away: keep the offset, try the same event again.
                    if self.stopping:
                        return
                    log.warning("could not install an approval, retrying: %s", exc)
                    await asyncio.sleep(1)

    async def _handle(self, msg: Message) -> None:
        event = requests_pb2.RequestEvent()
        try:
            event.ParseFromString(msg.value() or b"")
        except Exception:
            self.rejected += 1
            log.warning("qm.requests.v1 offset %s: not a RequestEvent; skipped", msg.offset())
            return
        if event.type != APPROVED or event.request.workspace_id not in ("", self._ws):
            return
        try:
            override = override_of(event)
        except ValueError as exc:
            self.rejected += 1
            log.warning("approval %s can't be installed: %s", event.event_id, exc)
            return
        if await self._pool.fetchval(
            "SELECT 1 FROM policy.overrides WHERE workspace_id = $1 AND request_id = $2",
            self._ws,
            override.request_id,
        ):
            self.repeated += 1
            return
        _, created = await store.set_override(self._pool, self._ws, override, APPROVALS_ACTOR)
        if created:
            self.installed += 1
            log.info("installed %s for %s (+%s credits until %s)", override.override_id,
                     override.user_id, credits(override.micros), override.expires_at)  # fmt: skip
        else:
            self.repeated += 1
