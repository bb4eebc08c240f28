"""Notification intents on `qm.notifications.v1`: one way to build them, one to publish.

Any service may announce that someone should hear of something (a threshold crossed, a
runaway agent, a request to decide); the notifier turns intents into deliveries. An
intent carries a dedupe key, so the same fact published twice (a replayed batch, two
replicas seeing one crossing) is delivered once: publishing is at-least-once by design.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime

from quartermaster.kafka import KeyedRecord
from quartermaster.publisher import Publisher
from quartermaster.topics import CONTENT_TYPE, PROTOBUF, Topic
from quartermaster.v1 import notifications_pb2
from quartermaster.wire import timestamp

_HEADERS: list[tuple[str, str | bytes | None]] = [(CONTENT_TYPE, PROTOBUF.encode())]


def intent(
    *,
    dedupe_key: str,
    kind: notifications_pb2.NotificationKind.ValueType,
    workspace_id: str,
    recipient_user_id: str,
    subject: str,
    body: str,
    data: Mapping[str, str],
    created_at: datetime,
) -> notifications_pb2.Notification:
    """A `Notification` message. `dedupe_key` names the fact (e.g.
    `threshold:user:alice:2026-11:80:alice`): the notifier delivers one message per
    (dedupe key, recipient, channel). `created_at` is an aware datetime."""
    return notifications_pb2.Notification(
        dedupe_key=dedupe_key,
        kind=kind,
        workspace_id=workspace_id,
        recipient_user_id=recipient_user_id,
        subject=subject,
        body=body,
        data=dict(data),
        created_at=timestamp(created_at),
    )


def record(note: notifications_pb2.Notification) -> KeyedRecord:
    """The Kafka record of an intent: keyed by recipient (one person's intents stay in
    order on one partition), protobuf value with its content-type header."""
    return (
        Topic.NOTIFICATIONS.value,
        note.recipient_user_id.encode(),
        note.SerializeToString(),
        _HEADERS,
    )


class NotificationPublisher:
    """Publishes intents through a shared `Publisher` and counts what it sent.

    `publish` returns once the broker has every record; it raises OSError (from
    `Publisher.send`) when any was not delivered, and the caller decides whether the
    fact is retried (its dedupe key makes a retry harmless) or only logged.
    """

    def __init__(self, publisher: Publisher) -> None:
        self._publisher = publisher
        self.published = 0

    async def publish(self, notes: Sequence[notifications_pb2.Notification]) -> None:
        if not notes:
            return
        await self._publisher.send([record(n) for n in notes])
        self.published += len(notes)
