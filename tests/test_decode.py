from __future__ import annotations

import json

import pytest

from quartermaster.topics import CONTENT_TYPE, JSON
from services.metering.decode import InvalidUsage, decode, occurred_at, tokens
from tests.helpers import usage

PB = {CONTENT_TYPE: "application/x-protobuf"}
JS = {CONTENT_TYPE: JSON}


def test_protobuf_round_trip() -> None:
    event = usage("u1", cached_input_tokens=200, reasoning_tokens=100)
    got = decode(event.SerializeToString(), PB)
    assert got == event
    assert tokens(got).cached_input == 200


def test_protobuf_is_the_default_without_a_content_type() -> None:
    event = usage("u1")
    assert decode(event.SerializeToString(), {}) == event


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
    got = decode(json.dumps(raw).encode(), {CONTENT_TYPE: "application/json; charset=utf-8"})
    assert (got.user_id, got.input_tokens, got.output_tokens) == ("u1", 1200, 30)
    assert got.attributes["cost_center"] == "R&D"
    assert occurred_at(got).isoformat() == "2026-11-22T10:00:00+00:00"


@pytest.mark.parametrize(
    ("value", "headers", "message"),
    [
        (b"", PB, "empty record value"),
        (b"\xff\xff\xff", PB, "not a UsageEvent in protobuf"),
        (b"{not json", JS, "not a UsageEvent in proto3 JSON"),
        (b'{"userId": "u", "colour": "red"}', JS, "not a UsageEvent in proto3 JSON"),
        (b"x", {CONTENT_TYPE: "text/plain"}, "unsupported content-type 'text/plain'"),
    ],
)
def test_undecodable_records_name_the_problem(
    value: bytes, headers: dict[str, str], message: str
) -> None:
    with pytest.raises(InvalidUsage, match=None) as info:
        decode(value, headers)
    assert message in str(info.value)


def test_every_bad_field_is_named_at_once() -> None:
    event = usage("", event_id="", input_tokens=-5, output_tokens=10, reasoning_tokens=11)
    event.ClearField("occurred_at")
    with pytest.raises(InvalidUsage) as info:
        decode(event.SerializeToString(), PB)
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
    event = usage("u1", input_tokens=10, cached_input_tokens=11)
    with pytest.raises(InvalidUsage, match="cached_input_tokens: more than input_tokens"):
        decode(event.SerializeToString(), PB)
