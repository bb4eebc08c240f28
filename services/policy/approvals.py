"""Approvals: `request.approved` events on `qm.requests.v1` install the additive
override the approval carries; `request.revoked` and `request.ended` remove that one
override (other grants of the same person stay: approved requests stack).

The override is keyed by request_id, so a redelivered or duplicated event changes
nothing: an approval finds its override there (removed or not) and a removal finds it
removed already. Every replica reads the whole topic from its beginning
(quartermaster.consumers.ReplayConsumer: no consumer group, no joins, leaves or
rebalances to wait for; approvals are few) and the first to install an approval
wins; a replay finds each one already there with one indexed read.

Failure: while Postgres is away the same event is tried again every second (its
offset is kept); an event that can't be an override is logged and skipped; while the
broker can't list the topic's partitions, that is tried again.

Readiness (part "approvals"): waiting until every partition was read to its end once,
so no replica denies a user the credit an approval already granted.
"""

from __future__ import annotations

import asyncio
import logging
from datetime import timedelta

from confluent_kafka import KafkaException, Message

from quartermaster.consumers import ReplayConsumer
from quartermaster.db import RETRIED_NEXT_ROUND, outage_text
from quartermaster.money import credits
from quartermaster.topics import Topic
from quartermaster.v1 import requests_pb2
from quartermaster.validation import MAX_ID_LENGTH
from quartermaster.wire import from_timestamp
from quartermaster.workspaces import ForeignRecords
from services.policy.errors import NotFound
from services.policy.inputs import MAX_REASON
from services.policy.readiness import Readiness
from services.policy.rules import Override
from services.policy.stores.limits import LimitStore

log = logging.getLogger("qm.policy.approvals")
APPROVED = "request.approved"
# A grant ended early by a person, or at its end (the override also lapses by itself
# then; removing it too keeps policy's view the requests service's).
ENDING = ("request.revoked", "request.ended")
APPROVALS_ACTOR = "requests-service"
PART = "approvals"


def override_of(event: requests_pb2.RequestEvent) -> Override:
    """The additive override an approval carries; ValueError names what is missing."""
    req = event.request
    problems = []
    if not req.request_id:
        problems.append("request.request_id: empty")
    if not req.requester_user_id:
        problems.append("request.requester_user_id: empty")
    # Events of schema_version 1 carry what was granted, which may be less than asked.
    micros = req.granted_micros or req.amount_micros
    if micros <= 0:
        problems.append("request.amount_micros: must be positive")
    starts = (
        from_timestamp(event.override_starts_at)
        if event.HasField("override_starts_at")
        else from_timestamp(event.occurred_at)
    )
    if event.HasField("override_expires_at"):
        expires = from_timestamp(event.override_expires_at)
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
        override_id=f"req-{req.request_id}"[:MAX_ID_LENGTH],
        user_id=req.requester_user_id,
        additive=True,
        micros=micros,
        period=None,
        enforcement=None,
        granted_by=event.actor_user_id or req.approver_user_id or APPROVALS_ACTOR,
        reason=f"approved credit request {req.request_id}: {why}"[:MAX_REASON],
        starts_at=starts,
        expires_at=expires,
        review_at=None,
        request_id=req.request_id,
    )


class Approvals:
    """Installs approved requests' overrides through a LimitStore."""

    def __init__(
        self, limits: LimitStore, bootstrap: str, readiness: Readiness | None = None
    ) -> None:
        self._limits = limits
        self._ws = limits.workspace_id
        # Request events of another workspace (the topic may be shared; "" is this
        # one's) are skipped, counted and said once per workspace: installed, they
        # would grant one of their people's credits to one of ours.
        self.foreign = ForeignRecords(self._ws, "qm.requests.v1 (policy approvals)", log)
        self._consumer = ReplayConsumer(
            bootstrap, Topic.REQUESTS.value, "policy-approvals", fetch_wait_ms=50
        )
        self.installed = 0
        self.removed = 0
        self.repeated = 0
        self.rejected = 0
        self.stopping = False
        self._readiness = readiness or Readiness()
        self._readiness.waiting(PART, lambda: f"reading {Topic.REQUESTS.value} to its end")

    async def run(self) -> None:
        """Until `stopping`; then closes the consumer (never while a poll runs)."""
        try:
            await self._assign()
            known = False
            while not self.stopping:
                msg = await asyncio.to_thread(self._consumer.poll, 0.2)
                if msg is not None:
                    await self._until_handled(msg)
                if not known and self._consumer.caught_up.is_set():
                    known = True
                    self._readiness.known(PART)
        finally:
            self._consumer.close()

    async def _assign(self) -> None:
        delay = 0.1
        while not self.stopping:
            try:
                await asyncio.to_thread(self._consumer.assign)
                return
            except (KafkaException, RuntimeError) as exc:  # broker away, or no topic yet
                log.warning("can't list %s's partitions yet: %s", Topic.REQUESTS.value, exc)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)

    async def _until_handled(self, msg: Message) -> None:
        while not self.stopping:
            try:
                await self._handle(msg)
                return
            except RETRIED_NEXT_ROUND as exc:
                # Postgres away: keep the offset, try the same event again.
                log.warning("could not install an approval, retrying: %s", outage_text(exc))
                await asyncio.sleep(1)

    async def _handle(self, msg: Message) -> None:
        event = requests_pb2.RequestEvent()
        try:
            event.ParseFromString(msg.value() or b"")
        except Exception:
            self.rejected += 1
            log.warning("qm.requests.v1 offset %s: not a RequestEvent; skipped", msg.offset())
            return
        if self.foreign.foreign(event.request.workspace_id):
            return
        if event.type in ENDING:
            await self._remove(event)
            return
        if event.type != APPROVED:
            return
        try:
            override = override_of(event)
        except ValueError as exc:
            self.rejected += 1
            log.warning("approval %s can't be installed: %s", event.event_id, exc)
            return
        assert override.request_id is not None
        if await self._limits.has_override_for(override.request_id):
            self.repeated += 1
            return
        _, created = await self._limits.set_override(override, APPROVALS_ACTOR)
        if created:
            self.installed += 1
            log.info("installed %s for %s (+%s credits until %s)", override.override_id,
                     override.user_id, credits(override.micros), override.expires_at)  # fmt: skip
        else:
            self.repeated += 1

    async def _remove(self, event: requests_pb2.RequestEvent) -> None:
        """Remove the override of a revoked or ended grant; already gone: nothing to do."""
        request_id = event.request.request_id
        if not request_id:
            self.rejected += 1
            log.warning("%s %s has no request.request_id; skipped", event.type, event.event_id)
            return
        why = f"{event.type} by {event.actor_user_id or APPROVALS_ACTOR}: {event.note}"
        try:
            await self._limits.remove_override(
                f"req-{request_id}"[:MAX_ID_LENGTH], why[:MAX_REASON], APPROVALS_ACTOR
            )
        except NotFound:
            self.repeated += 1
            return
        self.removed += 1
        log.info("removed req-%s (%s)", request_id, event.type)
