"""What the HTTP ingest makes of a request body: the events, or every bad one named;
and the Kafka records that carry the good ones.

A body is one `UsageEvent` object, a JSON array of them (`application/json`), or one
object a line (NDJSON: `application/x-ndjson`, `application/jsonl`), each in the proto3
JSON mapping, read by `json_event` and checked by `decode.validate`: the very checks a
Kafka record gets, so HTTP and Kafka JSON accept the same events.

Read twice over, when need be. First in one pass with msgspec (`plain_events`): the
body (or each NDJSON line) decoded straight into typed fields in C, checked by
`acceptance.plain` (the common case of the rules, stated once), made into UsageEvents.
Whatever that pass does not take (an unknown or snake_case field, a null, a number in
an odd form, an event `plain` doubts) is read again the careful way (`values_of`,
`events_of`), which accepts what it accepts and names every problem. The first pass only ever
decides "these are the events the careful way makes" (`tests/metering/
test_ingest_plain.py` checks that on generated bodies); it costs about two thirds
of the careful way an event (docs/benchmarks.md).

All or none: one bad event refuses the whole body (`BadBody`, naming each bad event by
its index, 0-based, and field), and nothing of it is sent. A producer fixes the events
named and sends the body again; since metering counts an `event_id` once (per user,
within QM_METERING_DEDUPE_HOURS), sending a body again after any failure is safe.

The records: the events grouped by their user's home partition (Kafka's murmur2 of
`user_id`, `partitioning.partition_of`) into one protobuf `UsageBatch` record per
partition and at most MAX_BATCH events, sent to that partition explicitly, so metering
counts them where they land (no forwarding hop). A lone event of a partition goes as a
plain `UsageEvent` keyed by its user.

Pure: no I/O.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime, timedelta

from quartermaster import json_input
from quartermaster.partitioning import partition_of
from quartermaster.topics import CONTENT_TYPE, PROTOBUF, SOURCE_HEADER, USAGE_BATCH_TYPE
from quartermaster.v1.usage_pb2 import UsageEvent
from services.metering.acceptance import Accepted
from services.metering.decode import InvalidUsage, validate_within
from services.metering.json_event import JsonEventError, event_from_json, unknown_fields
from services.metering.json_plain import Reading, plain_batch, read_body, read_one

JSON_TYPES = frozenset({"application/json"})
NDJSON_TYPES = frozenset({"application/x-ndjson", "application/ndjson", "application/jsonl"})
MAX_BATCH = 1000  # events a record: ~200 bytes each, well inside a broker's 1 MB
MAX_NAMED = 100  # bad events named in one answer (the rest are counted)
_EVENT = PROTOBUF.encode()
_BATCH = f"{PROTOBUF}; type={USAGE_BATCH_TYPE}".encode()


@dataclass(frozen=True, slots=True)
class Problem:
    """One thing wrong with a body: the event's `index` in it (None: the body as a
    whole), the JSON `field` at fault ("" when not one field) and `message`."""

    index: int | None
    field: str
    message: str

    def as_json(self) -> dict[str, object]:
        return {"index": self.index, "field": self.field, "message": self.message}


class BadBody(ValueError):
    """The body is refused, none of it sent: `problems` (at most MAX_NAMED) and
    `bad_events` (how many events were bad; 0 when the body itself is)."""

    def __init__(self, problems: list[Problem], bad_events: int = 0) -> None:
        self.problems = problems
        self.bad_events = bad_events
        first = problems[0]
        where = "body" if first.index is None else f"events[{first.index}]"
        field = f".{first.field}" if first.field else ""
        super().__init__(f"{where}{field}: {first.message}")


class UnsupportedType(ValueError):
    """The content type is none the ingest reads (the server answers 415)."""


def media_type(content_type: str) -> str:
    """`application/json; charset=utf-8` → `application/json` (lower case)."""
    return content_type.split(";", 1)[0].strip().lower()


def values_of(body: bytes, content_type: str) -> list[object]:
    """The JSON values of `body`: one per event. BadBody when the body is empty or not
    JSON; UnsupportedType for a content type other than JSON_TYPES / NDJSON_TYPES (an
    empty one is read as JSON)."""
    kind = media_type(content_type) or "application/json"
    if kind not in JSON_TYPES and kind not in NDJSON_TYPES:
        accepted = ", ".join(sorted(JSON_TYPES | NDJSON_TYPES))
        raise UnsupportedType(f"content-type {kind!r}: expected one of {accepted}")
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise BadBody([Problem(None, "", f"not UTF-8: {exc}")]) from None
    if not text.strip():
        raise BadBody([Problem(None, "", "empty: expected a UsageEvent, an array or NDJSON")])
    if kind in NDJSON_TYPES:
        return _lines(text)
    try:
        value = json_input.loads(text)
    except json.JSONDecodeError as exc:
        hint = " (one event a line is NDJSON: application/x-ndjson)" if exc.pos > 0 else ""
        raise BadBody([Problem(None, "", f"not JSON: {exc}{hint}")]) from None
    except RecursionError:
        raise BadBody([Problem(None, "", "nested too deeply")]) from None
    if isinstance(value, list):
        if not value:
            raise BadBody([Problem(None, "", "an empty array: no events")])
        return value
    return [value]


def _ndjson_lines(text: str) -> list[str]:
    """The non-blank lines of an NDJSON body: one event each (both readings split a
    body here, so they count its events alike)."""
    return [line for line in text.splitlines() if line.strip()]


def _lines(text: str) -> list[object]:
    """NDJSON: one value a non-blank line; every line that is not JSON is named (its
    index counts non-blank lines, as the events do)."""
    values: list[object] = []
    problems: list[Problem] = []
    bad = 0
    for line in _ndjson_lines(text):
        try:
            values.append(json_input.loads(line))
        except (json.JSONDecodeError, RecursionError) as exc:
            bad += 1
            if len(problems) < MAX_NAMED:
                problems.append(Problem(len(values) + bad - 1, "", f"not JSON: {exc}"))
    if problems:
        raise BadBody(problems, bad)
    return values


def plain_events(body: bytes, content_type: str, accepted: Accepted) -> list[UsageEvent] | None:
    """The events of `body` (JSON: one object or an array; or NDJSON), when every one
    reads and passes in the first pass (module docstring); None to read the body the
    careful way (`values_of`, `events_of`), which then accepts the same events or names
    what is wrong. `accepted`: the occurred_at range and workspace of `events_of`."""
    readings = _readings(body, media_type(content_type) or "application/json")
    return plain_batch(readings, accepted) if readings else None


def _readings(body: bytes, kind: str) -> list[Reading] | None:
    """The first pass's reading of each event of `body` (a media type of JSON_TYPES or
    NDJSON_TYPES); None when msgspec reads it not. NDJSON is split by `_ndjson_lines`,
    as `values_of` splits it (msgspec's own `decode_lines` also reads an object across
    two lines, or two on one, which `values_of` refuses)."""
    if kind in JSON_TYPES:
        return read_body(body)
    if kind not in NDJSON_TYPES:
        return None
    try:
        text = body.decode()
    except UnicodeDecodeError:
        return None
    readings = []
    for line in _ndjson_lines(text):
        reading = read_one(line)
        if reading is None:
            return None
        readings.append(reading)
    return readings


def events_of(
    values: list[object], now: datetime, max_age: timedelta, workspace: str = ""
) -> list[UsageEvent]:
    """Every value as a valid UsageEvent (occurred_at no more than 5 minutes ahead of
    `now` and within `max_age`, of `workspace` or naming none; "": any); BadBody
    naming each bad one when any is: the checks metering makes of a Kafka record."""
    events: list[UsageEvent] = []
    problems: list[Problem] = []
    bad = 0
    accepted = Accepted.at(now, max_age, workspace)
    for i, raw in enumerate(values):
        try:
            event = event_from_json(raw)
            validate_within(event, accepted)
            events.append(event)
        except JsonEventError as exc:
            bad += 1
            if len(problems) < MAX_NAMED:
                said = str(exc)  # "field: what is wrong": the field is named apart here
                said = said.removeprefix(f"{exc.field}: ") if exc.field else said
                problems.append(Problem(i, exc.field, said))
        except InvalidUsage as exc:
            bad += 1
            for line in exc.problems or (f": {exc}",):
                field, _, message = line.partition(": ")
                if len(problems) < MAX_NAMED:
                    problems.append(Problem(i, field, message))
    if problems:
        raise BadBody(problems, bad)
    return events


MAX_IGNORED = 20  # distinct ignored field names told in one answer


def ignored_fields(values: list[object]) -> list[str]:
    """The distinct keys of `values` (the events as `values_of` read them) that are no
    UsageEvent field: ignored, as metering ignores them (`json_event.unknown_fields`);
    sorted, at most MAX_IGNORED."""
    found: set[str] = set()
    for raw in values:
        found.update(unknown_fields(raw))
    return sorted(found)[:MAX_IGNORED]


def batch_value(events: list[UsageEvent]) -> bytes:
    """`UsageBatch(events=events).SerializeToString()`, written out: each event is field
    1 of the batch (tag 0x0A, its length as a varint, its bytes). Building the batch
    message copies every event first; this is 2-3 times faster (measured)."""
    parts = []
    for event in events:
        data = event.SerializeToString()
        n = len(data)
        prefix = bytearray(b"\x0a")
        while n > 0x7F:
            prefix.append((n & 0x7F) | 0x80)
            n >>= 7
        prefix.append(n)
        parts.append(bytes(prefix))
        parts.append(data)
    return b"".join(parts)


# (key, value, headers, partition) of one record for the usage topic
Record = tuple[bytes, bytes, list[tuple[str, str | bytes | None]], int]


def records_of(events: list[UsageEvent], partitions: int, source: str) -> list[Record]:
    """The records carrying `events` to a usage topic of `partitions` partitions: one
    per home partition (MAX_BATCH events at most), with the `qm-source` header
    `source` (the reporter's credential name: metering's DLQ limit counts a bad
    record under it)."""
    by_home: dict[int, list[UsageEvent]] = {}
    for event in events:
        by_home.setdefault(partition_of(event.user_id, partitions), []).append(event)
    out: list[Record] = []
    source_header = (SOURCE_HEADER, source.encode())
    for home, group in by_home.items():
        for start in range(0, len(group), MAX_BATCH):
            chunk = group[start : start + MAX_BATCH]
            key = chunk[0].user_id.encode()
            if len(chunk) == 1:
                value, kind = chunk[0].SerializeToString(), _EVENT
            else:
                value, kind = batch_value(chunk), _BATCH
            out.append((key, value, [(CONTENT_TYPE, kind), source_header], home))
    return out
