"""The first pass over JSON (`json_plain`, msgspec) only ever decides "these are the
events the careful way makes": on any HTTP body `ingest_body.plain_events` answers None
or exactly the events `values_of` + `events_of` make, a one-event JSON record is
decoded as without it, and the bodies producers send take it (no infrastructure)."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from quartermaster.topics import CONTENT_TYPE, JSON, USAGE_BATCH_TYPE
from quartermaster.v1.usage_pb2 import UsageEvent
from services.metering.acceptance import Accepted
from services.metering.decode import InvalidUsage, decode, validate
from services.metering.ingest_body import (
    BadBody,
    UnsupportedType,
    events_of,
    plain_events,
    records_of,
    values_of,
)
from tests.metering.test_json_event import events as any_events

NOW = datetime(2026, 11, 30, 12, 0, 0, 123456, tzinfo=UTC)
MAX_AGE = timedelta(days=2)
WORKSPACE = "acme"


def careful(body: bytes, content_type: str) -> list[UsageEvent] | str:
    """What the careful way makes of `body`: the events, or "refused"."""
    try:
        return events_of(values_of(body, content_type), NOW, MAX_AGE, WORKSPACE)
    except (BadBody, UnsupportedType):
        return "refused"


def first_pass(body: bytes, content_type: str) -> list[UsageEvent] | None:
    return plain_events(body, content_type, Accepted.at(NOW, MAX_AGE, WORKSPACE))


def agree(body: bytes, content_type: str) -> list[UsageEvent] | None:
    fast = first_pass(body, content_type)
    if fast is not None:
        assert fast == careful(body, content_type)
    return fast


def _stamp(seconds: int, fraction: str, zone: str) -> str:
    at = NOW + timedelta(seconds=seconds)
    return at.strftime("%Y-%m-%dT%H:%M:%S") + fraction + zone


# Events near every edge `decode.plain` draws: lengths about MAX_ID_LENGTH (256),
# non-ASCII, NUL and blank strings, counts as numbers and strings and their subsets'
# sums, occurred_at about the horizon and 5 minutes ahead, the workspace, enums by name
# and number (known and not).
_texts = st.one_of(
    st.sampled_from(["dave", "gpt-5", " ", "\t\x1c", "é", "a\x00b", "x" * 256, "x" * 257, ""]),
    st.text(max_size=8),
)
_counts = st.one_of(
    st.integers(0, 3000),
    st.integers(0, 3000).map(str),
    st.sampled_from([-1, 10**9, 10**9 + 1, "1000000001", "007", "-1", 2**63, "\u0661"]),
)
_times = st.builds(
    _stamp,
    st.one_of(
        st.integers(-2 * 86_400 - 5, 301),
        st.sampled_from([-2 * 86_400, -2 * 86_400 - 1, 299, 300, 0]),
    ),
    st.sampled_from(["", ".1", ".123456", ".999999999", ".1234567891"]),
    st.sampled_from(["Z", "+00:00", "-05:30", "+14:00", "z", "+0100"]),
)
near_edges: dict[str, st.SearchStrategy[Any]] = {
    "eventId": _texts, "userId": _texts, "product": _texts, "model": _texts,
    "workspaceId": st.sampled_from(["", WORKSPACE, "other", "é"]),
    "requestId": _texts, "source": _texts, "occurredAt": _times,
    "inputTokens": _counts, "cachedInputTokens": _counts, "outputTokens": _counts,
    "reasoningTokens": _counts, "cacheWriteInputTokens": _counts,
    "cacheWrite1hInputTokens": _counts, "audioInputTokens": _counts,
    "audioOutputTokens": _counts,
    "ending": st.sampled_from(["CALL_ENDING_CUT_OFF", "CALL_ENDING_FAILED", "NOPE", "", 0, 2, 9]),
    "serviceTier": st.sampled_from(["SERVICE_TIER_BATCH", "batch", "", 0, 1, 2, 9]),
    "attributes": st.one_of(
        st.dictionaries(st.sampled_from(["cost_center", "team"]), _texts, max_size=2),
        st.just({"cost_center": 5}),
    ),
}  # fmt: skip
_required = {
    "eventId": st.text(min_size=1, max_size=8).filter(lambda t: not t.isspace()),
    "userId": st.sampled_from(["dave", "erin", "u-1"]),
    "product": st.just("chat"),
    "model": st.just("gpt-5"),
    "occurredAt": st.builds(_stamp, st.integers(-3600, 0), st.just(""), st.just("Z")),
}
near_valid = st.builds(
    lambda required, rest: {**required, **rest},
    st.fixed_dictionaries(_required),
    st.fixed_dictionaries({}, optional=near_edges),
)
one_edge = st.builds(
    lambda required, edge: {**required, **edge},
    st.fixed_dictionaries(_required),
    st.one_of(*(st.fixed_dictionaries({k: v}) for k, v in near_edges.items())),
)
bodies_events = st.one_of(
    st.lists(one_edge, min_size=1, max_size=3),
    st.lists(near_valid, min_size=1, max_size=3),
    st.lists(st.one_of(near_valid, any_events), min_size=1, max_size=4),
)


def _body(events: list[dict[str, Any]], shape: str) -> tuple[bytes, str]:
    if shape == "ndjson":
        lines = "\n".join(json.dumps(e, ensure_ascii=False) for e in events)
        return lines.encode("utf-8", "surrogatepass"), "application/x-ndjson"
    value: object = events[0] if shape == "object" else events
    return json.dumps(value).encode(), "application/json"


@settings(max_examples=200, deadline=None)
@given(bodies_events, st.sampled_from(["array", "object", "ndjson"]))
def test_the_first_pass_makes_what_the_careful_way_makes(
    events: list[dict[str, Any]], shape: str
) -> None:
    body, content_type = _body(events, shape)
    agree(body, content_type)


@settings(max_examples=200, deadline=None)
@given(st.fixed_dictionaries(_required), st.binary(max_size=4), st.integers(0, 200))
def test_a_mangled_body_is_never_read_otherwise(
    required: dict[str, Any], junk: bytes, at: int
) -> None:
    body = json.dumps([required, required]).encode()
    at %= len(body)
    for mangled in (body[:at] + junk + body[at:], body[:at] + body[at + 1 :]):
        agree(mangled, "application/json")
        agree(mangled, "application/x-ndjson")


def test_what_producers_send_takes_the_first_pass() -> None:
    event = {
        "eventId": "e-1", "occurredAt": _stamp(-60, ".123456789", "+01:00"),
        "userId": "dave", "product": "cli", "model": "gpt-5", "inputTokens": "12000",
        "cachedInputTokens": 2000, "outputTokens": 800, "reasoningTokens": "300",
        "workspaceId": WORKSPACE, "requestId": "r-1", "source": "gw",
        "attributes": {"cost_center": "r&d"}, "ending": "CALL_ENDING_CUT_OFF",
        "serviceTier": 2,
    }  # fmt: skip
    other = {**event, "eventId": "e-2", "userId": "erin", "occurredAt": _stamp(-1, "", "Z")}
    for shape in ("array", "object", "ndjson"):
        got = agree(*_body([event, other], shape))
        assert got is not None, shape
    got = agree(*_body([event, other], "array"))
    assert got is not None
    assert [e.event_id for e in got] == ["e-1", "e-2"]
    assert got[0].occurred_at.ToJsonString() == _stamp(-3660, ".123456789", "Z")
    assert got[0].service_tier == 2
    assert got[0].ending != 0


@pytest.mark.parametrize(
    ("event", "why"),
    [
        ({"event_id": "e"}, "a field under its proto name"),
        ({"futureField": 1}, "a field this schema lacks"),
        ({"inputTokens": None}, "a null"),
        ({"inputTokens": 12.0}, "an integral float"),
        ({"inputTokens": "-0"}, "a signed string"),
        ({"occurredAt": "2026-11-30T11:00:00.1234567891Z"}, "ten fraction digits"),
        ({"ending": "1"}, "an enum as a decimal string"),
        ({"userId": "é"}, "a user id that is not ASCII"),
        ({"workspaceId": "other"}, "another workspace"),
    ],
)
def test_the_rest_is_read_the_careful_way(event: dict[str, Any], why: str) -> None:
    base = {"eventId": "e", "occurredAt": _stamp(-5, "", "Z"), "userId": "u",
            "product": "p", "model": "m"}  # fmt: skip
    body, content_type = _body([{**base, **event}], "array")
    assert first_pass(body, content_type) is None, why
    assert first_pass(*_body([base], "array")) is not None


def test_records_of_the_first_pass_are_the_careful_ones() -> None:
    events = [
        {"eventId": f"e-{i}", "occurredAt": _stamp(-i, ".5", "Z"), "userId": f"u-{i % 7}",
         "product": "chat", "model": "gpt-5", "inputTokens": str(i), "outputTokens": i}
        for i in range(50)
    ]  # fmt: skip
    body, content_type = _body(events, "array")
    fast = first_pass(body, content_type)
    slow = careful(body, content_type)
    assert fast is not None
    assert not isinstance(slow, str)
    assert records_of(fast, 3, "gw") == records_of(slow, 3, "gw")


def test_an_event_id_holding_nul_is_judged_alike_whatever_else_the_event_holds() -> None:
    # `acceptance.plain` never looks for NUL in event_id, while the full checks of
    # `decode` (require_id -> text_problem) refuse it: an event_id "\0" was accepted
    # when every other field was plain, and refused ("event_id: must not contain NUL")
    # when an unrelated field (a user id that is not ASCII, valid alone) sent the
    # event to the full checks. Kafka records (decode._validate) and both ways of
    # reading a body share the fault.
    base = {"eventId": "\u0000", "occurredAt": _stamp(-5, "", "Z"), "userId": "u",
            "product": "p", "model": "m"}  # fmt: skip
    alone = careful(*_body([base], "array"))
    with_other_user = careful(*_body([{**base, "userId": "é"}], "array"))
    assert careful(*_body([{**base, "eventId": "e", "userId": "é"}], "array")) != "refused"
    assert (alone == "refused") == (with_other_user == "refused"), (alone, with_other_user)
    agree(*_body([base], "array"))

    def refused(event: UsageEvent) -> bool:
        try:
            validate(event, NOW, MAX_AGE)
        except InvalidUsage:
            return True
        return False

    event = UsageEvent(event_id="\0", user_id="u", product="p", model="m")
    event.occurred_at.FromDatetime(NOW - timedelta(seconds=5))
    other = UsageEvent()
    other.CopyFrom(event)
    other.user_id = "é"
    assert refused(event)
    assert refused(other)
    assert alone == "refused"


def decodes_alike(value: bytes, content_type: str, reader: str) -> None:
    """`decode` of a Kafka record `value` gives the same events, rejects or refusal with
    the first pass as with decode's `reader` (`read_one`, `read_batch`) finding
    nothing, which leaves the record to the careful way."""
    headers = {CONTENT_TYPE: content_type}

    def outcome() -> object:
        try:
            return decode(value, headers, NOW, MAX_AGE, WORKSPACE)
        except InvalidUsage as exc:
            return ("refused", str(exc), exc.source, exc.problems)

    with_it = outcome()
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(f"services.metering.decode.{reader}", lambda _value: None)
        assert outcome() == with_it


@settings(max_examples=200, deadline=None)
@given(st.one_of(near_valid, one_edge, any_events))
def test_a_json_record_decodes_as_without_the_first_pass(event: dict[str, Any]) -> None:
    decodes_alike(json.dumps(event).encode(), JSON, "read_one")


def test_what_producers_send_to_kafka_takes_the_first_pass() -> None:
    event = {"eventId": "e", "occurredAt": _stamp(-5, ".5", "Z"), "userId": "u", "product": "p",
             "model": "m", "inputTokens": "10", "workspaceId": WORKSPACE}  # fmt: skip
    value = json.dumps(event).encode()
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr("services.metering.decode._read_event", None)  # never reached
        decoded = decode(value, {CONTENT_TYPE: JSON}, NOW, MAX_AGE, WORKSPACE)
    assert [e.input_tokens for e in decoded.events] == [10]


@settings(max_examples=150, deadline=None)
@given(bodies_events)
def test_a_json_batch_decodes_as_without_the_first_pass(events: list[dict[str, Any]]) -> None:
    value = json.dumps({"events": events}).encode()
    decodes_alike(value, f"{JSON}; type={USAGE_BATCH_TYPE}", "read_batch")


def test_a_plain_json_batch_takes_the_first_pass() -> None:
    events = [{"eventId": f"e-{i}", "occurredAt": _stamp(-i, "", "Z"), "userId": "u",
               "product": "p", "model": "m", "inputTokens": str(i)} for i in range(3)]  # fmt: skip
    value = json.dumps({"events": events}).encode()
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr("services.metering.decode.UsageBatch", None)  # never reached
        decoded = decode(
            value, {CONTENT_TYPE: f"{JSON}; type={USAGE_BATCH_TYPE}"}, NOW, MAX_AGE, WORKSPACE
        )
    assert [e.input_tokens for e in decoded.events] == [0, 1, 2]
    assert decoded.rejects == []
