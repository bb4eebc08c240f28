"""`json_event`'s fast path builds exactly the event protobuf's ParseDict builds, and
whatever it does not take goes to ParseDict: Kafka JSON and the HTTP ingest accept
the same things as before the fast path existed (no infrastructure)."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from google.protobuf import json_format
from google.protobuf.timestamp_pb2 import Timestamp
from hypothesis import given, settings
from hypothesis import strategies as st

from quartermaster.topics import CONTENT_TYPE, JSON, USAGE_BATCH_TYPE
from quartermaster.v1.usage_pb2 import CallEnding, ServiceTier, UsageBatch, UsageEvent
from services.metering.decode import InvalidUsage, decode
from services.metering.ingest_body import batch_value
from services.metering.json_event import JsonEventError, _fast, event_from_json, timestamp_of

_ENUM_FIELDS = {"ending": CallEnding, "serviceTier": ServiceTier, "service_tier": ServiceTier}


def _as_number(text: str) -> int | None:
    try:
        return int(text)  # "²" isdigit() but is no number; nor are 5000 digits
    except ValueError:
        return None


def reference(raw: Any) -> UsageEvent | str:
    """What ParseDict makes of `raw`: the event, or "error"; and "error" for an enum
    name or number the enum lacks (ParseDict with ignore_unknown_fields makes a name
    0, silently, and keeps a number)."""
    if isinstance(raw, dict):
        for key, enum in _ENUM_FIELDS.items():
            value, names, numbers = raw.get(key), set(enum.keys()), set(enum.values())
            if (
                isinstance(value, str)
                and value not in names
                and not (value.isdigit() and _as_number(value) in numbers)
            ):
                return "error"
            # an unknown number: ParseDict keeps it (open enums), metering refuses it
            if type(value) is int and value not in numbers:
                return "error"
            # true, 1.5, NaN: ParseDict makes them a number, metering refuses them
            if type(value) is bool or (type(value) is float and not value.is_integer()):
                return "error"
    event = UsageEvent()
    try:
        json_format.ParseDict(raw, event, ignore_unknown_fields=True)
    except (json_format.ParseError, RecursionError, AttributeError, TypeError):
        return "error"
    return event


def ours(raw: object) -> UsageEvent | str:
    try:
        return event_from_json(raw)
    except JsonEventError:
        return "error"


_digits = st.integers(min_value=0, max_value=9999)
timestamps = st.one_of(
    st.builds(
        lambda y, mo, d, h, mi, s, frac, tz: (
            f"{y:04d}-{mo:02d}-{d:02d}T{h:02d}:{mi:02d}:{s:02d}{frac}{tz}"
        ),
        st.integers(0, 10_000),
        st.integers(0, 13),
        st.integers(0, 32),
        st.integers(0, 24),
        st.integers(0, 60),
        st.integers(0, 61),
        st.sampled_from(["", ".1", ".123", ".123456", ".123456789", ".1234567891", "."]),
        st.sampled_from(["Z", "+00:00", "-05:30", "+14:00", "+99:99", "z", "", "+0100"]),
    ),
    st.text(max_size=30),
)
ints = st.one_of(
    st.integers(-(2**64), 2**64),
    st.integers(-1000, 10**12).map(str),
    st.sampled_from(["007", "-0", " 12", "1e3", "1.0", "", "١٢", "9" * 19, "-" + "9" * 19]),
    st.floats(allow_nan=False, allow_infinity=False),
    st.booleans(),
    st.none(),
)
strings = st.one_of(st.text(max_size=20), st.integers(), st.none(), st.sampled_from(["\ud800"]))
values: dict[str, st.SearchStrategy[Any]] = {
    "eventId": strings, "event_id": strings, "userId": strings, "user_id": strings,
    "product": strings, "model": strings, "workspaceId": strings, "requestId": strings,
    "source": strings, "occurredAt": timestamps, "occurred_at": timestamps,
    "inputTokens": ints, "input_tokens": ints, "outputTokens": ints,
    "cachedInputTokens": ints, "reasoningTokens": ints, "cacheWriteInputTokens": ints,
    "audioOutputTokens": ints,
    "ending": st.one_of(st.sampled_from(["CALL_ENDING_CUT_OFF", "NOPE", "", True, 1.5, 2.0]),
                        st.integers(-1, 6), st.none(), st.floats()),
    "serviceTier": st.one_of(st.sampled_from(["SERVICE_TIER_BATCH", "batch"]),
                             st.integers(-1, 6)),
    "attributes": st.one_of(st.dictionaries(st.text(max_size=5), st.text(max_size=5)),
                            st.dictionaries(st.text(max_size=3), st.integers()),
                            st.lists(st.text())),
    "unknownField": st.integers(), "[ext.field]": st.integers(),
}  # fmt: skip
good_times = st.builds(
    lambda y, mo, d, h, frac, tz: f"{y:04d}-{mo:02d}-{d:02d}T{h:02d}:59:59{frac}{tz}",
    st.integers(1, 9999), st.integers(1, 12), st.integers(1, 28), st.integers(0, 23),
    st.sampled_from(["", ".5", ".123456789", ".999999999"]),
    st.sampled_from(["Z", "+01:00", "-05:30", "+14:00", "-23:59"]),
)  # fmt: skip
good_ints = st.one_of(st.integers(-(2**63), 2**63 - 1), st.integers(0, 10**18 - 1).map(str))
good: dict[str, st.SearchStrategy[Any]] = {
    "eventId": st.text(max_size=10), "userId": st.text(max_size=10), "model": st.text(),
    "user_id": st.text(max_size=3), "occurredAt": good_times, "inputTokens": good_ints,
    "output_tokens": good_ints, "ending": st.sampled_from(["CALL_ENDING_FAILED", 4]),
    "attributes": st.dictionaries(st.text(max_size=5), st.text(max_size=5)),
    "other": st.integers(),
}  # fmt: skip
# Mostly plausible events (the fast path's) and anything at all (ParseDict's, mostly).
events = st.one_of(
    st.fixed_dictionaries({}, optional=good), st.fixed_dictionaries({}, optional=values)
)


@settings(max_examples=300, deadline=None)
@given(events)
def test_the_fast_path_agrees_with_parsedict(raw: dict[str, Any]) -> None:
    assert ours(raw) == reference(raw)


@settings(max_examples=100, deadline=None)
@given(st.one_of(st.lists(st.integers()), st.text(), st.integers(), st.none(), st.booleans()))
def test_anything_but_an_object_is_refused(raw: object) -> None:
    with pytest.raises(JsonEventError, match="expected a JSON object"):
        event_from_json(raw)


def test_what_producers_write_takes_the_fast_path() -> None:
    raw = {
        "eventId": "e1", "occurredAt": "2026-11-30T23:59:59.999999999+01:00",
        "userId": "dave", "product": "cli", "model": "gpt-5", "inputTokens": "12000",
        "outputTokens": 800, "attributes": {"cost_center": "r&d"},
        "ending": "CALL_ENDING_CUT_OFF", "service_tier": 2,
    }  # fmt: skip
    fast = _fast(raw)
    assert fast is not None
    assert fast == reference(raw)
    assert fast.occurred_at.ToJsonString() == "2026-11-30T22:59:59.999999999Z"


def test_a_refusal_names_the_field() -> None:
    with pytest.raises(JsonEventError) as refused:
        event_from_json({"userId": "dave", "inputTokens": "many"})
    assert refused.value.field == "inputTokens"  # the key as sent
    assert str(refused.value) == (
        'inputTokens: expected an integer (a JSON number or a decimal string), got "many"'
    )


def test_a_batch_written_out_is_the_batch_protobuf_writes() -> None:
    events = [UsageEvent(event_id="e" * n, user_id="u", input_tokens=n) for n in (1, 200, 20000)]
    assert batch_value(events) == UsageBatch(events=events).SerializeToString()


@settings(max_examples=500, deadline=None)
@given(st.one_of(timestamps, good_times))
def test_a_timestamp_read_is_the_one_protobuf_reads(text: str) -> None:
    read = timestamp_of(text)
    if read is None:
        return  # ParseDict decides (the fast path's test above)
    expected = Timestamp()
    expected.FromJsonString(text)
    assert read == (expected.seconds, expected.nanos)


def test_timestamps_are_read_past_the_remembered_seconds() -> None:
    texts = [f"2026-11-30T{h:02d}:{m:02d}:{s:02d}.5+01:00" for h in range(24)
             for m in range(0, 60, 3) for s in range(0, 60, 7)]  # fmt: skip
    assert len(texts) > 4096  # more than the remembered seconds: they are forgotten
    for text in texts * 2:
        expected = Timestamp()
        expected.FromJsonString(text)
        assert timestamp_of(text) == (expected.seconds, expected.nanos)


@pytest.mark.parametrize("value", [True, False, 1.5, -0.5, float("nan"), float("inf"), -1e999])
@pytest.mark.parametrize("key", ["ending", "serviceTier", "service_tier"])
def test_an_enum_that_is_no_name_or_integer_is_refused_naming_it(key: str, value: float) -> None:
    # ParseDict made true the enum's 1, 1.5 its 1 and NaN its 0 without a word, and
    # raised OverflowError for an infinity: a 500 at the ingest, an "internal error"
    # in metering's DLQ
    raw = {"eventId": "e", "occurredAt": "2026-11-30T11:00:00Z", "userId": "u",
           "product": "p", "model": "m", key: value}  # fmt: skip
    with pytest.raises(JsonEventError, match=r"is no (ending|tier): expected one of") as refused:
        event_from_json(raw)
    assert refused.value.field in ("ending", "service_tier")
    kafka_json = f"{JSON}; type={USAGE_BATCH_TYPE}"
    now = datetime(2026, 11, 30, 12, tzinfo=UTC)
    for record, content_type in ((raw, JSON), ({"events": [raw]}, kafka_json)):
        with pytest.raises(InvalidUsage, match=r"is no (ending|tier): expected one of"):
            decode(json.dumps(record).encode(), {CONTENT_TYPE: content_type}, now, timedelta(1))


@pytest.mark.parametrize("error", [OverflowError, TypeError, AttributeError, ValueError])
def test_parsedict_failing_otherwise_is_still_a_refusal(
    monkeypatch: pytest.MonkeyPatch, error: type[Exception]
) -> None:
    def fails(*_args: object, **_kwargs: object) -> None:
        raise error("from inside ParseDict")

    monkeypatch.setattr(json_format, "ParseDict", fails)
    raw = {"eventId": None, "userId": "u"}  # a null: not the fast path's
    with pytest.raises(JsonEventError, match=f"{error.__name__}: from inside ParseDict"):
        event_from_json(raw)
    with pytest.raises(InvalidUsage, match=f"{error.__name__}: from inside ParseDict"):
        decode(
            json.dumps({"events": [raw]}).encode(),
            {CONTENT_TYPE: f"{JSON}; type={USAGE_BATCH_TYPE}"},
            datetime(2026, 11, 30, tzinfo=UTC),
            timedelta(1),
        )
