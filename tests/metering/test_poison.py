"""No single record stops metering (issue 14, items 6-9): each input that used to halt
every partition, with the other members of its kind, against the real broker,
PostgreSQL and worker process. Every bad record is a DLQ record with a reason, the
good events beside it count exactly, and a crash of counting ends the process."""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import TYPE_CHECKING

import asyncpg
import pytest
from confluent_kafka import Message
from google.protobuf import json_format

from devtools.localinfra.stack import Infra
from quartermaster import kafka
from quartermaster.partitioning import partition_of
from quartermaster.periods import PeriodKind, period_of
from quartermaster.telemetry import headers_dict
from quartermaster.topics import (
    CONTENT_TYPE,
    ERROR_HEADER,
    JSON,
    ORIGINAL_KEY_SIZE_HEADER,
    ORIGINAL_SHA256_HEADER,
    ORIGINAL_SIZE_HEADER,
    PROTOBUF,
    USAGE_BATCH_TYPE,
    Topic,
)
from quartermaster.v1 import usage_pb2
from services.metering.__main__ import EXIT_CRASHED
from services.metering.bounds import MAX_SUM
from services.metering.dead_letter import MAX_KEY_BYTES, MAX_VALUE_BYTES
from tests.conftest import PARTITIONS, MeteringWorker
from tests.helpers import eventually, new_user, produce, produce_usage, read_topic, usage
from tests.metering.test_metering import EVENT_MICROS, UTC_ZONE, db_total, used_of

if TYPE_CHECKING:
    from quartermaster.v1.policy_pb2_grpc import PolicyServiceAsyncStub as Stub

pytestmark = pytest.mark.infra
KafkaRecord = tuple[bytes, bytes, list[tuple[str, bytes]]]
PB_HEADERS = [(CONTENT_TYPE, PROTOBUF.encode())]
JSON_HEADERS = [(CONTENT_TYPE, JSON.encode())]


def pb(event: usage_pb2.UsageEvent) -> KafkaRecord:
    return (event.user_id.encode(), event.SerializeToString(), PB_HEADERS)


def as_json(event: usage_pb2.UsageEvent, **fields: object) -> bytes:
    raw = json.loads(json_format.MessageToJson(event))
    raw.update(fields)
    return json.dumps(raw).encode()


def produce_big(bootstrap: str, records: list[KafkaRecord]) -> None:
    """Produce records of up to ~2 MB (a producer configured past the default limit,
    as the one that sent the ~1 MB record was)."""
    producer = kafka.producer(bootstrap, acks="all", **{"message.max.bytes": 3_000_000})
    errors: list[str] = []
    for key, value, headers in records:
        producer.produce(
            Topic.USAGE.value, key=key, value=value, headers=list(headers),
            on_delivery=lambda err, _m: errors.append(str(err)) if err else None,
        )  # fmt: skip
    assert producer.flush(30) == 0
    assert not errors, errors


def dlq(infra: Infra, key_prefix: bytes) -> list[Message]:
    return [
        m
        for m in read_topic(infra.kafka_bootstrap, Topic.USAGE_DLQ.value)
        if (m.key() or b"").startswith(key_prefix)
    ]


def reasons(messages: list[Message]) -> list[str]:
    return sorted(headers_dict(m.headers())[ERROR_HEADER] for m in messages)


async def dlq_reasons(infra: Infra, user: str, n: int) -> list[str]:
    """The reasons of the DLQ records keyed `user`, once there are `n`."""
    found: list[Message] = []
    deadline = time.monotonic() + 30
    while len(found) < n and time.monotonic() < deadline:
        found = await asyncio.to_thread(dlq, infra, user.encode())
    assert len(found) == n, reasons(found)
    return reasons(found)


@asynccontextmanager
async def refusing(
    infra: Infra, table: str, condition: str, errcode: str, message: str
) -> AsyncIterator[None]:
    """While inside: PostgreSQL refuses every row of metering.`table` matching
    `condition` (on NEW) with SQLSTATE `errcode` and "qm test: `message`" (a trigger,
    standing for whatever validation does not foresee)."""
    name = f"qm_test_{uuid.uuid4().hex[:8]}"
    conn = await asyncpg.connect(infra.database_url)
    try:
        await conn.execute(f"""
            CREATE FUNCTION metering.{name}() RETURNS trigger AS $$
            BEGIN
                IF {condition} THEN
                    RAISE EXCEPTION 'qm test: {message}' USING ERRCODE = '{errcode}';
                END IF;
                RETURN NEW;
            END $$ LANGUAGE plpgsql;
            CREATE TRIGGER {name} BEFORE INSERT OR UPDATE ON metering.{table}
                FOR EACH ROW EXECUTE FUNCTION metering.{name}();
        """)  # fmt: skip
        try:
            yield
        finally:
            await conn.execute(
                f"DROP TRIGGER {name} ON metering.{table}; DROP FUNCTION metering.{name}();"
            )
    finally:
        await conn.close()


async def test_a_1_mb_invalid_record_goes_to_the_dlq_cut_with_its_size_and_digest(
    infra: Infra, metering: MeteringWorker, policy: Stub
) -> None:
    """Item 6, and the other records whose DLQ copy would pass the producer's limit:
    a huge invalid protobuf value, a huge key, a huge bad event inside a batch."""
    user = new_user()
    big_json = b'{"userId": "' + b"x" * 1_000_000  # never closed
    big_pb = b"\xff" * 1_000_000
    big_event = usage(user, product="nul\0product")
    big_event.attributes["note"] = "n" * 700_000
    batch = usage_pb2.UsageBatch(events=[big_event, usage(user)])
    batch_headers = [(CONTENT_TYPE, f"{PROTOBUF}; type={USAGE_BATCH_TYPE}".encode())]
    long_key = user.encode() + b"#" * 200_000
    produce_big(infra.kafka_bootstrap, [
        (user.encode(), big_json, JSON_HEADERS),
        (user.encode(), big_pb, PB_HEADERS),
        (long_key, b"\xff", PB_HEADERS),
        (user.encode(), batch.SerializeToString(), batch_headers),
        pb(usage(user)),
    ])  # fmt: skip
    await eventually(used_of(policy, user), 2 * EVENT_MICROS, within=60)
    found: list[Message] = []
    deadline = time.monotonic() + 30
    while len(found) < 4 and time.monotonic() < deadline:
        found = await asyncio.to_thread(dlq, infra, user.encode())
    assert len(found) == 4, reasons(found)
    for original in (big_json, big_pb):
        cut = [m for m in found if (m.value() or b"") == original[:MAX_VALUE_BYTES]]
        assert len(cut) == 1
        h = headers_dict(cut[0].headers())
        assert h[ORIGINAL_SIZE_HEADER] == str(len(original))
        assert h[ORIGINAL_SHA256_HEADER] == hashlib.sha256(original).hexdigest()
        assert f"DLQ copy cut to the first {MAX_VALUE_BYTES:,}" in h[ERROR_HEADER]
    [json_copy] = [m for m in found if (m.value() or b"").startswith(b'{"userId"')]
    assert "not a UsageEvent in proto3 JSON" in headers_dict(json_copy.headers())[ERROR_HEADER]
    [bad_event] = [
        m for m in found if (m.value() or b"") == big_event.SerializeToString()[:MAX_VALUE_BYTES]
    ]
    assert headers_dict(bad_event.headers())[ERROR_HEADER].startswith(
        "events[0]: product: must not contain NUL (U+0000)"
    )
    [keyed] = [m for m in found if m.key() != user.encode()]
    assert keyed.key() == long_key[:MAX_KEY_BYTES]
    assert headers_dict(keyed.headers())[ORIGINAL_KEY_SIZE_HEADER] == str(len(long_key))
    assert metering.alive()


async def test_token_counts_and_sums_past_int64_are_dlq_reasons(
    infra: Infra, metering: MeteringWorker, policy: Stub
) -> None:
    """Item 7: outputTokens = 2^63-1 (JSON and protobuf), and a total that would pass
    the bound after many large-but-valid events (seeded near it in Postgres)."""
    user, full = new_user(), new_user()
    huge = usage(user)
    huge.input_tokens = 2**63 - 1
    produce(infra.kafka_bootstrap, [
        (user.encode(), as_json(usage(user), outputTokens=str(2**63 - 1)), JSON_HEADERS),
        pb(huge),
        pb(usage(user)),
    ])  # fmt: skip
    await eventually(used_of(policy, user), EVENT_MICROS)
    assert await dlq_reasons(infra, user, 2) == [
        "input_tokens: more than 1,000,000,000 (the most one event may report)",
        "output_tokens: more than 1,000,000,000 (the most one event may report)",
    ]

    now = datetime.now(UTC)
    conn = await asyncpg.connect(infra.database_url)
    try:
        for kind in (PeriodKind.DAY, PeriodKind.WEEK, PeriodKind.MONTH):
            p = period_of(kind, now, UTC_ZONE)
            await conn.execute(
                "INSERT INTO metering.totals (subject_kind, subject_id, period_kind,"
                " period_key, workspace_id, partition, period_start, period_end,"
                " used_micros, event_count, fallback_count)"
                " VALUES ('user', $1, $2, $3, 'tests', $4, $5, $6, $7, 1, 0)",
                full, kind.value, p.key, partition_of(full, PARTITIONS), p.start, p.end,
                MAX_SUM - EVENT_MICROS - 1,
            )  # fmt: skip
    finally:
        await conn.close()
    produce_usage(infra.kafka_bootstrap, [usage(full) for _ in range(3)])
    found = await dlq_reasons(infra, full, 2)
    assert all("it would take the day total of user_id past" in r for r in found)
    month = period_of(PeriodKind.MONTH, now, UTC_ZONE).key
    # DLQ records are published inside the transaction, before its COMMIT
    await eventually(lambda: db_total(infra, full, "month", month), MAX_SUM - 1)
    assert metering.alive()


@pytest.mark.parametrize(
    "field", ["user_id", "product", "model", "workspace_id", "request_id", "cost_center"]
)
async def test_a_nul_in_any_string_that_reaches_postgres_is_a_dlq_reason(
    infra: Infra, metering: MeteringWorker, policy: Stub, field: str
) -> None:
    """Item 8: "nul\\u0000user" as user_id (JSON, as reported) and a NUL in every
    other string PostgreSQL stores (protobuf)."""
    user = new_user()
    bad = usage(user)
    if field == "cost_center":
        bad.attributes["cost_center"] = "nul\0center"
    elif field != "user_id":
        setattr(bad, field, f"nul\0{field}")
    records = [pb(bad)]
    if field == "user_id":
        records = [(user.encode(), as_json(usage(user), userId=f"nul\0{user}"), JSON_HEADERS)]
    produce(infra.kafka_bootstrap, [*records, pb(usage(user)), pb(usage(user))])
    await eventually(used_of(policy, user), 2 * EVENT_MICROS)
    name = "attributes['cost_center']" if field == "cost_center" else field
    [reason] = await dlq_reasons(infra, user, 1)
    assert reason == f"{name}: must not contain NUL (U+0000)"


async def test_strings_past_what_a_btree_row_holds_are_refused_and_the_longest_allowed_count(
    infra: Infra, metering: MeteringWorker, policy: Stub
) -> None:
    """Item 9: a 4,000-character cost_center; 800 bytes in 200 characters; and an event
    with every key column at its bound (PostgreSQL must store it)."""
    user = new_user()
    long_center, wide_center = usage(user), usage(user)
    long_center.attributes["cost_center"] = "c" * 4000
    wide_center.attributes["cost_center"] = "\U0001d11e" * 200
    wide_product = usage(user, product="\u00e9" * 256)  # 512 bytes: allowed
    widest_model = usage(user, model="\u20ac" * 200)  # 600 bytes: refused
    produce_usage(infra.kafka_bootstrap, [long_center, wide_center, widest_model, wide_product])
    await eventually(used_of(policy, user), EVENT_MICROS)
    assert await dlq_reasons(infra, user, 3) == [
        "attributes['cost_center']: longer than 256 characters",
        "attributes['cost_center']: longer than 512 bytes of UTF-8",
        "model: longer than 512 bytes of UTF-8",
    ]
    at_bound = new_user()
    at_bound_user = at_bound + "\U0001d11e" * ((512 - len(at_bound)) // 4)
    event = usage(at_bound_user, product="\U0001d11f" * 128, model="\U0001d120" * 128)
    event.attributes["cost_center"] = "\U0001d121" * 128
    produce_usage(infra.kafka_bootstrap, [event])
    await eventually(used_of(policy, at_bound_user), 15_000)  # unknown model: fallback
    conn = await asyncpg.connect(infra.database_url)
    try:
        stored = await conn.fetchval(
            "SELECT micros FROM metering.rollups_hourly WHERE user_id = $1", at_bound_user
        )
    finally:
        await conn.close()
    assert stored == 15_000


async def test_a_row_postgres_refuses_sends_its_record_to_the_dlq_and_the_rest_count(
    infra: Infra, metering: MeteringWorker, policy: Stub
) -> None:
    """A record that can't be written is a DLQ record with PostgreSQL's reason, never
    a retry loop: a constraint validation does not know (a trigger stands for it)."""
    user, other = new_user(), new_user()
    refused = f"refused-{uuid.uuid4().hex[:8]}"
    when = f"NEW.product = '{refused}'"
    async with refusing(infra, "rollups_15m", when, "22023", "product refused"):
        events = [usage(other), usage(user), usage(user, product=refused), usage(user)]
        events += [usage(other) for _ in range(5)]
        produce_usage(infra.kafka_bootstrap, events)
        await eventually(used_of(policy, user), 2 * EVENT_MICROS)
        await eventually(used_of(policy, other), 6 * EVENT_MICROS)
        [reason] = await dlq_reasons(infra, user, 1)
    assert reason == (
        "PostgreSQL refused to store it: InvalidParameterValueError: qm test: product refused"
    )
    assert metering.alive()


async def test_a_crash_of_counting_ends_the_process_and_a_restart_counts_on(
    infra: Infra, metering: MeteringWorker, policy: Stub
) -> None:
    """An error that is neither a bad record nor an outage (here PostgreSQL's
    internal_error, from a trigger) ends the process with EXIT_CRASHED, for the
    supervisor to restart; nothing is lost."""
    user = new_user()
    try:
        async with refusing(infra, "totals", f"NEW.subject_id = '{user}'", "XX000", "crash"):
            produce_usage(infra.kafka_bootstrap, [usage(user)])
            deadline = time.monotonic() + 60
            while metering.alive() and time.monotonic() < deadline:  # noqa: ASYNC110
                await asyncio.sleep(0.1)
            assert metering.proc.poll() == EXIT_CRASHED, metering.log_tail()
            assert "metering stops: counting crashed (InternalServerError" in metering.log_tail(400)
    finally:
        if not metering.alive():
            metering.start()
    await eventually(used_of(policy, user), EVENT_MICROS, within=90)


async def test_json_that_is_not_an_object_is_named_and_unknown_fields_are_ignored(
    infra: Infra, metering: MeteringWorker, policy: Stub
) -> None:
    """JSON `[]`, `"hi"` and `null` get clear reasons; an unknown field, in JSON as in
    protobuf, is ignored (a producer on a newer schema keeps being counted)."""
    user = new_user()
    newer_json = as_json(usage(user), colour="red", tokensBreakdown={"audio": 3})
    newer_pb = usage(user).SerializeToString() + b"\x98\x06\x07"  # field 99
    produce(infra.kafka_bootstrap, [
        (user.encode(), b"[]", JSON_HEADERS),
        (user.encode(), b'"hi"', JSON_HEADERS),
        (user.encode(), b"null", JSON_HEADERS),
        (user.encode(), newer_json, JSON_HEADERS),
        (user.encode(), newer_pb, PB_HEADERS),
    ])  # fmt: skip
    await eventually(used_of(policy, user), 2 * EVENT_MICROS)
    assert await dlq_reasons(infra, user, 3) == [
        "not a UsageEvent in proto3 JSON: expected a JSON object, got a string",
        "not a UsageEvent in proto3 JSON: expected a JSON object, got an array",
        "not a UsageEvent in proto3 JSON: expected a JSON object, got null",
    ]


async def test_invalid_surrogates_and_utf8_in_strings_are_dlq_reasons(
    infra: Infra, metering: MeteringWorker, policy: Stub
) -> None:
    """Item 8's kin: a lone surrogate in JSON, bad UTF-8 in a protobuf string (no str
    can hold them, so they can't reach PostgreSQL: they are refused at decoding)."""
    user = new_user()
    event = usage(user, product="PRODUCT")
    bad_utf8 = event.SerializeToString().replace(b"PRODUCT", b"PR\xffDUCT")
    produce(infra.kafka_bootstrap, [
        (user.encode(), as_json(usage(user), model="gpt\ud800"), JSON_HEADERS),
        (user.encode(), bad_utf8, PB_HEADERS),
        pb(usage(user)),
    ])  # fmt: skip
    await eventually(used_of(policy, user), EVENT_MICROS)
    in_json, in_pb = await dlq_reasons(infra, user, 2)
    assert in_json == "not a UsageEvent in proto3 JSON: model: Unpaired surrogate"
    assert in_pb.startswith("not a UsageEvent in protobuf:")
    assert "bad UTF-8" in in_pb
