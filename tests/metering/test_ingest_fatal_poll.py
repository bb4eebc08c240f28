"""A fatal error of the ingest's idempotent producer raised from `poll` replaces the
producer (it ended the thread that polls it, so the producer was never replaced).

confluent-kafka (2.16 here) raises a fatal error from `Producer.poll` as a KafkaException,
though the producer has an error callback (which is not called with it). Seen for real: a
local broker stopped for 10 s while bodies were posted, then started again, answered
the resent records UNKNOWN_PRODUCER_ID ("unable to retry without risking duplication/
reordering", fatal); `IngestProducer._poll` let the KafkaException end the
`ingest-poll` thread (a traceback in the log), `_renew` (which runs on that thread)
never ran, and the ingest answered every post 503 "the thread that confirms deliveries
ended: restart the ingest" from then on, with `qm_ingest_waiting_events` stuck at the
events of the bodies in flight. The renewal the fatal error was meant to cause is what
should follow. No broker: the producer's own broker is a port nothing listens on, and
its `poll` raises as confluent-kafka's did.
"""

from __future__ import annotations

import time
from typing import Any

from confluent_kafka import KafkaError, KafkaException

from devtools.localinfra import free_port
from services.metering.ingest_producer import IngestProducer

FATAL = KafkaError(
    KafkaError.UNKNOWN_PRODUCER_ID,
    "ProduceRequest for qm.usage.v1 [1] with 40 message(s) failed due to unknown producer "
    "id (broker 111 PID{Id:1,Epoch:0}, base seq 3411, 0 retries): unable to retry without "
    "risking duplication/reordering",
    fatal=True,
)


class RaisingPoll:
    """The producer in use, whose next `poll` raises the fatal error as confluent-kafka's
    did (its error callback never told of it)."""

    def __init__(self, real: Any) -> None:
        self._real, self.raised = real, False

    def poll(self, timeout: float) -> int:
        if not self.raised:
            self.raised = True
            raise KafkaException(FATAL)
        return int(self._real.poll(timeout))

    def __getattr__(self, name: str) -> Any:
        return getattr(self._real, name)


def test_a_fatal_error_raised_from_poll_replaces_the_producer() -> None:
    producer = IngestProducer(f"127.0.0.1:{free_port()}", "qm.usage.v1", 1000, 2.0)
    producer.renew_seconds = 0.0
    try:
        fake = RaisingPoll(producer._kafka.producer)
        producer._kafka.producer = fake  # type: ignore[assignment]
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and (not fake.raised or producer.renewals == 0):
            if not producer._poller.is_alive():
                break
            time.sleep(0.05)
        assert fake.raised
        assert producer._poller.is_alive(), producer.unusable()
        assert producer.renewals == 1
        assert producer.unusable() is None
    finally:
        producer.close(0)
