"""The metering worker: the usage topic's consumer (`consumer.UsageConsumer`) around a
built `Counting` graph, on one event loop.

The counting loop takes batches from the consumer, hands each partition's records to
the `Processor` (partitions concurrently), and, once every partition of the batch is
committed to PostgreSQL, tells the consumer what was counted. Timers follow the price
catalog and prune expired state; a task checks the broker's topics
(`topic_guard.TopicWatch`) on a short timer and at each assignment. See `processor`
for the steps and their failure consequences.

`run` returns when `stopping` is set (SIGTERM/SIGINT: the batch in hand is finished
and committed, then the worker leaves the group). An exception that escapes the
counting loop or a timer (a bug, a broken installation: not a bad record, not an
outage) is given to `on_fatal`, which must end the process for its supervisor to
restart: a worker that lives on without counting holds its partitions for nothing.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable
from datetime import timedelta

from opentelemetry import trace

from quartermaster.db import RETRIED_NEXT_ROUND, close_pool, outage_text
from quartermaster.telemetry import links_of
from services.metering.aggregate import Record
from services.metering.consumer import Taken, UsageConsumer
from services.metering.metrics import MeteringMetrics
from services.metering.pacing import Pacer
from services.metering.processor import OUTAGE, Processor
from services.metering.settings import MeteringSettings
from services.metering.topic_guard import TopicWatch
from services.metering.wiring import Counting

log = logging.getLogger("qm.metering")
PRUNE_SECONDS = 600.0
# Longest a stop waits for the batch in hand (PostgreSQL or the broker away: the
# batch is retried until they answer) before giving up on it: nothing of it was
# committed, so the partition's next owner counts it.
STOP_SECONDS = 30.0
# Longest a stop then waits for the cancelled batch and timers to end before closing
# PostgreSQL's connections under them (a cancelled query to a PostgreSQL that does not
# answer waited for asyncpg's cancel request: up to its 60 s connect timeout).
CANCEL_SECONDS = 5.0
# Longest the worker goes without collecting garbage (see `run`).
COLLECT_SECONDS = 10.0
tracer = trace.get_tracer("qm.metering")


async def run(
    settings: MeteringSettings,
    counting: Counting,
    on_fatal: Callable[[BaseException], None],
    stopping: asyncio.Event,
) -> bool:
    """Count `qm.usage.v1` with `counting` until `stopping` is set, then leave the
    group and close the graph's pool. False when the consumer could not leave the
    group (`UsageConsumer.close`): the caller must then end the process hard."""
    # The worker collects garbage on its own schedule, not on allocation counts: after
    # each batch and every COLLECT_SECONDS (what other tasks, or a batch retried
    # through an outage, leave is bounded by that). A batch makes hundreds of
    # thousands of objects that live until it ends (records, events, sums), and the
    # collector's thresholds fired full collections over them again and again within
    # a batch and while its records were taken (docs/benchmarks.md). What start-up
    # made (modules, descriptors, the catalog) lives as long as the process: frozen,
    # the collections do not walk it.
    gc.freeze()
    gc.disable()
    consumer = UsageConsumer(settings)
    counting.metrics.end_offset = consumer.end_offset
    watch = TopicWatch(counting.guard, settings.topic_check_seconds, on_fatal)
    background = [
        asyncio.create_task(_guarded(watch.run(), on_fatal)),
        asyncio.create_task(
            _guarded(_every(settings.prices_poll_seconds, _follow_prices, counting), on_fatal)
        ),
        asyncio.create_task(_guarded(_every(PRUNE_SECONDS, _prune, counting, settings), on_fatal)),
        asyncio.create_task(_every(COLLECT_SECONDS, _collect)),
    ]
    loop = _Loop(consumer, counting.processor, settings, counting.metrics, watch)
    counter = asyncio.create_task(_guarded(loop.run(), on_fatal))
    try:
        await stopping.wait()
        loop.stopping = True
        consumer.stop_taking()
        try:
            await asyncio.wait_for(asyncio.shield(counter), STOP_SECONDS)
        except TimeoutError:
            log.warning("stopping without the batch in hand: its partitions' next owner counts it")
    finally:
        tasks = [counter, *background]
        for task in tasks:
            task.cancel()
        _done, stuck = await asyncio.wait(tasks, timeout=CANCEL_SECONDS)
        closed = await consumer.close()
        if stuck:
            # Waiting on PostgreSQL: its connections are closed under them (a graceful
            # close would wait for them too), which ends the tasks.
            log.warning("PostgreSQL does not answer: closing its connections without waiting")
            counting.pool.terminate()
            await asyncio.wait(stuck, timeout=CANCEL_SECONDS)
        else:
            await close_pool(counting.pool)
        gc.enable()
    return closed


async def _guarded(work: Awaitable[None], on_fatal: Callable[[BaseException], None]) -> None:
    try:
        await work
    except asyncio.CancelledError:
        raise
    except Exception as exc:
        on_fatal(exc)


async def _every(seconds: float, tick: Callable[..., Awaitable[None]], *args: object) -> None:
    """`tick(*args)` every `seconds`, until it raises: what it raises escapes
    (`_guarded` hands it to `on_fatal`)."""
    while True:
        await asyncio.sleep(seconds)
        await tick(*args)


async def _collect() -> None:
    gc.collect()


async def _follow_prices(counting: Counting) -> None:
    """Look for a new price catalog revision: an outage is logged and tried at the next
    tick; anything else (a revision this worker can't read) escapes, to end it."""
    try:
        new = await counting.prices.poll()
    except RETRIED_NEXT_ROUND as exc:
        log.warning("prices: could not look for a new catalog revision: %s", outage_text(exc))
        return
    if new is not None:
        log.info(
            "prices: catalog revision %d in force (%s by %s, %d change(s))",
            new.revision, new.mode, new.loaded_by, len(new.changes),
        )  # fmt: skip


async def _prune(counting: Counting, settings: MeteringSettings) -> None:
    """Forget expired event ids: an outage is logged and tried at the next tick;
    anything else escapes, to end the worker."""
    try:
        pruned = await counting.processor.prune(timedelta(hours=settings.dedupe_hours))
    except OUTAGE as exc:
        log.warning("could not prune expired event ids (next try in %.0f s): %s",
                    PRUNE_SECONDS, outage_text(exc))  # fmt: skip
        return
    log.info("pruned %d expired event ids", pruned)


class _Loop:
    """The counting loop (see the module docstring); `stopping` ends it between batches."""

    def __init__(
        self,
        consumer: UsageConsumer,
        proc: Processor,
        settings: MeteringSettings,
        meters: MeteringMetrics,
        watch: TopicWatch,
    ) -> None:
        self.consumer, self.proc, self.settings = consumer, proc, settings
        self.meters, self.watch = meters, watch
        self.pacer = Pacer(settings.batch_target, settings.batch_max, settings.batch_max_bytes)
        self.stopping = False

    async def run(self) -> None:
        while not self.stopping:
            taken = await self.consumer.take(
                self.pacer.records, self.settings.batch_within, self.pacer.bytes
            )
            self._moved(taken)
            if taken.records and not self.stopping:
                await self._count(taken)

    def _moved(self, taken: Taken) -> None:
        """Partitions that went elsewhere lose their state here (another worker counts
        them; should one come back, its state is loaded again from PostgreSQL)."""
        if taken.revoked:
            self.proc.forget(taken.revoked)
            for partition in taken.revoked:
                self.meters.positions.pop(partition, None)
        if taken.assigned:
            # A (re)join, maybe after the broker came back: check the topics now.
            self.watch.poke()

    async def _count(self, taken: Taken) -> None:
        by_partition: dict[int, list[Record]] = defaultdict(list)
        for r in taken.records:
            by_partition[r.partition].append(r)
        began = time.perf_counter()
        # Linked to the spans of the events counted (when tracing: their producers'
        # traceparent); the totals it publishes carry this span's context on to policy.
        links = links_of(r.headers for r in taken.records)
        with tracer.start_as_current_span("meter batch", links=links) as span:
            span.set_attribute("qm.records", len(taken.records))
            # Partitions are independent (own state, own fenced commit): while one
            # waits on the broker or Postgres, another is planned.
            await asyncio.gather(*(self.proc.process(p, rs) for p, rs in by_partition.items()))
        gc.collect()  # the batch's cycles, once it is done (see `run`)
        took = time.perf_counter() - began
        self.meters.batch(took)
        self.pacer.counted(len(taken.records), taken.size, took, taken.cut)
        positions = {p: max(r.offset for r in rs) + 1 for p, rs in by_partition.items()}
        self.meters.positions.update(positions)
        await self.consumer.commit(positions)
