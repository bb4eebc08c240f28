"""Property (hypothesis): whatever records arrive on qm.usage.v1, the real metering
worker lives on, the good events among them count exactly, and every record or event
that the worker's own decoder refuses is in the DLQ with a reason.

Random bytes (as protobuf, as JSON, under odd content types), random JSON, random
events and batches with extreme values (int64 bounds, NULs, long and wide strings,
dates far off), each between good events of a user of the example's own. Bounded to
run in `make test`: a few dozen examples of a few records each (about 20 s).
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import pytest
from confluent_kafka import OFFSET_END, Consumer, TopicPartition
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from devtools.localinfra.stack import Infra
from quartermaster import kafka
from quartermaster.periods import PeriodKind, period_of
from quartermaster.telemetry import headers_dict
from quartermaster.topics import (
    CONTENT_TYPE,
    ERROR_HEADER,
    JSON,
    ORIGIN_OFFSET_HEADER,
    ORIGIN_PARTITION_HEADER,
    PROTOBUF,
    USAGE_BATCH_TYPE,
    Topic,
)
from quartermaster.v1 import usage_pb2
from services.metering.bounds import MAX_EVENT_TOKENS
from services.metering.decode import InvalidUsage, decode
from tests.conftest import MeteringWorker
from tests.helpers import new_user, usage
from tests.metering.test_metering import EVENT_MICROS, UTC_ZONE

pytestmark = pytest.mark.infra
AGE = timedelta(days=35)  # the worker's QM_METERING_MAX_EVENT_AGE_DAYS
Headers = list[tuple[str, str | bytes | None]]

INT64 = st.one_of(
    st.integers(-(2**63), 2**63 - 1),
    st.sampled_from([0, 1, -1, MAX_EVENT_TOKENS, MAX_EVENT_TOKENS + 1, 2**62, 2**63 - 1]),
)
TEXT = st.one_of(
    st.text(max_size=12),
    st.sampled_from(["", " ", "nul\0user", "c" * 4000, "\U0001d11e" * 200, "\u00e9" * 256]),
    st.text(min_size=250, max_size=300),
)
# seconds from now, kept 10 s off the accepted window's edges (so the test's own
# decode and the worker's, a moment later, agree)
OFFSET = st.one_of(
    st.integers(-34 * 86_400, 290),
    st.integers(310, 10**7),
    st.integers(-(10**10), -36 * 86_400),
    st.sampled_from([2**40, -(2**40)]),
)
# users of random events (not the good ones'): drawn, so an example replays exactly
USERS = st.integers(0, 10**9).map(lambda i: f"fuzz-{i}")
CONTENT_TYPES = st.sampled_from([
    PROTOBUF, JSON, f"{PROTOBUF}; type={USAGE_BATCH_TYPE}", f"{JSON}; type={USAGE_BATCH_TYPE}",
    "text/plain", f"{PROTOBUF}; type=Nope", "",
])  # fmt: skip
JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner),
    max_leaves=12,
)
EVENT_KEYS = ["eventId", "occurredAt", "workspaceId", "userId", "product", "model",
              "inputTokens", "cachedInputTokens", "outputTokens", "reasoningTokens",
              "requestId", "attributes", "cacheWriteInputTokens", "colour"]  # fmt: skip


@st.composite
def events(draw: st.DrawFn) -> usage_pb2.UsageEvent:
    """A UsageEvent with any field extreme (or plain), dated relative to now."""
    user = draw(st.one_of(USERS, TEXT))
    event = usage(user, event_id=draw(st.one_of(st.uuids().map(str), TEXT)))
    for name in ("product", "model", "workspace_id", "request_id"):
        if draw(st.booleans()):
            setattr(event, name, draw(TEXT))
    for name in ("input_tokens", "cached_input_tokens", "cache_write_input_tokens",
                 "output_tokens", "reasoning_tokens"):  # fmt: skip
        if draw(st.booleans()):
            setattr(event, name, draw(INT64))
    if draw(st.booleans()):
        event.attributes[draw(TEXT)] = draw(TEXT)
    if draw(st.booleans()):
        event.attributes["cost_center"] = draw(TEXT)
    if draw(st.booleans()):
        event.occurred_at.seconds = int(time.time()) + draw(OFFSET)
    return event


def key_of(event: usage_pb2.UsageEvent) -> bytes:
    return event.user_id.encode()


@st.composite
def bad_records(draw: st.DrawFn) -> tuple[bytes, bytes, Headers]:
    """One record that may be anything: garbage, JSON, an extreme event or batch."""
    kind = draw(st.sampled_from(["bytes", "json", "json-event", "event", "batch"]))
    key = draw(st.binary(max_size=40))
    if kind == "bytes":
        return key, draw(st.binary(max_size=3000)), [(CONTENT_TYPE, draw(CONTENT_TYPES))]
    if kind == "json":
        value = json.dumps(draw(JSON_VALUES)).encode()
        return key, value, [(CONTENT_TYPE, JSON)]
    if kind == "json-event":
        raw = draw(st.dictionaries(st.sampled_from(EVENT_KEYS), JSON_VALUES, max_size=8))
        return key, json.dumps(raw).encode(), [(CONTENT_TYPE, JSON)]
    if kind == "event":
        event = draw(events())
        return key_of(event), event.SerializeToString(), [(CONTENT_TYPE, PROTOBUF)]
    batch = usage_pb2.UsageBatch(events=draw(st.lists(events(), min_size=0, max_size=4)))
    headers: Headers = [(CONTENT_TYPE, f"{PROTOBUF}; type={USAGE_BATCH_TYPE}")]
    return key, batch.SerializeToString(), headers


def refusals(value: bytes, headers: Headers, workspace: str) -> int:
    """How many DLQ records the worker counting `workspace` must make of this record
    at least (its own decoder's verdict: the whole record, or each bad event of a
    batch)."""
    hdrs = {k: v.decode() if isinstance(v, bytes) else (v or "") for k, v in headers}
    try:
        return len(decode(value, hdrs, datetime.now(UTC), AGE, workspace).rejects)
    except InvalidUsage:
        return 1


@dataclass
class DlqWatch:
    """Reads qm.usage.dlq.v1 from (about) its end: (origin partition, offset) → reasons."""

    bootstrap: str
    seen: dict[tuple[int, int], list[str]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.consumer = Consumer(
            {"bootstrap.servers": self.bootstrap, "group.id": f"t-{uuid.uuid4()}",
             "enable.auto.commit": False}
        )  # fmt: skip
        topic = Topic.USAGE_DLQ.value
        parts = self.consumer.list_topics(topic, timeout=10).topics[topic].partitions
        self.consumer.assign([TopicPartition(topic, p, OFFSET_END) for p in parts])

    def wait_for(self, expected: dict[tuple[int, int], int], within: float = 30) -> None:
        deadline = time.monotonic() + within
        while time.monotonic() < deadline:
            if all(len(self.seen.get(k, [])) >= n for k, n in expected.items()):
                return
            msg = self.consumer.poll(0.1)
            if msg is None or msg.error() is not None:
                continue
            h = headers_dict(msg.headers())
            origin = (int(h[ORIGIN_PARTITION_HEADER]), int(h[ORIGIN_OFFSET_HEADER]))
            self.seen.setdefault(origin, []).append(h[ERROR_HEADER])
        missing = {k: n for k, n in expected.items() if len(self.seen.get(k, [])) < n}
        raise AssertionError(f"not in the DLQ within {within}s (origin: count): {missing}")


def produce_all(bootstrap: str, records: list[tuple[bytes, bytes, Headers]]) -> list[Any]:
    """Produce in order; each record's (partition, offset)."""
    producer = kafka.producer(bootstrap, acks="all")
    where: list[Any] = [None] * len(records)
    for i, (key, value, headers) in enumerate(records):

        def delivered(err: object, msg: Any, i: int = i) -> None:
            where[i] = err if err is not None else (msg.partition(), msg.offset())

        producer.produce(Topic.USAGE.value, key=key, value=value, headers=headers,
                         on_delivery=delivered)  # fmt: skip
    assert producer.flush(30) == 0
    assert all(isinstance(w, tuple) for w in where), where
    return where


async def month_total(database_url: str, user: str) -> int | None:
    month = period_of(PeriodKind.MONTH, datetime.now(UTC), UTC_ZONE).key
    conn = await asyncpg.connect(database_url)
    try:
        value: int | None = await conn.fetchval(
            "SELECT used_micros FROM metering.totals WHERE subject_kind = 'user'"
            " AND subject_id = $1 AND period_kind = 'month' AND period_key = $2",
            user,
            month,
        )
        return value
    finally:
        await conn.close()


def wait_total(database_url: str, user: str, expected: int, within: float = 30) -> None:
    deadline = time.monotonic() + within
    seen = None
    while time.monotonic() < deadline:
        # a loop of its own, in a thread of its own: this thread's loop is the session's
        with ThreadPoolExecutor(1) as pool:
            seen = pool.submit(asyncio.run, month_total(database_url, user)).result()
        if seen == expected:
            return
        time.sleep(0.05)
    raise AssertionError(f"{user}: expected {expected} micros, last saw {seen}")


@pytest.fixture
def dlq_watch(infra: Infra) -> Iterator[DlqWatch]:
    watch = DlqWatch(infra.kafka_bootstrap)
    yield watch
    watch.consumer.close()


@settings(
    max_examples=30,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                           HealthCheck.data_too_large, HealthCheck.large_base_example],
)  # fmt: skip
@given(bad=st.lists(bad_records(), min_size=1, max_size=5))
def test_random_records_never_stop_the_worker_and_good_events_count_exactly(
    infra: Infra, metering: MeteringWorker, dlq_watch: DlqWatch, bad: list[Any]
) -> None:
    good_user = new_user()
    records: list[tuple[bytes, bytes, Headers]] = []
    for record in bad:  # two good events around each bad record: the DLQ limit stays off
        records += [_good(good_user), record, _good(good_user)]
    ws = metering.env["QM_WORKSPACE_ID"]
    expected_dlq = {i: refusals(value, hdrs, ws) for i, (_k, value, hdrs) in enumerate(records)}
    where = produce_all(infra.kafka_bootstrap, records)
    wait_total(infra.database_url, good_user, 2 * len(bad) * EVENT_MICROS)
    dlq_watch.wait_for({where[i]: n for i, n in expected_dlq.items() if n})
    for i, n in expected_dlq.items():
        if n:
            assert all(dlq_watch.seen[where[i]]), "a DLQ record without a reason"
    assert metering.alive(), metering.log_tail()
    # nothing counted twice or late
    wait_total(infra.database_url, good_user, 2 * len(bad) * EVENT_MICROS, within=1)


def _good(user: str) -> tuple[bytes, bytes, Headers]:
    return (user.encode(), usage(user).SerializeToString(), [(CONTENT_TYPE, PROTOBUF)])
