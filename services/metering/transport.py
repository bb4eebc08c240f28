"""faust's aiokafka transport with a configurable fetch wait, delivering a fetch at a
time to the worker's `Intake`.

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

Its consumer puts each fetch of records whole into the app's `intake` (an app built
by `worker`) instead of faust's per-record delivery (see `intake` for why and what it
measured); with no intake it delivers as faust does.

Use it with the broker URL scheme `qmkafka://` (registered by `register()`).
"""

from __future__ import annotations

import asyncio
from typing import Any

import aiokafka.client
from aiokafka.protocol.metadata import MetadataRequest
from faust.transport import drivers
from faust.transport.drivers import aiokafka as faust_aiokafka

from services.metering.intake import Intake

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

    async def _drain_messages(self, fetcher: Any) -> None:
        """faust's fetcher loop (faust 0.15.3's `Consumer._drain_messages`, pinned),
        with a fetch put into the intake whole. Kept from it: records below the read
        offset are dropped (a seek went back: they come again), a jump in offsets is
        recorded as a gap (so acks past it can be committed), each record is tracked
        as unacked (a graceful stop waits for its ack), and a suspended flow (a
        rebalance) abandons the fetch in hand: its records are neither counted nor
        acked, and faust fetches them again from the committed offset. A fetch of a
        partition revoked after it arrived is never put into the intake (`Intake.put`:
        its epoch), whichever of the put and the suspension finishes first."""
        intake: Intake | None = getattr(self.app, "intake", None)
        if intake is None:
            await super()._drain_messages(fetcher)
            return
        read_offset = self._read_offset
        acking = self.app.topics.acks_enabled_for
        stopped, fetcher_stopped = self._stopped.is_set, fetcher._stopped.is_set
        track, on_message_in = self._unacked_messages.add, self._on_message_in
        try:
            while not (stopped() or fetcher_stopped()):
                fetched = []
                epoch, messages = await self._fetch_whole(1.0, intake)
                for tp, message in messages:
                    last = read_offset[tp]
                    if last is not None and message.offset < last:
                        continue
                    if last and message.offset - last > 1 and acking(message.topic):
                        await self._add_gap(tp, last + 1, message.offset)
                    read_offset[tp] = message.offset
                    message.tracked = True
                    track(message)  # faust's track_message, inlined: once a record
                    on_message_in(tp, message.offset, message)
                    fetched.append(message)
                every = self._commit_every
                if every is not None and self._n_acked >= every:
                    self._n_acked = 0
                    await self.commit()
                if fetched:
                    await self.wait_first(self._put(intake, fetched, epoch),
                                          self.suspend_flow.wait())  # fmt: skip
                else:
                    await asyncio.sleep(0)  # getmany may return at once: let others run
        except self.consumer_stopped_errors:
            if self.transport.app.should_stop:
                return
            raise
        except asyncio.CancelledError:
            if self.transport.app.should_stop:
                return
            raise

    async def _fetch_whole(self, wait: float, intake: Intake) -> tuple[int, list[Any]]:
        """The intake's epoch when the fetch arrived (a drop from then on is a
        revocation it predates), and its records as (tp, faust message) pairs, waiting
        up to `wait` seconds: faust 0.15.3's `Consumer.getmany` (pinned) without its
        per-record async generator. Kept from it: nothing while the flow is
        suspended (a rebalance: seek back to the committed offsets instead), records
        of partitions neither active nor buffered left out, nothing after the
        consumer generation changed, the monitor told each partition's high water.
        It did each once a record (a share of the worker's CPU with one-event
        records that py-spy shows); here once a fetch or partition, with no await in
        between, so the flow can't change midway."""
        records, active = await self._wait_next_records(wait)
        epoch = intake.epoch
        if records is None or self.should_stop:
            return epoch, []
        if not self.flow_active:
            try:
                await self.perform_seek()
            except Exception as exc:  # as faust: logged, the next fetch tries again
                self.log.warning(f"exception performing seek when flow not active {exc}")
            return epoch, []
        generation = self.app.consumer_generation_id
        buffered = self._buffered_partitions
        to_message = self._to_message
        out: list[tuple[Any, Any]] = []
        for tp, batch in records.items():
            if active is not None and tp not in active and tp not in buffered:
                continue
            self.app.monitor.track_tp_end_offset(tp, self.highwater(tp))
            out.extend((tp, to_message(tp, record)) for record in batch)
        if not self.flow_active or self.app.consumer_generation_id != generation:
            return epoch, []  # can't happen without an await; as faust, if it did
        return epoch, out

    async def _put(self, intake: Intake, fetched: list[Any], epoch: int) -> None:
        for m in await intake.put(fetched, epoch):
            self._unacked_messages.discard(m)  # revoked meanwhile: nobody will ack it


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
