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

A row the producer or broker refuses for good (quartermaster.kafka.RECORD_ERRORS: too
large, invalid) is set aside (OutboxStore.set_aside: marked with the reason, logged at
ERROR, counted in qm_requests_outbox_set_aside) and the relay goes on with the next:
one such row once ended the relay task, in every replica that read it, and no later
event was published. A broker refuses a batch of one partition together, so a
refused row is tried again alone before it is set aside. Anything unexpected is logged
with its traceback and the batch tried again after RETRY_SECONDS: the loop ends only
when `stopping`.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Protocol

from opentelemetry import metrics

from quartermaster.db import RETRIED_NEXT_ROUND, outage_text
from quartermaster.kafka import OutRecord
from quartermaster.topics import CONTENT_TYPE, PROTOBUF
from services.requests.stores.outbox import OutboxRecord, OutboxStore

log = logging.getLogger("qm.requests.relay")
EVENT_ID_HEADER = "qm-event-id"
RETRY_SECONDS = 1.0
_SET_ASIDE = metrics.get_meter("qm.requests").create_counter(
    "qm_requests_outbox_set_aside",
    description="Outbox events set aside, never to be published: the broker refuses them "
    "for good (by the error's name, e.g. MSG_SIZE_TOO_LARGE)",
)


class Publishing(Protocol):
    """What the relay publishes with (quartermaster.publisher.Publisher)."""

    async def deliver(self, records: list[OutRecord]) -> list[str]:
        """Per record, "" delivered or why it is refused for good; OSError to retry."""
        ...


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
        self.set_aside = 0
        self.stopping = False

    async def _held(self, where: str, rows: list[OutboxRecord]) -> None:
        if self._hold == where:
            log.warning("relay holding %s of %d event(s): %s", where, len(rows),
                        ",".join(r.event_id for r in rows))  # fmt: skip
            await asyncio.Event().wait()  # until the test kills the process

    async def publish_once(self) -> int:
        """Publish one batch and mark it sent, setting aside each row refused for good;
        how many rows it had (sent or set aside). Raises OSError (Kafka) or asyncpg
        errors (PostgreSQL): nothing is marked then."""
        rows = await self._outbox.unsent(self._batch)
        if not rows:
            return 0
        await self._held("after_read", rows)
        refused = await self._publisher.deliver([record_of(r) for r in rows])
        if len(rows) > 1:
            for i, why in enumerate(refused):
                if why:  # its batch may have been refused for another row: alone now
                    refused[i] = (await self._publisher.deliver([record_of(rows[i])]))[0]
        await self._held("after_publish", rows)
        await self._outbox.mark_sent([r.id for r, why in zip(rows, refused, strict=True)
                                      if not why])  # fmt: skip
        for row, why in zip(rows, refused, strict=True):
            if why:
                await self._outbox.set_aside(row.id, why)
                self.set_aside += 1
                _SET_ASIDE.add(1, {"reason": why.split(":", 1)[0]})
                log.error("event %s (%d bytes) set aside, never to be published: the "
                          "broker refuses it: %s", row.event_id, len(row.payload), why)  # fmt: skip
        sent = sum(1 for why in refused if not why)
        self.published += sent
        log.info("published %d event(s), up to %s", sent, rows[-1].event_id)
        return len(rows)

    async def run(self) -> None:
        """Until `stopping`: an outage is retried after RETRY_SECONDS, and so is anything
        unexpected (logged at ERROR with its traceback), so the loop never ends alone."""
        while not self.stopping:
            try:
                sent = await self.publish_once()
            except RETRIED_NEXT_ROUND as exc:
                log.warning("relay could not publish, retrying: %s", outage_text(exc))
                await asyncio.sleep(RETRY_SECONDS)
                continue
            except Exception:
                log.exception("relay failed unexpectedly, retrying in %.0f s", RETRY_SECONDS)
                await asyncio.sleep(RETRY_SECONDS)
                continue
            if sent == 0:
                await asyncio.sleep(self._poll)
