"""Reading intents (qm.notifications.v1) and request events (qm.requests.v1) into
delivery records, in one consumer group the replicas share.

Each batch of records is planned (who, by which channels, saying what) and its
deliveries are inserted if absent in one transaction; only then are the offsets
committed, so a replica killed in between leaves the records to be read again, and
the second reading inserts nothing new: a redelivered intent is still delivered once.

Failure: a record that can't be read (bad protobuf, missing fields) is logged and
left out, never stopping the records beside it. While Postgres or policy's directory
can't be reached, the same batch is tried again every `retry_seconds` (the
partitions wait: later records must not overtake it).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterable, Mapping
from typing import Protocol

from confluent_kafka import Consumer, KafkaError, KafkaException
from confluent_kafka import Message as KafkaMessage
from google.protobuf.message import DecodeError

from quartermaster import kafka
from quartermaster.db import RETRIED_NEXT_ROUND, outage_text
from quartermaster.directory_client import DirectoryClient, DirectoryRequestError
from quartermaster.topics import Topic
from quartermaster.v1 import notifications_pb2, requests_pb2
from quartermaster.workspaces import ForeignRecords
from services.notifier.audience import Intent, Person
from services.notifier.mapping import fact_of, intent_of, person_of
from services.notifier.plan import Audience, Plan, Preference, plan_intent, plan_request
from services.notifier.render import Style
from services.notifier.stores.deliveries import DeliveryStore
from services.notifier.stores.people import PreferenceStore
from services.notifier.stores.webhooks import WebhookGate

log = logging.getLogger("qm.notifier.intake")
PEOPLE_TTL_S = 300.0
# A changed preference applies within this long (read once per person per interval).
PREFS_TTL_S = 30.0


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


class ClickPeople:
    """Who clicked a Slack button, as interactivity asks (its `People`): policy's
    DirectoryService.FindUser by Slack id, or by e-mail. None when the directory
    knows nobody so; DirectoryUnavailable propagates (the clicker is told to retry)."""

    def __init__(self, directory: DirectoryClient) -> None:
        self._directory = directory

    async def by_slack_id(self, slack_user_id: str) -> str | None:
        return await self._find(slack_user_id=slack_user_id)

    async def by_email(self, email: str) -> str | None:
        return await self._find(email=email)

    async def _find(self, slack_user_id: str = "", email: str = "") -> str | None:
        try:
            user = await self._directory.find_user(slack_user_id=slack_user_id, email=email)
        except DirectoryRequestError:
            return None
        return user.user_id or None


class Drivers(Protocol):
    """Adds what drove a person's spend to their threshold intent (`drivers.SpendDrivers`);
    never raises for an unreachable source: the intent comes back as it was."""

    async def add_to(self, intent: Intent) -> Intent: ...


class Intake:
    """Plans each record and records its deliveries (see the module docstring).
    `webhooks` (name → URL) hear of every record, those `gate` says are disabled
    left out; `drivers`, when given, adds the top product and model to threshold
    intents before they are planned."""

    def __init__(
        self, store: DeliveryStore, preferences: PreferenceStore, people: People,
        default: Preference, available: Iterable[str], style: Style,
        retry_seconds: float = 1.0, webhooks: Mapping[str, str] | None = None,
        gate: WebhookGate | None = None, drivers: Drivers | None = None,
    ) -> None:  # fmt: skip
        self._drivers = drivers
        self._store = store
        self._prefs = preferences
        self._people = people
        self._default = default
        self._available = frozenset(available)
        self._style = style
        self._retry = retry_seconds
        self._webhooks = dict(webhooks or {})
        self._gate = gate
        self._pref_cache: dict[str, tuple[float, Preference | None]] = {}
        self.recorded = 0
        self.rejected = 0
        # Both topics may be shared with other deployments: their records are
        # skipped, counted and said once per workspace. An intent or request event
        # naming no workspace was never this notifier's to send (kept so).
        ws = store.workspace_id
        self.foreign_notes = ForeignRecords(ws, "qm.notifications.v1 (notifier)", log, False)
        self.foreign_requests = ForeignRecords(ws, "qm.requests.v1 (notifier)", log, False)

    async def audience(self, user_ids: Iterable[str]) -> Audience:
        """What planning needs to know of these people (directory, preferences)."""
        ids = list(dict.fromkeys(u for u in user_ids if u))
        people = {}
        for u in ids:
            p = await self._people.get(u)
            if p is not None:
                people[u] = p
        hooks = self._webhooks
        if hooks and self._gate is not None:
            off = await self._gate.disabled()
            hooks = {n: url for n, url in hooks.items() if n not in off}
        prefs = await self._preferences(ids)
        return Audience(people, prefs, self._default, self._available, hooks)

    async def _preferences(self, ids: list[str]) -> dict[str, Preference]:
        now = time.monotonic()
        stale = [u for u in ids if now - self._pref_cache.get(u, (-1e18, None))[0] > PREFS_TTL_S]
        if stale:
            found = await self._prefs.of(stale)
            for u in stale:
                self._pref_cache[u] = (now, found.get(u))
        out = {}
        for u in ids:
            pref = self._pref_cache[u][1]
            if pref is not None:
                out[u] = pref
        return out

    async def plan(self, topic: str, value: bytes) -> Plan:
        """The plan of one record's value (nothing for another workspace's record);
        ValueError (or DecodeError) when bad."""
        if topic == Topic.NOTIFICATIONS.value:
            note = notifications_pb2.Notification.FromString(value)
            if self.foreign_notes.foreign(note.workspace_id):
                return Plan([], [])  # another deployment's: the topics may be shared
            intent = intent_of(note)
            if self._drivers is not None:
                intent = await self._drivers.add_to(intent)
            first = await self._people.get(intent.recipient_user_id)
            users = [intent.recipient_user_id, first.manager_id if first else ""]
            return plan_intent(intent, await self.audience(users), self._style)
        event = requests_pb2.RequestEvent.FromString(value)
        if self.foreign_requests.foreign(event.request.workspace_id):
            return Plan([], [])
        fact = fact_of(event)
        users = [fact.requester, fact.actor, *fact.approvers]
        return plan_request(fact, await self.audience(users), self._style)

    async def _plan_one(self, msg: KafkaMessage) -> Plan:
        topic = msg.topic() or ""
        try:
            return await self.plan(topic, msg.value() or b"")
        except (ValueError, DecodeError) as exc:
            self.rejected += 1
            log.warning("skipping %s record at partition %s offset %s: %s",
                        topic, msg.partition(), msg.offset(), exc)  # fmt: skip
            return Plan([], [])
        except RETRIED_NEXT_ROUND:
            raise  # transient: the batch is tried again
        except Exception:  # a bug planning one record must not stop the others
            self.rejected += 1
            log.exception("skipping %s record at partition %s offset %s", topic,
                          msg.partition(), msg.offset())  # fmt: skip
            return Plan([], [])

    async def handle(self, msgs: list[KafkaMessage]) -> None:
        """Plan every record and record all their deliveries in one transaction; a bad
        record is logged and left out; transient failures are tried again."""
        while True:
            try:
                plans = [await self._plan_one(m) for m in msgs]
                merged = Plan([d for p in plans for d in p.deliveries],
                              [q for p in plans for q in p.digest])  # fmt: skip
                self.recorded += await self._store.record(merged)
                return
            except RETRIED_NEXT_ROUND as exc:
                # DirectoryUnavailable is a ConnectionError, an OSError
                log.warning("%d record(s) not recorded yet (tried again in %s s): %s",
                            len(msgs), self._retry, outage_text(exc))  # fmt: skip
                await asyncio.sleep(self._retry)


class BatchConsumer:
    """A consumer group member of both topics that takes what is there (up to
    `max_batch` records), has `intake` record it, then commits the offsets, each
    batch in turn. Auto-commit is off: a replica killed before its commit leaves the
    batch to whoever gets the partitions next, whose insert-if-absent adds nothing.

    Failure: a commit refused (the partitions moved to another replica meanwhile) is
    logged; the records are read again there, harmlessly.
    """

    def __init__(
        self, intake: Intake, bootstrap: str, group_id: str, session_timeout_s: int = 10,
        max_batch: int = 500,
    ) -> None:  # fmt: skip
        self._intake = intake
        self._max = max_batch
        self._consumer = Consumer(kafka.client_config(bootstrap, **{
            "group.id": group_id, "enable.auto.commit": False, "auto.offset.reset": "earliest",
            "allow.auto.create.topics": False,
            "session.timeout.ms": session_timeout_s * 1000, "heartbeat.interval.ms": 500,
        }))  # fmt: skip
        self._consumer.subscribe([Topic.NOTIFICATIONS.value, Topic.REQUESTS.value])
        self.stopping = False
        self.batches = 0

    async def run(self) -> None:
        """Until `stopping`; then closes the consumer (never while a poll runs)."""
        try:
            while not self.stopping:
                msgs = await asyncio.to_thread(self._consumer.consume, self._max, 0.2)
                data = []
                for m in msgs:
                    err = m.error()
                    if err is None:
                        data.append(m)
                    elif err.code() != KafkaError._PARTITION_EOF:
                        log.warning("intake consumer: %s", err)
                if not data:
                    continue
                await self._intake.handle(data)
                self.batches += 1
                try:
                    await asyncio.to_thread(self._consumer.commit, asynchronous=False)
                except KafkaException as exc:
                    log.warning("offsets of %d record(s) not committed (read again by the"
                                " partitions' next owner): %s", len(data), exc)  # fmt: skip
        finally:
            self._consumer.close()
