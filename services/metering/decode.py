"""Decoding and validating records from `qm.usage.v1`.

A record is protobuf unless its `content-type` header says `application/json`, in
which case it is the proto3 JSON mapping of `UsageEvent` (what kcat or a Java gateway
sends). Anything wrong raises `InvalidUsage` naming every problem; the worker sends
the record to the DLQ with that text and goes on.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime

from google.protobuf import json_format
from google.protobuf.message import DecodeError

from quartermaster.topics import CONTENT_TYPE, JSON, PROTOBUF
from quartermaster.v1.usage_pb2 import UsageEvent
from services.metering.pricing import Tokens

MAX_ID_LENGTH = 256


class InvalidUsage(ValueError):
    """The record is not a usable UsageEvent; the message says why."""


def decode(value: bytes | None, headers: Mapping[str, str]) -> UsageEvent:
    if not value:
        raise InvalidUsage("empty record value")
    content_type = headers.get(CONTENT_TYPE, PROTOBUF).split(";")[0].strip().lower()
    event = UsageEvent()
    if content_type == JSON:
        try:
            json_format.Parse(value.decode("utf-8"), event)
        except (json_format.ParseError, UnicodeDecodeError) as exc:
            raise InvalidUsage(f"not a UsageEvent in proto3 JSON: {exc}") from None
    elif content_type == PROTOBUF:
        try:
            event.ParseFromString(value)
        except DecodeError as exc:
            raise InvalidUsage(f"not a UsageEvent in protobuf: {exc}") from None
    else:
        raise InvalidUsage(f"unsupported content-type {content_type!r}")
    validate(event)
    return event


def validate(event: UsageEvent) -> None:
    """Raise InvalidUsage listing every bad field of `event`."""
    problems: list[str] = []
    for name in ("event_id", "user_id", "product", "model"):
        value = getattr(event, name)
        if not value.strip():
            problems.append(f"{name}: must not be empty")
        elif len(value) > MAX_ID_LENGTH:
            problems.append(f"{name}: longer than {MAX_ID_LENGTH} characters")
    if not event.HasField("occurred_at"):
        problems.append("occurred_at: must be set")
    for name in ("input_tokens", "cached_input_tokens", "output_tokens", "reasoning_tokens"):
        if getattr(event, name) < 0:
            problems.append(f"{name}: must not be negative")
    if event.cached_input_tokens > event.input_tokens:
        problems.append("cached_input_tokens: more than input_tokens (it is their cached subset)")
    if event.reasoning_tokens > event.output_tokens:
        problems.append("reasoning_tokens: more than output_tokens (it is their reasoning subset)")
    if problems:
        raise InvalidUsage("; ".join(problems))


def occurred_at(event: UsageEvent) -> datetime:
    return event.occurred_at.ToDatetime(tzinfo=UTC)


def tokens(event: UsageEvent) -> Tokens:
    return Tokens(
        input=event.input_tokens,
        cached_input=event.cached_input_tokens,
        output=event.output_tokens,
        reasoning=event.reasoning_tokens,
    )
