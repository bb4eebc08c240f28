"""The usage DLQ as an operator's tool: list what is in `qm.usage.dlq.v1` and replay a
selection into `qm.usage.v1` once the cause is fixed (a price was missing, a producer
was fixed). Straight to Kafka and Postgres (QM_KAFKA_BOOTSTRAP, QM_DATABASE_URL):

    python -m services.metering.cli dlq list [--reason-contains "no price"] [--source gw]
        [--since 2026-11-30T10:00Z] [--until ...] [--at 0@17 ...] [--limit 50]
    python -m services.metering.cli dlq replay --by ann --reason "gpt-9 priced" \\
        [the same selection] [--again] [--dry-run]

A replayed record goes back with its key, value and content-type as they came, marked
`qm-replayed-from: <partition>@<offset>`; metering counts it as any record (a record
still bad goes to the DLQ again, with its reason). Never counted twice: the events of
a rejected record were not counted, each replay is recorded (`stores.replays`) and a
record replayed before is skipped unless `--again`, and metering skips an event_id
counted within its dedupe window whatever happens. A copy cut to its first 512 KiB
(`dead_letter`) is listed but can't be replayed.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any, TextIO

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaException, TopicPartition

from quartermaster import kafka
from quartermaster.topics import Topic
from services.metering.dead_letter import (
    DeadLetterView,
    Selection,
    replay_record,
    short_reason,
    view_of,
)

SHOWN_REASON_CHARS = 100


def read(bootstrap: str, selection: Selection, timeout: float = 10.0) -> Iterator[DeadLetterView]:
    """The DLQ's records that `selection` picks, oldest offset first per partition,
    read from the start of every partition to its end as it was when reading began.
    Raises OSError when the broker does not answer within `timeout` seconds."""
    consumer = Consumer(kafka.client_config(
        bootstrap, **{"group.id": "qm-dlq-reader", "enable.auto.commit": False, "log_level": 3}
    ))  # fmt: skip
    try:
        topic = Topic.USAGE_DLQ.value
        try:
            meta = consumer.list_topics(topic, timeout=timeout).topics[topic]
            ends = {
                p: consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=timeout)
                for p in meta.partitions
            }
        except KafkaException as exc:
            raise OSError(f"{topic}: {exc.args[0].str()}") from None
        left = {p: high for p, (low, high) in ends.items() if high > low}
        consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in left])
        while left:
            msg = consumer.poll(timeout)
            if msg is None:
                raise OSError(f"{topic}: no records within {timeout:.0f} s")
            if msg.error():
                continue  # a transient fetch error; the next poll retries
            partition, offset = msg.partition() or 0, msg.offset() or 0
            if partition in left:
                # The end a fetch reported: the true one, where the local broker's
                # ListOffsets answers short (the first offset of the last batch + 1).
                tp = TopicPartition(topic, partition)
                _, fetched = consumer.get_watermark_offsets(tp, cached=True)
                left[partition] = max(left[partition], fetched)
                if offset + 1 >= left[partition]:
                    del left[partition]
            headers: dict[str, bytes] = {}
            raw = msg.headers() or []
            for k, v in raw.items() if isinstance(raw, dict) else raw:
                headers[k] = v.encode() if isinstance(v, str) else v or b""
            _kind, at_ms = msg.timestamp()
            view = view_of(partition, offset, at_ms, msg.key(), msg.value(), headers)
            if selection.matches(view):
                yield view
    finally:
        consumer.close()


def add_parser(sub: Any) -> None:
    """The `dlq list|replay` subcommands on the metering CLI's subparsers."""
    p = sub.add_parser("dlq", help="list the usage DLQ, replay a selection")
    actions = p.add_subparsers(dest="action", required=True)
    listing = actions.add_parser("list", help="what is in the DLQ (oldest first)")
    replay = actions.add_parser("replay", help="send a selection back to qm.usage.v1")
    for a in (listing, replay):
        a.add_argument("--reason-contains", default="", help="reason has this text")
        a.add_argument("--source", default="", help="records of this source only")
        a.add_argument("--since", type=_instant, help="written at or after (UTC)")
        a.add_argument("--until", type=_instant, help="written before (UTC)")
        a.add_argument("--at", action="append", default=[], metavar="PARTITION@OFFSET",
                       help="this DLQ record only (repeatable)")  # fmt: skip
    listing.add_argument("--limit", type=int, default=0, help="show at most this many")
    replay.add_argument("--by", required=True, help="who replays (kept with the replay)")
    replay.add_argument("--reason", required=True, help="why (kept with the replay)")
    replay.add_argument("--again", action="store_true", help="also records replayed before")
    replay.add_argument("--dry-run", action="store_true", help="say what would be replayed")


def _instant(text: str) -> datetime:
    when = datetime.fromisoformat(text)
    return when if when.tzinfo else when.replace(tzinfo=UTC)


def run(ns: argparse.Namespace, bootstrap: str, database_url: str, out: TextIO) -> int:
    """`dlq list` / `dlq replay`: 0 when done; 2 (the reason on stderr) when the broker
    or the database is out of reach or nothing could be replayed."""
    selection = Selection(
        ns.reason_contains, ns.source, ns.since, ns.until, frozenset(ns.at)
    )  # fmt: skip
    try:
        views = list(read(bootstrap, selection))
        return asyncio.run(_run(ns, views, bootstrap, database_url, out))
    except OSError as exc:
        sys.stderr.write(f"dlq {ns.action}: {exc}\n")
        return 2


async def _run(
    ns: argparse.Namespace, views: list[DeadLetterView], bootstrap: str, database_url: str,
    out: TextIO,
) -> int:  # fmt: skip
    from quartermaster.db import connect_pool
    from quartermaster.publisher import Publisher
    from services.metering.stores.replays import ReplayStore

    pool = await connect_pool(database_url, max_size=2)
    try:
        store = ReplayStore(pool)
        replayed = await store.replayed(views)
        if ns.action == "list":
            shown = views[: ns.limit] if ns.limit > 0 else views
            _table(shown, replayed, out)
            out.write(f"{len(views)} record(s) selected, {len(replayed)} replayed before\n")
            return 0
        todo = [v for v in views if (ns.again or v.where not in replayed) and not v.cut]
        for v in views:
            if v.cut:
                out.write(f"skipped {v.where}: cut in the DLQ, can't be replayed\n")
            elif v not in todo:
                out.write(f"skipped {v.where}: replayed before (--again to replay it)\n")
        if not todo:
            sys.stderr.write(
                "dlq replay: nothing to replay (no record selected, or each was replayed "
                "before or cut)\n"
            )
            return 2
        if ns.dry_run:
            out.write(f"would replay {len(todo)} record(s): {', '.join(v.where for v in todo)}\n")
            return 0
        publisher = Publisher(bootstrap)
        try:
            records = [replay_record(v) for v in todo]
            await store.replay(todo, ns.by, ns.reason, lambda: publisher.send(records))
        finally:
            publisher.close()
        out.write(f"replayed {len(todo)} record(s) into {Topic.USAGE.value}\n")
        return 0
    finally:
        await pool.close()


def _table(views: list[DeadLetterView], replayed: set[str], out: TextIO) -> None:
    out.write("at\twritten\torigin\tsource\tkey\treplayed\treason\n")
    for v in views:
        key = (v.key or b"").decode("utf-8", "replace")[:40]
        reason = short_reason(v.reason)[:SHOWN_REASON_CHARS].replace("\n", " ")
        out.write(
            f"{v.where}\t{v.at:%Y-%m-%dT%H:%M:%SZ}\t{v.origin}\t{v.source}\t{key}\t"
            f"{'yes' if v.where in replayed else 'no'}\t{reason}\n"
        )
