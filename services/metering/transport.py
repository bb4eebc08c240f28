"""faust's aiokafka transport with a configurable fetch wait.

faust hard-codes `fetch_max_wait_ms=1500` for its consumer. A real Kafka broker
answers a waiting fetch as soon as data arrives, so that costs nothing there; tansu
(the local broker) holds every fetch for the whole wait, so each event waited up to
1.5 s before metering saw it (measured: 650 ms at 1500, 150 ms at 500, < 15 ms at
10). This transport sets the wait from `QM_METERING_FETCH_MAX_WAIT_MS`.

It also never asks the broker to create a topic. aiokafka sends every metadata
request with `allow_auto_topic_creation` true and has no setting for it (0.14), so a
consumer subscribing to a missing `qm.usage.v1` made the broker (Kafka's default
`auto.create.topics.enable`, and tansu) create it with the broker's defaults.
`register()` makes aiokafka's client send false instead; a missing topic then stays
missing and metering's topic check (`topic_check`) names it.

Use it with the broker URL scheme `qmkafka://` (registered by `register()`).
"""

from __future__ import annotations

from typing import Any

import aiokafka.client
from aiokafka.protocol.metadata import MetadataRequest
from faust.transport import drivers
from faust.transport.drivers import aiokafka as faust_aiokafka

SCHEME = "qmkafka"
_fetch_max_wait_ms = 1500


class NoAutoCreateMetadataRequest(MetadataRequest):  # type: ignore[misc]
    """aiokafka's MetadataRequest that never asks for topics to be created."""

    def __init__(
        self, topics: list[str] | None = None, allow_auto_topic_creation: bool | None = None
    ) -> None:
        super().__init__(topics, allow_auto_topic_creation=False)


class _ConsumerThread(faust_aiokafka.AIOKafkaConsumerThread):
    def _create_worker_consumer(self, transport: Any) -> Any:
        consumer = super()._create_worker_consumer(transport)
        # aiokafka reads this when the consumer starts and builds its fetcher
        # (aiokafka 0.14, pinned in pyproject.toml).
        consumer._fetch_max_wait_ms = _fetch_max_wait_ms
        return consumer


class _Consumer(faust_aiokafka.Consumer):
    def _new_consumer_thread(self) -> _ConsumerThread:
        return _ConsumerThread(self, loop=self.loop, beacon=self.beacon)


class Transport(faust_aiokafka.Transport):
    Consumer = _Consumer


def register(fetch_max_wait_ms: int) -> None:
    """Make `qmkafka://` resolve to this transport, with the given fetch wait, and
    aiokafka's metadata requests ask for no topic creation (see the module docstring)."""
    global _fetch_max_wait_ms
    _fetch_max_wait_ms = fetch_max_wait_ms
    # The name aiokafka's client builds its metadata requests with (aiokafka 0.14,
    # pinned); every aiokafka client of this process is faust's, and none may create.
    aiokafka.client.MetadataRequest = NoAutoCreateMetadataRequest
    drivers.TRANSPORTS.aliases[SCHEME] = f"{__name__}:Transport"
