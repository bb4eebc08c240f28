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
from typing import Annotated

import msgspec

from quartermaster import json_input
from quartermaster.partitioning import partition_of
from quartermaster.topics import CONTENT_TYPE, PROTOBUF, SOURCE_HEADER, USAGE_BATCH_TYPE
from quartermaster.v1.usage_pb2 import UsageEvent
from services.metering.acceptance import Accepted, plain
from services.metering.decode import InvalidUsage, validate_within
from services.metering.json_event import ENUMS, JsonEventError, event_from_json, timestamp_of
from services.metering.state import COST_CENTER

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


def _lines(text: str) -> list[object]:
    """NDJSON: one value a non-blank line; every line that is not JSON is named (its
    index counts non-blank lines, as the events do)."""
    values: list[object] = []
    problems: list[Problem] = []
    bad = 0
    for line in text.splitlines():
        if not line.strip():
            continue
        try:
            values.append(json_input.loads(line))
        except (json.JSONDecodeError, RecursionError) as exc:
            bad += 1
            if len(problems) < MAX_NAMED:
                problems.append(Problem(len(values) + bad - 1, "", f"not JSON: {exc}"))
    if problems:
        raise BadBody(problems, bad)
    return values


# A count as the proto3 JSON mapping writes an int64 (a decimal string) or as a number.
# Only digits: a sign, spaces or an exponent are the careful way's to judge.
_Digits = Annotated[str, msgspec.Meta(pattern=r"^[0-9]{1,18}\Z")]
_Count = int | _Digits
_JSON_NAMES = {f.name: f.json_name for f in UsageEvent.DESCRIPTOR.fields}


class _Reading(msgspec.Struct, rename=_JSON_NAMES, forbid_unknown_fields=True):
    """One event of a body as the first pass reads it: every field of UsageEvent under
    its JSON name (the mapping's canonical one), nothing else."""

    event_id: str = ""
    occurred_at: str = ""
    workspace_id: str = ""
    user_id: str = ""
    product: str = ""
    model: str = ""
    input_tokens: _Count = 0
    cached_input_tokens: _Count = 0
    output_tokens: _Count = 0
    reasoning_tokens: _Count = 0
    request_id: str = ""
    source: str = ""
    attributes: dict[str, str] = msgspec.field(default_factory=dict)
    cache_write_input_tokens: _Count = 0
    ending: int | str = 0
    cache_write_1h_input_tokens: _Count = 0
    audio_input_tokens: _Count = 0
    audio_output_tokens: _Count = 0
    service_tier: int | str = 0


_COUNTS = tuple(f.name for f in UsageEvent.DESCRIPTOR.fields if f.type == f.TYPE_INT64)
_READER = msgspec.json.Decoder(_Reading | list[_Reading])
_ONE = msgspec.json.Decoder(_Reading)
_NS = 1_000_000_000
_RARER = tuple(
    f.name for f in UsageEvent.DESCRIPTOR.fields
    if f.name not in ("event_id", "user_id", "product", "model", "input_tokens",
                      "output_tokens", "workspace_id", "source", "occurred_at", "attributes")
)  # fmt: skip
_ENDINGS, _TIERS = ENUMS["ending"], ENUMS["service_tier"]  # name → number


def plain_events(body: bytes, content_type: str, accepted: Accepted) -> list[UsageEvent] | None:
    """The events of `body` (JSON: one object or an array; or NDJSON), when every one
    reads and passes in the first pass (module docstring); None to read the body the
    careful way (`values_of`, `events_of`), which then accepts the same events or names
    what is wrong. `accepted`: the occurred_at range and workspace of `events_of`."""
    readings = _readings(body, media_type(content_type) or "application/json")
    if not readings:
        return None
    events = []
    for r in readings:
        event = _plain_event(r, accepted)
        if event is None:
            return None
        events.append(event)
    return events


def _plain_event(r: _Reading, accepted: Accepted) -> UsageEvent | None:
    for name in _COUNTS:
        count = getattr(r, name)
        if count.__class__ is str:
            setattr(r, name, int(count))
    if r.ending.__class__ is str:
        if (ending := _ENDINGS.get(r.ending)) is None:
            return None
        r.ending = ending
    if r.service_tier.__class__ is str:
        if (tier := _TIERS.get(r.service_tier)) is None:
            return None
        r.service_tier = tier
    at = timestamp_of(r.occurred_at)
    if at is None:
        return None
    # Every count and enum of `r` is a number by now, as `plain` and UsageEvent expect
    # (the ignores below: mypy can't follow the setattr).
    center = r.attributes.get(COST_CENTER, "")
    if not plain(r, at[0] * _NS + at[1], center, accepted):  # type: ignore[arg-type]
        return None
    try:
        # The fields nearly every event has, then the others only when set: each
        # argument costs the constructor as much as a field set afterwards.
        event = UsageEvent(
            event_id=r.event_id, user_id=r.user_id, product=r.product, model=r.model,
            input_tokens=r.input_tokens, output_tokens=r.output_tokens,  # type: ignore[arg-type]
            workspace_id=r.workspace_id, source=r.source,
        )  # fmt: skip
        for name in _RARER:
            value = getattr(r, name)
            if value:
                setattr(event, name, value)
        if r.attributes:
            event.attributes.update(r.attributes)
    except (ValueError, TypeError):  # say, a lone surrogate
        return None
    occurred_at = event.occurred_at  # fetched once: each fetch costs as much as a set
    occurred_at.seconds, occurred_at.nanos = at
    return event


def _readings(body: bytes, kind: str) -> list[_Reading] | None:
    """The first pass's reading of each event of `body` (a media type of JSON_TYPES or
    NDJSON_TYPES); None when msgspec reads it not. NDJSON is split into lines as
    `values_of` splits it (msgspec's own `decode_lines` also reads an object across
    two lines, or two on one, which `values_of` refuses)."""
    try:
        if kind in JSON_TYPES:
            read = _READER.decode(body)
            return read if isinstance(read, list) else [read]
        if kind in NDJSON_TYPES:
            return [_ONE.decode(line) for line in body.decode().splitlines() if line.strip()]
    except (msgspec.MsgspecError, ValueError):  # ValueError: not UTF-8
        pass
    return None


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
                problems.append(Problem(i, exc.field, str(exc)))
        except InvalidUsage as exc:
            bad += 1
            for line in exc.problems or (f": {exc}",):
                field, _, message = line.partition(": ")
                if len(problems) < MAX_NAMED:
                    problems.append(Problem(i, field, message))
    if problems:
        raise BadBody(problems, bad)
    return events


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
