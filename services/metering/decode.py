"""Decoding and validating records from `qm.usage.v1`.

A record holds one `UsageEvent`, or several in a `UsageBatch` when its content-type
says `type=quartermaster.v1.UsageBatch`. It is protobuf unless the content-type is
`application/json` (the proto3 JSON mapping: what kcat or a Java gateway sends): a
JSON record, of one event or a batch, is read first in one pass (`json_plain`, msgspec)
and, when that pass does not take it whole, as before (`json_event`, ParseDict), which
accepts the same events or says why not.
Anything wrong is named: a record that can't be read at all raises `InvalidUsage`;
inside a batch, each bad event is rejected alone and the good ones go on. Unknown
fields are ignored in JSON as in protobuf (a producer on a newer schema is counted).
An event passes only within `bounds`: token counts, and every string PostgreSQL will
store (ids, workspace, request id, the cost_center attribute) short enough for its
keys and free of NUL.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from google.protobuf import json_format
from google.protobuf.message import DecodeError, Message

from quartermaster import json_input
from quartermaster.topics import CONTENT_TYPE, JSON, PROTOBUF, USAGE_BATCH_TYPE
from quartermaster.v1.usage_pb2 import UsageBatch, UsageEvent
from quartermaster.validation import MAX_ID_LENGTH, Problems
from quartermaster.wire import NS_PER_SECOND, from_timestamp, iso
from services.metering.acceptance import Accepted, plain
from services.metering.bounds import MAX_EVENT_TOKENS, MAX_KEY_BYTES, utf8_length
from services.metering.json_event import (
    MAX_REASON,
    JsonEventError,
    batch_problem,
    event_from_json,
)
from services.metering.json_plain import plain_batch, plain_event, read_batch, read_one
from services.metering.pricing import SERVICE_TIERS, Tokens
from services.metering.state import COST_CENTER


class InvalidUsage(ValueError):
    """The record or event is not usable; the message says why. `source` is the
    `source` field of an event that parsed but is invalid ("" when nothing parsed):
    what the DLQ limit counts the record under (`dlq_limit.source_of`). `problems`:
    each bad field of an event that parsed, as `field: what is wrong` (the message
    joins them with "; ")."""

    def __init__(self, message: str, source: str = "", problems: tuple[str, ...] = ()) -> None:
        super().__init__(message)
        self.source = source
        self.problems = problems


@dataclass
class Decoded:
    events: list[UsageEvent] = field(default_factory=list)
    # (the rejected event serialized alone, why) for bad events inside a batch
    rejects: list[tuple[bytes, str]] = field(default_factory=list)
    # the `source` field of the (first) event: what the DLQ limit counts the record under
    source: str = ""


@functools.lru_cache(maxsize=256)
def _content_type(header: str) -> tuple[str, dict[str, str]]:
    """A content-type's type and parameters, parsed once per distinct header."""
    main, *params = header.split(";")
    parsed = {}
    for p in params:
        k, _, v = p.partition("=")
        parsed[k.strip().lower()] = v.strip()
    return main.strip().lower(), parsed


_JSON_KINDS = {list: "an array", str: "a string", int: "a number", float: "a number",
               bool: "true or false", type(None): "null"}  # fmt: skip


def _parse(value: bytes, content_type: str, message: Message) -> None:
    if content_type == JSON:
        _parse_json(value, message)
    elif content_type == PROTOBUF:
        try:
            message.ParseFromString(value)
        except DecodeError as exc:
            name = message.DESCRIPTOR.name
            raise InvalidUsage(f"not a {name} in protobuf: {exc}") from None
    else:
        raise InvalidUsage(f"unsupported content-type {content_type!r}")


def _load_json(value: bytes, where: str) -> object:
    try:
        return json_input.loads(value.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise InvalidUsage(f"{where}: not UTF-8: {exc}") from None
    except json.JSONDecodeError as exc:
        raise InvalidUsage(f"{where}: not JSON: {exc}") from None
    except RecursionError:
        raise InvalidUsage(f"{where}: nested too deeply") from None


def _read_event(value: bytes, content_type: str) -> UsageEvent:
    """One UsageEvent record: protobuf, or proto3 JSON read by `json_event` (the HTTP
    ingest reads its bodies with it too)."""
    if content_type == PROTOBUF:  # nearly every record: one call, no message emptied first
        try:
            return UsageEvent.FromString(value)
        except DecodeError as exc:
            raise InvalidUsage(f"not a UsageEvent in protobuf: {exc}") from None
    if content_type != JSON:
        event = UsageEvent()
        _parse(value, content_type, event)
        return event
    where = "not a UsageEvent in proto3 JSON"
    try:
        return event_from_json(_load_json(value, where))
    except JsonEventError as exc:
        raise InvalidUsage(f"{where}: {exc}") from None


def _parse_json(value: bytes, message: Message) -> None:
    """The proto3 JSON mapping of `message`. Unknown fields are ignored, as protobuf
    ignores unknown field numbers: a producer on a newer schema keeps being counted."""
    where = f"not a {message.DESCRIPTOR.name} in proto3 JSON"
    raw = _load_json(value, where)
    if not isinstance(raw, dict):
        got = _JSON_KINDS.get(type(raw), type(raw).__name__)
        raise InvalidUsage(f"{where}: expected a JSON object, got {got}")
    problem = batch_problem(raw)  # before ParseDict, which would pass it over
    if problem is not None:
        raise InvalidUsage(problem)
    try:
        json_format.ParseDict(raw, message, ignore_unknown_fields=True)
    except json_format.ParseError as exc:
        raise InvalidUsage(f"{where}: {exc}") from None
    except RecursionError:
        raise InvalidUsage(f"{where}: nested too deeply") from None
    except (ValueError, TypeError, AttributeError, ArithmeticError) as exc:
        # ParseDict failing otherwise than with ParseError: still the record's fault
        raise InvalidUsage(f"{where}: {type(exc).__name__}: {exc}"[:MAX_REASON]) from None


def decode(
    value: bytes | None,
    headers: Mapping[str, str],
    now: datetime,
    max_age: timedelta,
    workspace: str = "",
    accepted: Accepted | None = None,
) -> Decoded:
    """The valid events of a record, and the rejected ones of a batch. `workspace`
    is the one this metering counts (QM_WORKSPACE_ID): an event naming another is
    invalid, one naming none is this workspace's (the contract since v1: gateways of
    a single workspace leave it empty); "" accepts any (tests of decoding alone).
    `accepted`: `Accepted.at(now, max_age, workspace)` worked out once a batch."""
    if accepted is None:
        accepted = Accepted.at(now, max_age, workspace)
    if not value:
        raise InvalidUsage("empty record value")
    content_type, params = _content_type(headers.get(CONTENT_TYPE, PROTOBUF))
    kind = params.get("type", "quartermaster.v1.UsageEvent")
    if kind == USAGE_BATCH_TYPE:
        readings = read_batch(value) if content_type == JSON else None
        if readings is not None and (events := plain_batch(readings, accepted)) is not None:
            return Decoded(events=events, source=events[0].source)  # every one plain
        batch = UsageBatch()
        _parse(value, content_type, batch)
        if not batch.events:
            raise InvalidUsage("a UsageBatch with no events")
        out = Decoded(source=batch.events[0].source)
        for i, event in enumerate(batch.events):
            try:
                _validate(event, accepted)
                out.events.append(event)
            except InvalidUsage as exc:
                out.rejects.append((event.SerializeToString(), f"events[{i}]: {exc}"))
        return out
    if kind != "quartermaster.v1.UsageEvent":
        raise InvalidUsage(f"unsupported message type {kind!r}")
    if content_type == JSON:  # what foreign producers send: the first pass, when it takes it
        reading = read_one(value)
        if reading is not None and (read := plain_event(reading, accepted)) is not None:
            return Decoded(events=[read], source=read.source)
    event = _read_event(value, content_type)
    try:
        _validate(event, accepted)
    except InvalidUsage as exc:
        raise InvalidUsage(str(exc), event.source, exc.problems) from None
    return Decoded(events=[event], source=event.source)


def validate(event: UsageEvent, now: datetime, max_age: timedelta) -> None:
    """Raise InvalidUsage listing every bad field of `event`."""
    _validate(event, Accepted.at(now, max_age))


def validate_within(event: UsageEvent, accepted: Accepted) -> None:
    """`validate` with the accepted occurred_at range worked out once for many events."""
    _validate(event, accepted)


def _validate(event: UsageEvent, accepted: Accepted) -> None:
    center = event.attributes.get(COST_CENTER, "") if event.attributes else ""
    ts = event.occurred_at
    at = ts.seconds * NS_PER_SECOND + ts.nanos if event.HasField("occurred_at") else None
    if plain(event, at, center, accepted):
        return
    ws = event.workspace_id
    problems = Problems()
    _check_texts(event, problems)
    named = any(p.startswith("workspace_id:") for p in problems.items)
    if ws and accepted.workspace and ws != accepted.workspace and not named:
        # Counted here, another workspace's spend would be charged to one of ours
        # (user ids are not unique across workspaces) and its own metering would
        # never see it: the DLQ keeps it for whoever routed it here.
        problems.add(
            "workspace_id",
            f"{ws!r} is another workspace; this metering counts workspace "
            f"{accepted.workspace!r} (QM_WORKSPACE_ID)",
        )
    _check_time(event, accepted, problems)
    _check_tokens(event, problems)
    if problems:
        raise InvalidUsage("; ".join(problems.items), problems=tuple(problems.items))


def _check_text(problems: Problems, name: str, value: str, required: bool) -> None:
    """A string that reaches PostgreSQL (a column, a key, an index): not blank when
    `required`, at most MAX_ID_LENGTH characters and MAX_KEY_BYTES bytes, storable (no
    NUL, no lone surrogate: the platform's one wording, `quartermaster.validation`)."""
    if required and not value.strip():
        problems.add(name, "must not be empty")
        return
    found = len(problems.items)
    problems.require_text(name, value, MAX_ID_LENGTH)
    if len(problems.items) == found and utf8_length(value) > MAX_KEY_BYTES:
        problems.add(name, f"longer than {MAX_KEY_BYTES} bytes of UTF-8")


def _check_texts(event: UsageEvent, problems: Problems) -> None:
    # event_id is only hashed (state.id_hash), never stored, so its bytes may be any
    # UTF-8; its length, blankness and NUL are checked as every id's (a NUL is a bug).
    problems.require_id("event_id", event.event_id)
    for name, value in (
        ("user_id", event.user_id),
        ("product", event.product),
        ("model", event.model),
    ):
        _check_text(problems, name, value, required=True)
    _check_text(problems, "workspace_id", event.workspace_id, required=False)
    _check_text(problems, "request_id", event.request_id, required=False)
    center = event.attributes.get(COST_CENTER, "")
    _check_text(problems, f"attributes[{COST_CENTER!r}]", center, required=False)


def _check_time(event: UsageEvent, accepted: Accepted, problems: Problems) -> None:
    if not event.HasField("occurred_at"):
        problems.add("occurred_at", "must be set")
        return
    # Compared as epoch nanoseconds: building a datetime per event is the costliest
    # step of validation, so it is built only to word a complaint.
    at = epoch_nanos(event)
    if at > accepted.latest:
        when = _when(event)
        problems.add("occurred_at", f"{when} is more than 5 minutes in the future")
    elif at < accepted.earliest:
        when = _when(event)
        problems.add("occurred_at", f"{when} is older than the {accepted.max_age_days}-day horizon")


def _when(event: UsageEvent) -> str:
    """occurred_at in ISO 8601 to the nanosecond, or in seconds past year 9999."""
    try:
        return iso(event.occurred_at)
    except (ValueError, OverflowError):
        ts = event.occurred_at
        return f"{ts.seconds} s (+{ts.nanos} ns) after 1970-01-01"


def _check_tokens(event: UsageEvent, problems: Problems) -> None:
    for name, count in (
        ("input_tokens", event.input_tokens),
        ("cached_input_tokens", event.cached_input_tokens),
        ("output_tokens", event.output_tokens),
        ("reasoning_tokens", event.reasoning_tokens),
        ("cache_write_input_tokens", event.cache_write_input_tokens),
        ("cache_write_1h_input_tokens", event.cache_write_1h_input_tokens),
        ("audio_input_tokens", event.audio_input_tokens),
        ("audio_output_tokens", event.audio_output_tokens),
    ):
        if count < 0:
            problems.add(name, "must not be negative")
        elif count > MAX_EVENT_TOKENS:
            problems.add(name, f"more than {MAX_EVENT_TOKENS:,} (the most one event may report)")
    cached, written = event.cached_input_tokens, event.cache_write_input_tokens
    if cached >= 0 and written >= 0 and 0 <= event.input_tokens < cached + written:
        problems.add(
            "cached_input_tokens",
            "with cache_write_input_tokens, more than input_tokens "
            "(they are its cached and cache-written subsets)",
        )
    if 0 <= event.output_tokens < event.reasoning_tokens:
        problems.add("reasoning_tokens", "more than output_tokens (it is their reasoning subset)")
    if 0 <= written < event.cache_write_1h_input_tokens:
        why = "more than cache_write_input_tokens (it is their one-hour subset)"
        problems.add("cache_write_1h_input_tokens", why)
    uncached = event.input_tokens - cached - written
    if cached >= 0 and written >= 0 and 0 <= uncached < event.audio_input_tokens:
        why = "more than the input_tokens neither cached nor cache-written (its audio subset)"
        problems.add("audio_input_tokens", why)
    plain = event.output_tokens - event.reasoning_tokens
    if 0 <= plain < event.audio_output_tokens:
        problems.add("audio_output_tokens", "with reasoning_tokens, more than output_tokens")
    _check_enums(event, problems)


# Every enum field of UsageEvent: (field, its noun, the numbers known, the enum). proto3
# enums are open (an unknown number is kept), so each is checked on every path: an unknown
# tier can't be priced honestly, an unknown ending was counted as a call of no known kind.
_ENUM_FIELDS = tuple(
    (f.name, {"service_tier": "tier"}.get(f.name, f.name), frozenset(f.enum_type.values_by_number),
     f.enum_type.name) for f in UsageEvent.DESCRIPTOR.fields if f.enum_type is not None
)  # fmt: skip


def _check_enums(event: UsageEvent, problems: Problems) -> None:
    for name, noun, known, enum in _ENUM_FIELDS:
        value = getattr(event, name)
        if value not in known:
            problems.add(name, f"unknown {noun} {value} (see {enum})")


def occurred_at(event: UsageEvent) -> datetime:
    return from_timestamp(event.occurred_at)


def epoch_nanos(event: UsageEvent) -> int:
    """occurred_at as integer nanoseconds since the epoch (exact; no datetime built)."""
    ts = event.occurred_at
    return ts.seconds * NS_PER_SECOND + ts.nanos


def tokens(event: UsageEvent) -> Tokens:
    return Tokens(
        input=event.input_tokens,
        cached_input=event.cached_input_tokens,
        output=event.output_tokens,
        reasoning=event.reasoning_tokens,
        cache_write=event.cache_write_input_tokens,
        cache_write_1h=event.cache_write_1h_input_tokens,
        audio_input=event.audio_input_tokens,
        audio_output=event.audio_output_tokens,
        service_tier=SERVICE_TIERS.get(event.service_tier, ""),
    )
