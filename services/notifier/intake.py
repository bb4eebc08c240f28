"""Reading intents (qm.notifications.v1) and request events (qm.requests.v1) into
delivery records, in one consumer group the replicas share.

Each record is planned (who, by which channels, saying what) and its deliveries are
inserted if absent; only then is its offset committed (GroupConsumer), so a replica
killed in between leaves the record to be read again, and the second reading inserts
nothing new: a redelivered intent is still delivered once.

Failure: a record that can't be read (bad protobuf, missing fields) is logged and its
offset committed, never stopping the records after it. While Postgres or policy's
directory can't be reached, the same record is tried again every `retry_seconds`
(the partition waits: its later records must not overtake it).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterable

import asyncpg
from confluent_kafka import Message as KafkaMessage
from google.protobuf.message import DecodeError

from quartermaster.consumers import GroupConsumer
from quartermaster.directory_client import DirectoryClient, DirectoryRequestError
from quartermaster.topics import Topic
from quartermaster.v1 import notifications_pb2, requests_pb2
from services.notifier.audience import Person
from services.notifier.mapping import fact_of, intent_of, person_of
from services.notifier.plan import Audience, Plan, Preference, plan_intent, plan_request
from services.notifier.render import Style
from services.notifier.stores.deliveries import DeliveryStore
from services.notifier.stores.people import PreferenceStore

log = logging.getLogger("qm.notifier.intake")
PEOPLE_TTL_S = 300.0


class People:
    """Directory entries by user id, cached for PEOPLE_TTL_S (a changed Slack id or
    manager is seen within minutes). An unknown user is None (still planned: their
    delivery fails naming the missing address); DirectoryUnavailable propagates."""

    def __init__(self, directory: DirectoryClient) -> None:
        self._directory = directory
        self._cache: dict[str, tuple[float, Person | None]] = {}

    async def get(self, user_id: str) -> Person | None:
        hit = self._cache.get(user_id)
        if hit is not None and time.monotonic() - hit[0] < PEOPLE_TTL_S:
            return hit[1]
        try:
            person: Person | None = person_of(await self._directory.get_user(user_id))
        except DirectoryRequestError:
            person = None
        self._cache[user_id] = (time.monotonic(), person)
        return person


class Intake:
    """Plans each record and records its deliveries (see the module docstring)."""

    def __init__(
        self, store: DeliveryStore, preferences: PreferenceStore, people: People,
        default: Preference, available: Iterable[str], style: Style,
        retry_seconds: float = 1.0,
    ) -> None:  # fmt: skip
        self._store = store
        self._prefs = preferences
        self._people = people
        self._default = default
        self._available = frozenset(available)
        self._style = style
        self._retry = retry_seconds
        self.recorded = 0
        self.rejected = 0

    async def _audience(self, user_ids: Iterable[str]) -> Audience:
        ids = list(dict.fromkeys(u for u in user_ids if u))
        people = {}
        for u in ids:
            p = await self._people.get(u)
            if p is not None:
                people[u] = p
        prefs = await self._prefs.of(ids)
        return Audience(people, prefs, self._default, self._available)

    async def plan(self, topic: str, value: bytes) -> Plan:
        """The plan of one record's value (nothing for another workspace's record);
        ValueError (or DecodeError) when bad."""
        if topic == Topic.NOTIFICATIONS.value:
            note = notifications_pb2.Notification.FromString(value)
            if note.workspace_id != self._store.workspace_id:
                return Plan([], [])  # another deployment's: the topics may be shared
            intent = intent_of(note)
            first = await self._people.get(intent.recipient_user_id)
            users = [intent.recipient_user_id, first.manager_id if first else ""]
            return plan_intent(intent, await self._audience(users), self._style)
        event = requests_pb2.RequestEvent.FromString(value)
        if event.request.workspace_id != self._store.workspace_id:
            return Plan([], [])
        fact = fact_of(event)
        users = [fact.requester, fact.actor, *fact.approvers]
        return plan_request(fact, await self._audience(users), self._style)

    async def handle(self, msg: KafkaMessage) -> None:
        """GroupConsumer's handler: plan and record, trying transient failures again."""
        topic, value = msg.topic() or "", msg.value() or b""
        try:
            while True:
                try:
                    plan = await self.plan(topic, value)
                    self.recorded += await self._store.record(plan)
                    return
                except (OSError, asyncpg.PostgresError) as exc:
                    # DirectoryUnavailable is a ConnectionError, an OSError
                    log.warning("%s record at offset %s not recorded yet (tried again): %s",
                                topic, msg.offset(), exc)  # fmt: skip
                    await asyncio.sleep(self._retry)
        except (ValueError, DecodeError) as exc:
            self.rejected += 1
            log.warning("skipping %s record at partition %s offset %s: %s",
                        topic, msg.partition(), msg.offset(), exc)  # fmt: skip


async def _no_dlq(msg: KafkaMessage, exc: Exception) -> None:
    log.error("%s record at offset %s failed unexpectedly (skipped): %r",
              msg.topic(), msg.offset(), exc)  # fmt: skip


def consumer(
    intake: Intake, bootstrap: str, group_id: str, session_timeout_s: int = 10
) -> GroupConsumer:
    """The group consumer of both topics, committing after `intake.handle`."""
    return GroupConsumer(
        bootstrap, [Topic.NOTIFICATIONS.value, Topic.REQUESTS.value], group_id,
        intake.handle, _no_dlq, **{"session.timeout.ms": session_timeout_s * 1000,
                                   "heartbeat.interval.ms": 500},
    )  # fmt: skip
