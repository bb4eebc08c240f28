"""Issue 14, item 1: a JSON integer of more digits than Python converts (4300), and
NaN / Infinity / 1e999, refused naming the field on every path that reads usage JSON:
the HTTP ingest's body, metering's Kafka record (its DLQ reason), the reporter CLI's
line. json.loads raised a bare ValueError for the long integer: a 500, a traceback,
`internal error: ValueError`."""

from __future__ import annotations

import io
import json
from datetime import UTC, datetime, timedelta

import pytest

from quartermaster import json_input
from quartermaster.topics import CONTENT_TYPE, JSON, USAGE_BATCH_TYPE
from services.metering.decode import InvalidUsage, decode
from services.metering.ingest_body import BadBody, events_of, values_of
from services.metering.json_event import JsonEventError, event_from_json
from services.metering.report import Outcome, read_lines

NOW = datetime.now(UTC)
AGE = timedelta(days=35)
HUGE = "1" + "0" * 5000  # the breaker's: past sys.get_int_max_str_digits()


def text(**fields: str) -> str:
    """The breaker's event as JSON text, each of `fields` written raw (unquoted)."""
    event = {"eventId": "a1", "occurredAt": NOW.isoformat().replace("+00:00", "Z"),
             "userId": "u", "product": "p", "model": "gpt-5", "inputTokens": 10}  # fmt: skip
    body = json.dumps(event)[:-1]
    for key, raw in fields.items():
        body += f', "{key}": {raw}'
    return body + "}"


def test_loads_keeps_a_long_integer_as_a_marker_and_raises_what_json_raises() -> None:
    value = json_input.loads(f'{{"a": [{HUGE}, -{HUGE}, 7]}}')
    long, negative, seven = value["a"]
    assert (str(long), str(negative), seven) == ("a number of 5001 digits",) * 2 + (7,)
    with pytest.raises(ValueError, match="5001 digits"):
        int(long)
    with pytest.raises(json.JSONDecodeError):
        json_input.loads("{nope")
    with pytest.raises(UnicodeDecodeError):
        json_input.loads(b"\xff")
    assert not json_input.finite(json_input.loads("1e999"))
    assert json_input.finite(long)
    assert json_input.finite(1.5)


@pytest.mark.parametrize(
    ("raw", "field"),
    [
        ({"inputTokens": HUGE}, "inputTokens"),
        ({"inputTokens": f'"{HUGE}"'}, "inputTokens"),  # a decimal string of 5001 digits
        ({"ending": HUGE}, "ending"),  # ParseDict dropped it: ending 0, accepted
        ({"ending": f'"{HUGE}"'}, "ending"),  # int() of it raised inside our check
        ({"ending": '"\\u00b2"'}, "ending"),  # "²" isdigit(), int() refuses it
        ({"userId": HUGE}, "userId"),
        ({"occurredAt": HUGE}, "occurredAt"),
        ({"attributes": f'{{"a": {HUGE}}}'}, "attributes"),
        ({"outputTokens": "NaN"}, "outputTokens"),
        ({"outputTokens": "Infinity"}, "outputTokens"),
        ({"outputTokens": "1e999"}, "outputTokens"),
    ],
)
def test_each_path_names_the_field(raw: dict[str, str], field: str) -> None:
    body = text(**raw)
    with pytest.raises(JsonEventError) as caught:
        event_from_json(json_input.loads(body))
    assert caught.value.field == field
    assert len(str(caught.value)) < 400  # the value is not quoted whole
    # the HTTP ingest: 400 naming index and field (ingest_http answers BadBody so)
    for kind, data in (("application/json", f"[{text()}, {body}]"),
                       ("application/x-ndjson", f"{text()}\n{body}\n")):  # fmt: skip
        with pytest.raises(BadBody) as bad:
            events_of(values_of(data.encode(), kind), NOW, AGE)
        assert [(p.index, p.field) for p in bad.value.problems] == [(1, field)]
    # metering's Kafka record: a named DLQ reason, alone and in a JSON batch
    with pytest.raises(InvalidUsage, match=field):
        decode(body.encode(), {CONTENT_TYPE: JSON}, NOW, AGE)
    batch = f'{{"events": [{text()}, {body}]}}'.encode()
    with pytest.raises(InvalidUsage, match=field):
        decode(batch, {CONTENT_TYPE: f"{JSON}; type={USAGE_BATCH_TYPE}"}, NOW, AGE)
    # the reporter (--http and --kafka both send what read_lines keeps)
    err = io.StringIO()
    good = read_lines([body + "\n", text() + "\n"], AGE, Outcome(err))
    assert [number for number, _, _ in good] == [2]
    assert err.getvalue().startswith("line 1: ")
    assert field in err.getvalue()


def test_a_long_integer_in_an_unknown_field_is_ignored_as_the_field_is() -> None:
    event = event_from_json(json_input.loads(text(somethingNew=HUGE)))
    assert event.input_tokens == 10


def test_the_reporter_refuses_a_line_nested_too_deeply_and_goes_on() -> None:
    err = io.StringIO()
    good = read_lines(["[" * 100_000 + "\n", text() + "\n"], AGE, Outcome(err))
    assert len(good) == 1
    assert err.getvalue() == "line 1: not JSON: nested too deeply\n"


def test_a_whole_body_that_is_a_long_integer_is_named() -> None:
    with pytest.raises(BadBody) as bad:
        events_of(values_of(HUGE.encode(), "application/json"), NOW, AGE)
    assert bad.value.problems[0].message == "expected a JSON object, got a number"
