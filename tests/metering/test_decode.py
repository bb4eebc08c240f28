from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest
from google.protobuf import json_format

from quartermaster.topics import CONTENT_TYPE, JSON, USAGE_BATCH_TYPE
from quartermaster.v1.usage_pb2 import ServiceTier, UsageBatch, UsageEvent
from services.metering.bounds import MAX_EVENT_TOKENS
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
        (b"[]", JS, "not a UsageEvent in proto3 JSON: expected a JSON object, got an array"),
        (b'"hi"', JS, "expected a JSON object, got a string"),
        (b"null", JS, "expected a JSON object, got null"),
        (b"1", JS, "expected a JSON object, got a number"),
        (b"true", JS, "expected a JSON object, got true or false"),
        (b"\xff{}", JS, "not a UsageEvent in proto3 JSON: not UTF-8"),
        (b"[" * 100_000 + b"]" * 100_000, JS, "not a UsageEvent in proto3 JSON: nested too deeply"),
        (b'{"userId": "a\\ud800"}', JS, "Unpaired surrogate"),
        (b'{"outputTokens": "9223372036854775808"}', JS, "not a UsageEvent in proto3 JSON"),
        (b"[]", {CONTENT_TYPE: f"{JSON}; type={USAGE_BATCH_TYPE}"}, "got an array"),
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


def test_unknown_json_fields_are_ignored_as_protobuf_ignores_unknown_fields() -> None:
    """A producer on a newer schema keeps being counted, in either encoding."""
    event = usage("u1", occurred_at=NOW)
    raw = json.loads(json_format.MessageToJson(event))
    raw["colour"] = "red"
    raw["attributes"] = {"cost_center": "R&D"}
    got = one(json.dumps(raw).encode(), JS)
    assert (got.event_id, got.attributes["cost_center"]) == (event.event_id, "R&D")
    batch = {"events": [raw], "compression": "none"}
    headers = {CONTENT_TYPE: f"{JSON}; type={USAGE_BATCH_TYPE}"}
    assert len(decode(json.dumps(batch).encode(), headers, NOW, AGE).events) == 1
    # field 99 (a varint), unknown to this schema
    newer = event.SerializeToString() + b"\x98\x06\x07"
    assert one(newer, PB).event_id == event.event_id


def reason_of(event: UsageEvent) -> str:
    with pytest.raises(InvalidUsage) as info:
        decode(event.SerializeToString(), PB, NOW, AGE)
    return str(info.value)


STORED_TEXTS = ["user_id", "product", "model", "workspace_id", "request_id", "cost_center"]


def with_text(name: str, value: str) -> UsageEvent:
    event = usage("u1", occurred_at=NOW)
    if name == "cost_center":
        event.attributes["cost_center"] = value
    else:
        setattr(event, name, value)
    return event


def field_name(name: str) -> str:
    return "attributes['cost_center']" if name == "cost_center" else name


@pytest.mark.parametrize("name", STORED_TEXTS)
def test_a_nul_in_any_string_postgres_stores_is_named(name: str) -> None:
    reason = reason_of(with_text(name, "nul\0user"))
    assert f"{field_name(name)}: must not contain NUL (U+0000)" in reason


@pytest.mark.parametrize("name", STORED_TEXTS)
def test_every_string_postgres_keys_or_indexes_is_bounded_in_characters_and_bytes(
    name: str,
) -> None:
    assert f"{field_name(name)}: longer than 256 characters" in reason_of(
        with_text(name, "c" * 4000)
    )
    # 200 characters of 4 bytes: 800 bytes, past what four key columns may take each
    assert f"{field_name(name)}: longer than 512 bytes" in reason_of(with_text(name, "𝄞" * 200))
    # at the bounds: 256 ASCII characters, 128 four-byte characters (512 bytes)
    for value in ("c" * 256, "𝄞" * 128):
        assert one(with_text(name, value).SerializeToString(), PB)


@pytest.mark.parametrize(
    "name",
    ["input_tokens", "cached_input_tokens", "cache_write_input_tokens", "output_tokens",
     "reasoning_tokens"],
)  # fmt: skip
def test_token_counts_are_bounded(name: str) -> None:
    event = usage("u1", occurred_at=NOW, input_tokens=2**63 - 1, output_tokens=2**63 - 1)
    setattr(event, name, 2**63 - 1)
    assert f"{name}: more than {MAX_EVENT_TOKENS:,}" in reason_of(event)
    at_bound = usage("u1", occurred_at=NOW, input_tokens=MAX_EVENT_TOKENS)
    at_bound.output_tokens = MAX_EVENT_TOKENS
    setattr(at_bound, name, MAX_EVENT_TOKENS)
    assert one(at_bound.SerializeToString(), PB) == at_bound


def test_output_tokens_of_int64_max_in_json_is_a_reason() -> None:
    raw = json.loads(json_format.MessageToJson(usage("u1", occurred_at=NOW)))
    raw["outputTokens"] = str(2**63 - 1)
    with pytest.raises(InvalidUsage, match="output_tokens: more than 1,000,000,000"):
        decode(json.dumps(raw).encode(), JS, NOW, AGE)


@pytest.mark.parametrize(("fields", "named"), [
    ({"cache_write_input_tokens": 10, "cache_write_1h_input_tokens": 11},
     "cache_write_1h_input_tokens: more than cache_write_input_tokens"),
    ({"cached_input_tokens": 900, "audio_input_tokens": 101}, "audio_input_tokens: more than"),
    ({"reasoning_tokens": 400, "audio_output_tokens": 101}, "audio_output_tokens: with reasoning"),
    ({"audio_input_tokens": -1}, "audio_input_tokens: must not be negative"),
    ({"service_tier": 9}, "service_tier: unknown tier 9"),
])  # fmt: skip
def test_the_newer_token_classes_are_subsets_and_the_tier_is_known(
    fields: dict[str, int], named: str
) -> None:
    """input 1,000 and output 500 (tests.helpers.usage): each class within its superset."""
    event = usage("u1", occurred_at=NOW)
    for name, value in fields.items():
        setattr(event, name, value)
    assert named in reason_of(event)


def test_the_newer_classes_and_tier_reach_pricing() -> None:
    event = usage("u1", occurred_at=NOW, cached_input_tokens=100)
    event.cache_write_input_tokens, event.cache_write_1h_input_tokens = 300, 200
    event.audio_input_tokens, event.audio_output_tokens = 600, 500
    event.service_tier = ServiceTier.SERVICE_TIER_BATCH
    t = tokens(one(event.SerializeToString(), PB))
    assert (t.cache_write, t.cache_write_1h, t.audio_input, t.audio_output) == (300, 200, 600, 500)
    assert t.service_tier == "batch"


def test_the_catalogs_tier_names_are_the_protos() -> None:
    from services.metering.pricing import SERVICE_TIERS

    assert {
        number: name.removeprefix("SERVICE_TIER_").lower()
        for name, number in ServiceTier.items()
        if number > ServiceTier.SERVICE_TIER_STANDARD
    } == SERVICE_TIERS


def test_an_event_of_another_workspace_is_invalid_naming_both() -> None:
    """Issue 14, breaker #11: counted, another workspace's spend lands on ours."""
    foreign = usage("u1", occurred_at=NOW, workspace_id="acme", source="gw")
    with pytest.raises(InvalidUsage) as refused:
        decode(foreign.SerializeToString(), PB, NOW, AGE, "ws-here")
    assert str(refused.value) == (
        "workspace_id: 'acme' is another workspace; this metering counts workspace "
        "'ws-here' (QM_WORKSPACE_ID)"
    )
    assert refused.value.source == "gw"


def test_an_empty_or_the_same_workspace_is_this_one() -> None:
    for ws in ("", "ws-here"):
        event = usage("u1", occurred_at=NOW, workspace_id=ws)
        assert len(decode(event.SerializeToString(), PB, NOW, AGE, "ws-here").events) == 1


def test_in_a_batch_the_foreign_event_goes_alone() -> None:
    batch = UsageBatch(events=[usage("u1", occurred_at=NOW, workspace_id=ws)
                               for ws in ("", "acme", "ws-here")])  # fmt: skip
    got = decode(batch.SerializeToString(), BATCH, NOW, AGE, "ws-here")
    assert [e.workspace_id for e in got.events] == ["", "ws-here"]
    [(_, why)] = got.rejects
    assert why.startswith("events[1]: workspace_id: 'acme' is another workspace")


@pytest.mark.parametrize("headers", [PB, JS])
def test_a_refused_time_is_shown_to_the_nanosecond_given(headers: dict[str, str]) -> None:
    """The last nanosecond of a second, a minute past the five: `.999999999`, not cut
    to `.999999` (which would name another instant than the one sent)."""
    late = usage("u1", occurred_at=NOW + timedelta(minutes=6))
    late.occurred_at.nanos = 999_999_999
    early = usage("u1", occurred_at=NOW - AGE - timedelta(seconds=1))
    early.occurred_at.nanos = 1
    for event, said in (
        (late, "occurred_at: 2026-11-22T12:06:00.999999999+00:00 is more than 5 minutes "
               "in the future"),
        (early, "occurred_at: 2026-10-18T11:59:59.000000001+00:00 is older than the 35-day "
                "horizon"),
    ):  # fmt: skip
        value = (
            event.SerializeToString()
            if headers is PB
            else json_format.MessageToJson(event).encode()
        )
        with pytest.raises(InvalidUsage) as refused:
            decode(value, headers, NOW, AGE)
        assert said in str(refused.value)
