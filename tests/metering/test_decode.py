from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest

from quartermaster.topics import CONTENT_TYPE, JSON, USAGE_BATCH_TYPE
from quartermaster.v1.usage_pb2 import UsageBatch, UsageEvent
from services.metering.decode import Decoded, InvalidUsage, decode, occurred_at, tokens
from tests.helpers import usage

PB = {CONTENT_TYPE: "application/x-protobuf"}
JS = {CONTENT_TYPE: JSON}
BATCH = {CONTENT_TYPE: f"application/x-protobuf; type={USAGE_BATCH_TYPE}"}
NOW = datetime(2026, 11, 22, 12, tzinfo=UTC)
AGE = timedelta(days=35)


def one(value: bytes, headers: dict[str, str]) -> UsageEvent:
    got = decode(value, headers, NOW, AGE)
    assert len(got.events) == 1
    assert not got.rejects
    return got.events[0]


def test_protobuf_round_trip() -> None:
    event = usage("u1", occurred_at=NOW, cached_input_tokens=200, reasoning_tokens=100)
    got = one(event.SerializeToString(), PB)
    assert got == event
    assert tokens(got).cached_input == 200


def test_protobuf_is_the_default_without_a_content_type() -> None:
    event = usage("u1", occurred_at=NOW)
    assert one(event.SerializeToString(), {}) == event


def test_proto3_json_mapping_as_kcat_would_send_it() -> None:
    raw = {
        "eventId": "e-1",
        "occurredAt": "2026-11-22T10:00:00Z",
        "userId": "u1",
        "product": "chat",
        "model": "gpt-5",
        "inputTokens": "1200",  # int64 as a string, per the mapping
        "outputTokens": 30,
        "attributes": {"cost_center": "R&D"},
    }
    got = one(json.dumps(raw).encode(), {CONTENT_TYPE: "application/json; charset=utf-8"})
    assert (got.user_id, got.input_tokens, got.output_tokens) == ("u1", 1200, 30)
    assert got.attributes["cost_center"] == "R&D"
    assert occurred_at(got).isoformat() == "2026-11-22T10:00:00+00:00"


def test_a_batch_keeps_its_good_events_and_rejects_each_bad_one_alone() -> None:
    good = [usage("u1", occurred_at=NOW) for _ in range(3)]
    bad = usage("u1", occurred_at=NOW, input_tokens=-1)
    batch = UsageBatch(events=[good[0], bad, good[1], good[2]])
    got = decode(batch.SerializeToString(), BATCH, NOW, AGE)
    assert got.events == good
    assert got.rejects == [
        (bad.SerializeToString(), "events[1]: input_tokens: must not be negative")
    ]


def test_a_batch_in_json() -> None:
    raw = {"events": [{"eventId": "a", "occurredAt": "2026-11-22T11:00:00Z", "userId": "u",
                       "product": "p", "model": "m"}]}  # fmt: skip
    got = decode(
        json.dumps(raw).encode(), {CONTENT_TYPE: f"{JSON}; type={USAGE_BATCH_TYPE}"}, NOW, AGE
    )
    assert isinstance(got, Decoded)
    assert [e.event_id for e in got.events] == ["a"]


@pytest.mark.parametrize(
    ("value", "headers", "message"),
    [
        (b"", PB, "empty record value"),
        (b"\xff\xff\xff", PB, "not a UsageEvent in protobuf"),
        (b"{not json", JS, "not a UsageEvent in proto3 JSON"),
        (b'{"userId": "u", "colour": "red"}', JS, "not a UsageEvent in proto3 JSON"),
        (b"x", {CONTENT_TYPE: "text/plain"}, "unsupported content-type 'text/plain'"),
        (b"x", {CONTENT_TYPE: "application/x-protobuf; type=Nope"}, "unsupported message type"),
        (
            b'{"events": []}',
            {CONTENT_TYPE: f"{JSON}; type={USAGE_BATCH_TYPE}"},
            "a UsageBatch with no",
        ),
    ],
)
def test_undecodable_records_name_the_problem(
    value: bytes, headers: dict[str, str], message: str
) -> None:
    with pytest.raises(InvalidUsage) as info:
        decode(value, headers, NOW, AGE)
    assert message in str(info.value)


def test_every_bad_field_is_named_at_once() -> None:
    event = usage("", event_id="", input_tokens=-5, output_tokens=10, reasoning_tokens=11)
    event.ClearField("occurred_at")
    with pytest.raises(InvalidUsage) as info:
        decode(event.SerializeToString(), PB, NOW, AGE)
    text = str(info.value)
    for part in (
        "event_id: must not be empty",
        "user_id: must not be empty",
        "occurred_at: must be set",
        "input_tokens: must not be negative",
        "reasoning_tokens: more than output_tokens",
    ):
        assert part in text


def test_cached_tokens_cannot_exceed_input() -> None:
    event = usage("u1", occurred_at=NOW, input_tokens=10, cached_input_tokens=11)
    with pytest.raises(InvalidUsage, match="cached_input_tokens: with cache_write_input_tokens"):
        decode(event.SerializeToString(), PB, NOW, AGE)


def test_events_from_the_future_are_refused_past_five_minutes() -> None:
    ok = usage("u1", occurred_at=NOW + timedelta(minutes=5))
    assert one(ok.SerializeToString(), PB) == ok
    late = usage("u1", occurred_at=NOW + timedelta(minutes=5, seconds=1))
    with pytest.raises(InvalidUsage, match="more than 5 minutes in the future"):
        decode(late.SerializeToString(), PB, NOW, AGE)


def test_events_older_than_the_horizon_are_refused() -> None:
    ok = usage("u1", occurred_at=NOW - timedelta(days=35))
    assert one(ok.SerializeToString(), PB) == ok
    old = usage("u1", occurred_at=NOW - timedelta(days=35, seconds=1))
    with pytest.raises(InvalidUsage, match="older than the 35-day horizon"):
        decode(old.SerializeToString(), PB, NOW, AGE)
