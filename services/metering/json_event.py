"""A `UsageEvent` from its proto3 JSON mapping: what metering reads from a Kafka record
with `content-type: application/json` and what the HTTP ingest reads from a body, so
both accept exactly the same things.

protobuf's `json_format.ParseDict` is the definition, and slow (about 30 times the rest
of decoding one event: it is Python walking descriptors, and its RFC 3339 parsing is
`strptime`). Events as producers write them take a fast path here: every key a field's
JSON or proto name, strings as strings, integers as JSON numbers or decimal strings,
enums by name or number, `attributes` as an object of strings, `occurredAt` as
`YYYY-MM-DDTHH:MM:SS[.f{1,9}](Z|±HH:MM)`. Anything else (a null, an integral float,
a duplicate field, an odd timestamp, a string protobuf refuses) goes to ParseDict,
which accepts or refuses it and says why; so the fast path only ever decides "the same
event ParseDict would build" (`tests/metering/test_json_event.py` checks that on
generated input). Unknown fields are ignored, as ParseDict with `ignore_unknown_fields`.

Pure: no I/O.
"""

from __future__ import annotations

import functools
import json
import re
from datetime import datetime
from typing import Any

from google.protobuf import json_format

from quartermaster.json_input import LongInteger
from quartermaster.v1.usage_pb2 import CallEnding, ServiceTier, UsageEvent

_D = UsageEvent.DESCRIPTOR
_STRING, _INT64, _ENUM = 9, 3, 14  # FieldDescriptor.TYPE_*
# JSON name and proto name → (field name, kind)
_FIELDS: dict[str, tuple[str, int]] = {}
for _f in _D.fields:
    if _f.name in ("occurred_at", "attributes"):
        _FIELDS[_f.json_name] = _FIELDS[_f.name] = (_f.name, 0)
    else:
        _FIELDS[_f.json_name] = _FIELDS[_f.name] = (_f.name, _f.type)
ENUMS: dict[str, dict[str, int]] = {
    "ending": dict(CallEnding.items()),
    "service_tier": dict(ServiceTier.items()),
}
_ENUM_NUMBERS = {name: frozenset(values.values()) for name, values in ENUMS.items()}
_INT = re.compile(r"-?[0-9]{1,18}\Z")  # 18 digits: inside int64 without a range check
_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1

_EPOCH = datetime(1970, 1, 1)
# Timestamp's valid range (0001-01-01T00:00:00Z .. 9999-12-31T23:59:59Z)
_MIN_SECONDS, _MAX_SECONDS = -62_135_596_800, 253_402_300_799


class JsonEventError(ValueError):
    """The JSON is no UsageEvent: `field` is the JSON field at fault ("" when the
    whole value is: not an object), `str()` ParseDict's or our reason."""

    def __init__(self, message: str, field: str = "") -> None:
        super().__init__(message)
        self.field = field


_KINDS = {list: "an array", str: "a string", int: "a number", float: "a number",
          bool: "true or false", type(None): "null", LongInteger: "a number"}  # fmt: skip
_PARSE_FIELD = re.compile(r"Failed to parse (\w+) field")
MAX_REASON = 300  # characters of ParseDict's reason kept (it quotes the value)


def event_from_json(raw: object) -> UsageEvent:
    """The UsageEvent that `raw` (a value `json.loads` returned) maps to; JsonEventError
    naming the field when it maps to none (not an object, a field of the wrong type,
    a timestamp out of range, ...)."""
    if not isinstance(raw, dict):
        raise JsonEventError(f"expected a JSON object, got {_KINDS.get(type(raw), 'a value')}")
    event = _fast(raw)
    if event is not None:
        return event
    unknown = field_problem(raw)
    if unknown is not None:
        raise JsonEventError(*unknown)
    event = UsageEvent()
    try:
        json_format.ParseDict(raw, event, ignore_unknown_fields=True)
    except json_format.ParseError as exc:
        why = str(exc)
        found = _PARSE_FIELD.search(why)
        if found is not None and found.group(1) in raw:
            key = found.group(1)
            raise JsonEventError(*_wrong_type(key, raw[key], _REASON.search(why))) from None
        if len(why) > MAX_REASON:  # say, quoting a 5000-digit string
            why = f"{why[:MAX_REASON]}... ({len(why)} characters)"
        raise JsonEventError(why, found.group(1) if found else "") from None
    except RecursionError:
        raise JsonEventError("nested too deeply") from None
    except (ValueError, TypeError, AttributeError, ArithmeticError) as exc:
        # ParseDict failing otherwise than with ParseError (as it did with OverflowError
        # for an enum of 1e999): still the event's fault, named, never a 500
        raise JsonEventError(
            f"not a UsageEvent: {type(exc).__name__}: {exc}"[:MAX_REASON]
        ) from None
    return event


_EXPECTED = {
    _STRING: "a string",
    _INT64: "an integer (a JSON number or a decimal string)",
    _ENUM: "a name or an integer",
}
_EXPECTED_OF = {
    "occurred_at": "an RFC 3339 time with an offset, like 2026-11-30T12:00:00Z or "
    "2026-11-30T13:00:00.5+01:00",
    "attributes": "an object of strings",
}


_REASON = re.compile(r"field: (.*?)(?: at UsageEvent\.\w+)?\.?\Z", re.DOTALL)


def _wrong_type(key: str, value: object, reason: re.Match[str] | None) -> tuple[str, str]:
    """(reason, field) for the field `key` (either name) whose `value` ParseDict
    refused (`reason`: ParseDict's words, kept for a time out of range and a string it
    can't hold): what the field takes and what it got, under the key as sent
    (ParseDict's own words were "time data '2026-12' does not match format ..." for a
    time without its offset, "invalid literal for int() with base 10" for "ten")."""
    name, kind = _FIELDS.get(key, (key, -1))  # ParseDict names only fields it has
    expected = _EXPECTED_OF.get(name) or _EXPECTED.get(kind, "another value")
    try:
        shown = json.dumps(value)
    except (TypeError, ValueError):  # a LongInteger
        shown = str(value)
    if len(shown) > 64:
        shown = f"{shown[:64]}... ({len(shown)} characters)"
    if reason and type(value) is {_STRING: str, _INT64: int}.get(kind):
        # the right JSON type, a value protobuf can't hold: "Unpaired surrogate",
        # "Value out of range: 9223372036854775808"
        return f"{key}: {reason[1]}", key
    why = f"{key}: expected {expected}, got {shown}"
    if name == "occurred_at" and reason and "does not match format" not in reason[1]:
        why += f" ({reason[1]})"  # say, "year 0 is out of range"
    return why, key


def unknown_fields(raw: object) -> list[str]:
    """The keys of the event `raw` that are no UsageEvent field under either name: what
    ParseDict (and metering) ignores, so a producer on a newer schema keeps being
    counted, and what a misspelled count becomes (a count of 0) - worth telling."""
    if not isinstance(raw, dict):
        return []
    return [key for key in raw if key not in _FIELDS]


def field_problem(raw: dict[str, Any]) -> tuple[str, str] | None:
    """(reason, field) for what ParseDict would pass over in silence in the event
    `raw`: `long_integer`, then `unknown_enum_name`; None when neither is there."""
    return long_integer(raw) or unknown_enum_name(raw)


def batch_problem(raw: dict[str, Any]) -> str | None:
    """`field_problem` of each event of a UsageBatch `raw` ("events[i].reason"), or of
    `raw` itself when it has no list of events; None when there is none."""
    events = raw.get("events") if "events" in raw else None
    listed = events if isinstance(events, list) else [raw]
    for i, event in enumerate(listed):
        if not isinstance(event, dict):
            continue  # ParseDict names what is wrong with it
        found = field_problem(event)
        if found is not None:
            return f"events[{i}].{found[0]}" if listed is events else found[0]
    return None


def long_integer(raw: dict[str, Any]) -> tuple[str, str] | None:
    """(reason, field) for the first field of the event `raw` holding an integer too
    long for Python (a LongInteger of `json_input.loads`); None when none does. Named
    here: ParseDict drops one in an enum field without a word."""
    for key, value in raw.items():
        if type(value) is LongInteger and key in _FIELDS:
            return f"{key}: {value}, more than any field takes", key
    return None


_NOUNS = {"ending": "ending", "service_tier": "tier"}
_ENUM_TYPES = {"ending": "CallEnding", "service_tier": "ServiceTier"}


def unknown_enum_name(raw: dict[str, Any]) -> tuple[str, str] | None:
    """(reason, field) for the first enum field of the event `raw` whose value is a name
    (or decimal string) or a number UsageEvent's enum does not have, or no name or
    integer at all (true, 1.5, NaN, 1e999); None when there is none. ParseDict with
    `ignore_unknown_fields` (kept, for unknown fields) turns such a name into 0 without
    a word: `SERVICE_TIER_BACTH` was the standard tier, twice the
    batch price, where the same event in protobuf (an unknown number) is refused. An
    unknown number it keeps (proto3 enums are open), for `decode`'s checks to refuse
    with the same words as here: named first, so no other complaint hides it."""
    for key, value in raw.items():
        found = _FIELDS.get(key)
        if found is None or found[1] != _ENUM:
            continue
        name = found[0]
        if type(value) is bool or (type(value) is float and not value.is_integer()):
            # ParseDict made true the enum's 1, 1.5 its 1 and NaN its 0, without a
            # word, and raised OverflowError (an "internal error") for 1e999
            known = ", ".join(sorted(ENUMS[name]))
            noun = _NOUNS[name]
            return f"{name}: {json.dumps(value)} is no {noun}: expected one of {known}", name
        if type(value) is int:
            if value not in _ENUM_NUMBERS[name]:
                why = f"{name}: unknown {_NOUNS[name]} {value} (see {_ENUM_TYPES[name]})"
                return why, name
            continue
        if type(value) is not str:
            continue
        names = ENUMS[name]
        if value in names or _number(value) in _ENUM_NUMBERS[name]:
            continue
        known = ", ".join(sorted(names))
        return f"{name}: unknown {_NOUNS.get(name, 'value')} {value[:64]!r} (one of {known})", name
    return None


def _number(text: str) -> int | None:
    """The number a decimal string is, as ParseDict reads an enum's; None when it is
    none Python converts ("²" is a digit to isdigit(); 5000 digits are past the limit)."""
    if not text.isdigit():
        return None
    try:
        return int(text)
    except ValueError:
        return None


_SKIP = -1  # a key no field has: ignored, as ParseDict ignores it
Plan = tuple[tuple[str, int], ...]


@functools.lru_cache(maxsize=1024)
def _plan(keys: tuple[str, ...]) -> Plan | None:
    """(field name, kind) for each of `keys` in order; None when ParseDict must judge
    the key set (a field under both its names, extension syntax). Cached: producers
    send the same few key sets, and a plan saves a lookup per field of every event."""
    plan: list[tuple[str, int]] = []
    seen: set[str] = set()
    for key in keys:
        found = _FIELDS.get(key)
        if found is None:
            if key.startswith("["):  # extension syntax
                return None
            plan.append(("", _SKIP))
            continue
        if found[0] in seen:  # both its JSON and its proto name: ParseDict refuses it
            return None
        seen.add(found[0])
        plan.append(found)
    return tuple(plan)


def _fast(raw: dict[str, Any]) -> UsageEvent | None:
    """The event, when every field takes the fast path; None to let ParseDict decide."""
    plan = _plan(tuple(raw))
    if plan is None:
        return None
    kwargs: dict[str, Any] = {}
    at: tuple[int, int] | None = None
    for (name, kind), value in zip(plan, raw.values(), strict=True):
        kind_of = type(value)
        if kind == _STRING:
            if kind_of is not str:
                return None
            kwargs[name] = value
        elif kind == _INT64:
            if kind_of is int and _INT64_MIN <= value <= _INT64_MAX:
                kwargs[name] = value
            elif kind_of is str and (
                (value.isdigit() and value.isascii() and len(value) <= 18) or _INT.match(value)
            ):
                kwargs[name] = int(value)
            else:
                return None
        elif kind == _SKIP:
            continue
        elif kind == _ENUM and (number := _enum(name, value)) is not None:
            kwargs[name] = number
        elif name == "occurred_at" and kind_of is str and (ts := timestamp_of(value)) is not None:
            at = ts  # set after construction: a Timestamp of its own costs as much again
        elif name == "attributes" and kind_of is dict and _strings(value):
            kwargs[name] = value
        else:
            return None
    try:
        event = UsageEvent(**kwargs)
    except (ValueError, TypeError):  # say a lone surrogate in a string
        return None
    if at is not None:
        event.occurred_at.seconds, event.occurred_at.nanos = at
    return event


def _enum(name: str, value: object) -> int | None:
    if type(value) is str:
        return ENUMS[name].get(value)
    if type(value) is int and value in _ENUM_NUMBERS[name]:
        return value
    return None


def _strings(mapping: dict[Any, Any]) -> bool:
    return all(type(k) is str and type(v) is str for k, v in mapping.items())


def timestamp_of(text: str) -> tuple[int, int] | None:
    """`text` as Timestamp.FromJsonString reads it, for the plain RFC 3339 form
    `YYYY-MM-DDTHH:MM:SS[.f{1,9}](Z|±HH:MM)`, as (seconds, nanos); None for anything
    else (then ParseDict decides). The date and time of day are worked out once per
    distinct second (`_second`), the offset once per distinct offset (`_offset`): events
    arrive near now, so most share a second with the one before."""
    head = text[:19]
    seconds = _SECONDS.get(head)
    if seconds is None and (seconds := _second(head)) is None:
        return None
    if text[-1:] == "Z":
        fraction, offset = text[19:-1], 0
    else:
        found = _offset(text[-6:])
        if found is None:
            return None
        fraction, offset = text[19:-6], found
    if not fraction:
        nanos = 0
    elif (
        2 <= len(fraction) <= 10 and fraction[0] == "." and fraction.isascii()
        and fraction[1:].isdigit()
    ):  # fmt: skip
        # protobuf's own arithmetic, so a 9-digit fraction rounds as it does
        nanos = round(float("0" + fraction) * 1e9)
    else:
        return None
    seconds -= offset
    if not (_MIN_SECONDS <= seconds <= _MAX_SECONDS and 0 <= nanos < 1_000_000_000):
        return None
    return seconds, nanos


_DATE_TIME = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}")
_OFFSET = re.compile(r"([+-])([0-9]{2}):([0-9]{2})")


_SECONDS: dict[str, int] = {}  # `_second`'s answers (a dict: looked up per event)
_MAX_SECONDS_KEPT = 4096


def _second(text: str) -> int | None:
    """`YYYY-MM-DDTHH:MM:SS` as seconds since the epoch (before any offset), kept in
    `_SECONDS` (emptied when it holds _MAX_SECONDS_KEPT); None for another shape or an
    impossible date or time (the C parser checks the ranges as strptime does)."""
    if _DATE_TIME.fullmatch(text) is None:
        return None
    try:
        delta = datetime.fromisoformat(text) - _EPOCH
    except ValueError:
        return None
    if len(_SECONDS) >= _MAX_SECONDS_KEPT:
        _SECONDS.clear()
    seconds = _SECONDS[text] = delta.days * 86_400 + delta.seconds
    return seconds


@functools.lru_cache(maxsize=256)
def _offset(text: str) -> int | None:
    """`±HH:MM` as seconds east of UTC (any two digits each, as protobuf reads them);
    None for another shape."""
    m = _OFFSET.fullmatch(text)
    if m is None:
        return None
    east = (int(m[2]) * 60 + int(m[3])) * 60
    return east if m[1] == "+" else -east
