"""metering's counting path without the worker (`make bench-metering ARGS="--in-process"`):
the worker's own `Processor`, built by `wiring.build_counting` as the worker builds it
(pricing, dedupe, totals, rollups, the fenced PostgreSQL commit, totals published),
fed by a plain confluent-kafka consumer in batches bounded as the worker's are.

What it answers: how fast counting goes without the worker's consumer group around
it. It was written when metering had faust, to ask how fast counting would go if the
worker's consumer were librdkafka's rather than faust's (aiokafka's per-record Python,
faust's message tracking and acks); the worker's consumer is librdkafka's now. Not a
way to run metering: no group, no rebalances, no offsets committed to the broker; one
process reads every partition from the start.
"""

from __future__ import annotations

import asyncio
import gc
import time
import uuid
from collections import defaultdict
from collections.abc import Mapping

from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

from quartermaster.telemetry import shared_headers
from quartermaster.topics import Topic
from services.metering.aggregate import Record
from services.metering.pacing import Pacer, batch_prefix
from services.metering.pricing import PriceCatalog
from services.metering.settings import MeteringSettings
from services.metering.wiring import build_counting


async def count_in_process(env: Mapping[str, str], ends: Mapping[int, int]) -> tuple[float, int]:
    """(seconds, batches): the time the counting path took to count every record of
    the usage topic below `ends` (partition → end offset), from the first batch's
    start to the last commit, and how many batches it took. The settings (database,
    broker, batch bounds) are read from `env` as the worker reads them."""
    # The bench's own heap (the workload's events, the ceiling's sums: hundreds of MB)
    # is not the counting path's: the collector would walk it at each full collection.
    gc.collect()
    gc.freeze()
    gc.disable()  # as the worker (worker.run): collected after each batch instead
    settings = MeteringSettings.from_env(env)
    counting = await build_counting(settings, PriceCatalog.from_file(settings.prices_file))
    await counting.guard.verify()  # as the worker, before its first batch
    proc = counting.processor
    pacer = Pacer(settings.batch_target, settings.batch_max, settings.batch_max_bytes)
    consumer = Consumer(
        {"bootstrap.servers": settings.kafka_bootstrap, "group.id": f"inproc-{uuid.uuid4()}",
         "enable.auto.commit": False, "fetch.wait.max.ms": 10}
    )  # fmt: skip
    consumer.assign([TopicPartition(Topic.USAGE.value, p, OFFSET_BEGINNING) for p in ends])
    left = {p: end for p, end in ends.items() if end > 0}
    held: list[Record] = []
    start: float | None = None
    batches = 0
    try:
        while left:
            # Records fetched beyond a batch wait for the next, as in the worker's consumer.
            while len(held) < pacer.records:
                got = await asyncio.to_thread(consumer.consume, pacer.records - len(held), 0.05)
                if not got:
                    break
                held.extend(
                    Record(m.partition() or 0, m.offset() or 0, m.key(), m.value(),
                           shared_headers(m.headers()))
                    for m in got if m.error() is None
                )  # fmt: skip
            if not held:
                continue
            n, size = batch_prefix(held, pacer.records, pacer.bytes)
            taken, held = held[:n], held[n:]
            by_partition: dict[int, list[Record]] = defaultdict(list)
            for r in taken:
                by_partition[r.partition].append(r)
            began = time.perf_counter()
            start = start or began
            await asyncio.gather(*(proc.process(p, rs) for p, rs in by_partition.items()))
            gc.collect()  # as the worker's loop: after each batch, not within it
            pacer.counted(len(taken), size, time.perf_counter() - began, cut=bool(held))
            batches += 1
            for p, rs in by_partition.items():
                if p in left and rs[-1].offset + 1 >= left[p]:
                    del left[p]
        return time.perf_counter() - (start or time.perf_counter()), batches
    finally:
        gc.enable()
        consumer.close()
        proc.sink.close()  # type: ignore[attr-defined]
        await counting.pool.close()
