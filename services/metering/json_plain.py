"""UsageEvents read from JSON in one pass, for the common case: msgspec decodes the
proto3 JSON mapping straight into typed fields (in C), and `plain_event` makes the
event when `acceptance.plain` passes it. Anything else, None: an unknown field or one
under its proto name, a null, a count in an odd form, an event `plain` doubts. The
caller then reads the JSON the careful way (`json_event`, `decode.validate`), which
accepts the same events or names each problem; so this pass only ever decides "the
event the careful way makes" (`tests/metering/test_ingest_plain.py` checks that on
generated input). Used by the HTTP ingest for its bodies and by metering for JSON
records, of one event or a UsageBatch.

Pure: no I/O.
"""

from __future__ import annotations

from typing import Annotated

import msgspec

from quartermaster.v1.usage_pb2 import UsageEvent
from services.metering.acceptance import Accepted, plain
from services.metering.json_event import ENUMS, timestamp_of
from services.metering.state import COST_CENTER

# A count as the proto3 JSON mapping writes an int64 (a decimal string) or as a number.
# Only digits: a sign, spaces or an exponent are the careful way's to judge.
_Digits = Annotated[str, msgspec.Meta(pattern=r"^[0-9]{1,18}\Z")]
_Count = int | _Digits
_JSON_NAMES = {f.name: f.json_name for f in UsageEvent.DESCRIPTOR.fields}


class Reading(msgspec.Struct, rename=_JSON_NAMES, forbid_unknown_fields=True):
    """One event as the first pass reads it (from an HTTP body or a Kafka record): every
    field of UsageEvent under its JSON name (the mapping's canonical one), nothing else."""

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


class _Batch(msgspec.Struct, forbid_unknown_fields=True):
    """A UsageBatch in the proto3 JSON mapping: `{"events": [...]}`."""

    events: list[Reading] = msgspec.field(default_factory=list)


_COUNTS = tuple(f.name for f in UsageEvent.DESCRIPTOR.fields if f.type == f.TYPE_INT64)
_READER = msgspec.json.Decoder(Reading | list[Reading])
_ONE = msgspec.json.Decoder(Reading)
_BATCH = msgspec.json.Decoder(_Batch)
_NS = 1_000_000_000
_RARER = tuple(
    f.name for f in UsageEvent.DESCRIPTOR.fields
    if f.name not in ("event_id", "user_id", "product", "model", "input_tokens",
                      "output_tokens", "workspace_id", "source", "occurred_at", "attributes")
)  # fmt: skip
_ENDINGS, _TIERS = ENUMS["ending"], ENUMS["service_tier"]  # name → number


def read_body(body: bytes | str) -> list[Reading] | None:
    """The readings of a JSON object or array of objects; None when msgspec reads none
    (not JSON, not UTF-8, an empty array, a value this pass does not take)."""
    try:
        read = _READER.decode(body)
    except (msgspec.MsgspecError, ValueError):  # ValueError: not UTF-8
        return None
    return (read or None) if isinstance(read, list) else [read]


def read_one(value: bytes | str) -> Reading | None:
    """The reading of one JSON object; None when msgspec reads none."""
    try:
        return _ONE.decode(value)
    except (msgspec.MsgspecError, ValueError):
        return None


def read_batch(value: bytes) -> list[Reading] | None:
    """The readings of a UsageBatch's events in JSON; None when msgspec reads none (or
    the batch has no events)."""
    try:
        return _BATCH.decode(value).events or None
    except (msgspec.MsgspecError, ValueError):
        return None


def plain_batch(readings: list[Reading], accepted: Accepted) -> list[UsageEvent] | None:
    """`plain_event` of every reading, or None when any of them is None: a body or a
    batch takes the first pass whole or not at all."""
    events = []
    for r in readings:
        event = plain_event(r, accepted)
        if event is None:
            return None
        events.append(event)
    return events


def plain_event(r: Reading, accepted: Accepted) -> UsageEvent | None:
    """The UsageEvent `r` reads as, when `acceptance.plain` passes it within
    `accepted`; None to let the careful way judge. Changes `r` (its counts and enums
    become numbers)."""
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
