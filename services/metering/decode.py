"""Decoding and validating records from `qm.usage.v1`.

A record holds one `UsageEvent`, or several in a `UsageBatch` when its content-type
says `type=quartermaster.v1.UsageBatch`. It is protobuf unless the content-type is
`application/json` (the proto3 JSON mapping: what kcat or a Java gateway sends).
Anything wrong is named: a record that can't be read at all raises `InvalidUsage`;
inside a batch, each bad event is rejected alone and the good ones go on.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from google.protobuf import json_format
from google.protobuf.message import DecodeError, Message

from quartermaster.topics import CONTENT_TYPE, JSON, PROTOBUF, USAGE_BATCH_TYPE
from quartermaster.v1.usage_pb2 import UsageBatch, UsageEvent
from quartermaster.validation import MAX_ID_LENGTH, Problems
from quartermaster.wire import from_timestamp
from services.metering.pricing import Tokens

# An event dated further ahead than this is a clock or a bug, not usage.
MAX_FUTURE = timedelta(minutes=5)


class InvalidUsage(ValueError):
    """The record or event is not usable; the message says why."""


@dataclass
class Decoded:
    events: list[UsageEvent] = field(default_factory=list)
    # (the rejected event serialized alone, why) for bad events inside a batch
    rejects: list[tuple[bytes, str]] = field(default_factory=list)


def _content_type(headers: Mapping[str, str]) -> tuple[str, dict[str, str]]:
    main, *params = headers.get(CONTENT_TYPE, PROTOBUF).split(";")
    parsed = {}
    for p in params:
        k, _, v = p.partition("=")
        parsed[k.strip().lower()] = v.strip()
    return main.strip().lower(), parsed


def _parse(value: bytes, content_type: str, message: Message) -> None:
    name = message.DESCRIPTOR.name
    if content_type == JSON:
        try:
            json_format.Parse(value.decode("utf-8"), message)
        except (json_format.ParseError, UnicodeDecodeError) as exc:
            raise InvalidUsage(f"not a {name} in proto3 JSON: {exc}") from None
    elif content_type == PROTOBUF:
        try:
            message.ParseFromString(value)
        except DecodeError as exc:
            raise InvalidUsage(f"not a {name} in protobuf: {exc}") from None
    else:
        raise InvalidUsage(f"unsupported content-type {content_type!r}")


def decode(
    value: bytes | None, headers: Mapping[str, str], now: datetime, max_age: timedelta
) -> Decoded:
    """The valid events of a record, and the rejected ones of a batch."""
    if not value:
        raise InvalidUsage("empty record value")
    content_type, params = _content_type(headers)
    kind = params.get("type", "quartermaster.v1.UsageEvent")
    if kind == USAGE_BATCH_TYPE:
        batch = UsageBatch()
        _parse(value, content_type, batch)
        if not batch.events:
            raise InvalidUsage("a UsageBatch with no events")
        out = Decoded()
        accepted = Accepted.at(now, max_age)
        for i, event in enumerate(batch.events):
            try:
                _validate(event, accepted)
                out.events.append(event)
            except InvalidUsage as exc:
                out.rejects.append((event.SerializeToString(), f"events[{i}]: {exc}"))
        return out
    if kind != "quartermaster.v1.UsageEvent":
        raise InvalidUsage(f"unsupported message type {kind!r}")
    event = UsageEvent()
    _parse(value, content_type, event)
    validate(event, now, max_age)
    return Decoded(events=[event])


@dataclass(frozen=True)
class Accepted:
    """The occurred_at range accepted at one moment, in epoch seconds (worked out
    once per record, not once per event of a batch)."""

    earliest: float
    latest: float
    max_age_days: int

    @classmethod
    def at(cls, now: datetime, max_age: timedelta) -> Accepted:
        return cls(
            (now - max_age).timestamp(),
            now.timestamp() + MAX_FUTURE.total_seconds(),
            max_age.days,
        )


def validate(event: UsageEvent, now: datetime, max_age: timedelta) -> None:
    """Raise InvalidUsage listing every bad field of `event`."""
    _validate(event, Accepted.at(now, max_age))


def _validate(event: UsageEvent, accepted: Accepted) -> None:
    # The common case in few comparisons; anything unusual takes the careful path
    # below, which names every problem.
    event_id, user, product, model = event.event_id, event.user_id, event.product, event.model
    ts = event.occurred_at
    inp, cached, written = (
        event.input_tokens,
        event.cached_input_tokens,
        event.cache_write_input_tokens,
    )
    out, reasoning = event.output_tokens, event.reasoning_tokens
    if (
        0 < len(event_id) <= MAX_ID_LENGTH and 0 < len(user) <= MAX_ID_LENGTH
        and 0 < len(product) <= MAX_ID_LENGTH and 0 < len(model) <= MAX_ID_LENGTH
        and not (event_id.isspace() or user.isspace() or product.isspace() or model.isspace())
        and accepted.earliest <= ts.seconds + ts.nanos / 1e9 <= accepted.latest
        and cached >= 0 and written >= 0 and reasoning >= 0 and inp >= cached + written
        and out >= reasoning and event.HasField("occurred_at")
    ):  # fmt: skip
        return
    problems = Problems()
    for name, value in (
        ("event_id", event.event_id),
        ("user_id", event.user_id),
        ("product", event.product),
        ("model", event.model),
    ):
        problems.require_id(name, value)
    if not event.HasField("occurred_at"):
        problems.add("occurred_at", "must be set")
    else:
        # Compared as epoch seconds: building a datetime per event is the costliest
        # step of validation, so it is built only to word a complaint.
        at = epoch_seconds(event)
        if at > accepted.latest:
            when = from_timestamp(event.occurred_at).isoformat()
            problems.add("occurred_at", f"{when} is more than 5 minutes in the future")
        elif at < accepted.earliest:
            when = from_timestamp(event.occurred_at).isoformat()
            problems.add(
                "occurred_at", f"{when} is older than the {accepted.max_age_days}-day horizon"
            )
    for name, count in (
        ("input_tokens", event.input_tokens),
        ("cached_input_tokens", event.cached_input_tokens),
        ("output_tokens", event.output_tokens),
        ("reasoning_tokens", event.reasoning_tokens),
        ("cache_write_input_tokens", event.cache_write_input_tokens),
    ):
        if count < 0:
            problems.add(name, "must not be negative")
    cached, written = event.cached_input_tokens, event.cache_write_input_tokens
    if cached >= 0 and written >= 0 and 0 <= event.input_tokens < cached + written:
        problems.add(
            "cached_input_tokens",
            "with cache_write_input_tokens, more than input_tokens "
            "(they are its cached and cache-written subsets)",
        )
    if 0 <= event.output_tokens < event.reasoning_tokens:
        problems.add("reasoning_tokens", "more than output_tokens (it is their reasoning subset)")
    if problems:
        raise InvalidUsage("; ".join(problems.items))


def occurred_at(event: UsageEvent) -> datetime:
    return from_timestamp(event.occurred_at)


def epoch_seconds(event: UsageEvent) -> float:
    """occurred_at as seconds since the epoch (no datetime built)."""
    ts = event.occurred_at
    return ts.seconds + ts.nanos / 1e9


def tokens(event: UsageEvent) -> Tokens:
    return Tokens(
        input=event.input_tokens,
        cached_input=event.cached_input_tokens,
        output=event.output_tokens,
        reasoning=event.reasoning_tokens,
        cache_write=event.cache_write_input_tokens,
    )
