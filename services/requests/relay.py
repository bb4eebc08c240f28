"""The outbox relay: publishes `requests.outbox` rows to Kafka (qm.requests.v1), then
marks them sent.

A change and its event commit together (services.requests.stores.requests); this loop
publishes afterwards, in the order they were written, and only then marks them sent.
What a crash does:
- between commit and publish: the rows are unsent, so the next relay publishes them;
- between publish and mark: the next relay publishes them again. The producer is
  idempotent (no duplicates from its own retries), and a republished event has the
  same event id; consumers dedupe on it (policy: on the request id), so the effect
  happens once.
While Kafka or PostgreSQL is away the same batch is tried again every second.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Protocol

import asyncpg

from quartermaster.kafka import OutRecord
from quartermaster.topics import CONTENT_TYPE, PROTOBUF
from services.requests.stores.outbox import OutboxRecord, OutboxStore

log = logging.getLogger("qm.requests.relay")
EVENT_ID_HEADER = "qm-event-id"
RETRY_SECONDS = 1.0


class Publishing(Protocol):
    """What the relay publishes with (quartermaster.kafka.Publisher)."""

    async def send(self, records: list[OutRecord]) -> None: ...


def record_of(row: OutboxRecord) -> OutRecord:
    """An outbox row as the Kafka record to send (its event id in a header too)."""
    headers: list[tuple[str, str | bytes | None]] = [
        (CONTENT_TYPE, PROTOBUF.encode()),
        (EVENT_ID_HEADER, row.event_id.encode()),
    ]
    return (row.topic, row.key, row.payload, headers)


class Relay:
    """Publishes the outbox in batches of `batch`, looking again every `poll_seconds`
    when it is empty. `hold` ("after_read" / "after_publish") is for the kill tests:
    the relay then stops for good at that point of its first batch, logging so."""

    def __init__(
        self,
        outbox: OutboxStore,
        publisher: Publishing,
        *,
        batch: int = 100,
        poll_seconds: float = 0.2,
        hold: str = "",
    ) -> None:
        self._outbox = outbox
        self._publisher = publisher
        self._batch = batch
        self._poll = poll_seconds
        self._hold = hold
        self.published = 0
        self.stopping = False

    async def _held(self, where: str, rows: list[OutboxRecord]) -> None:
        if self._hold == where:
            log.warning("relay holding %s of %d event(s): %s", where, len(rows),
                        ",".join(r.event_id for r in rows))  # fmt: skip
            await asyncio.Event().wait()  # until the test kills the process

    async def publish_once(self) -> int:
        """Publish one batch and mark it sent; how many events it had. Raises OSError
        (Kafka) or asyncpg errors (PostgreSQL): nothing is marked then."""
        rows = await self._outbox.unsent(self._batch)
        if not rows:
            return 0
        await self._held("after_read", rows)
        await self._publisher.send([record_of(r) for r in rows])
        await self._held("after_publish", rows)
        await self._outbox.mark_sent([r.id for r in rows])
        self.published += len(rows)
        log.info("published %d event(s), up to %s", len(rows), rows[-1].event_id)
        return len(rows)

    async def run(self) -> None:
        """Until `stopping`."""
        while not self.stopping:
            try:
                sent = await self.publish_once()
            except (OSError, asyncpg.PostgresError) as exc:
                log.warning("relay could not publish, retrying: %s", exc)
                await asyncio.sleep(RETRY_SECONDS)
                continue
            if sent == 0:
                await asyncio.sleep(self._poll)
