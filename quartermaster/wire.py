"""Small conversions between Python values and protobuf well-known types."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from google.protobuf.timestamp_pb2 import Timestamp

from quartermaster.validation import InvalidRequest

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
NS_PER_SECOND = 1_000_000_000
_MICROSECOND = timedelta(microseconds=1)


def epoch_ns(at: datetime) -> int:
    """An aware datetime as integer nanoseconds since the epoch (exact: a datetime
    holds whole microseconds). Instants are compared as these integers, never as float
    seconds, which round up past a boundary from ~120 ns before it."""
    return (at - _EPOCH) // _MICROSECOND * 1000


def timestamp_ns(ts: Timestamp) -> int:
    """A protobuf Timestamp as integer nanoseconds since the epoch (exact)."""
    return ts.seconds * NS_PER_SECOND + ts.nanos


def timestamp(at: datetime) -> Timestamp:
    """`at` (aware) as a protobuf Timestamp."""
    # Exact integer arithmetic, and cheaper than Timestamp.FromDatetime, which metering
    # would call for every total it publishes.
    delta = at - _EPOCH
    return Timestamp(seconds=delta.days * 86_400 + delta.seconds, nanos=delta.microseconds * 1000)


# The times a Timestamp field may hold: 0001 to 9999 (what datetime and protobuf both
# take), with nanos below a second.
_MIN_SECONDS, _MAX_SECONDS = -62_135_596_800, 253_402_300_799


def from_timestamp(ts: Timestamp) -> datetime:
    """`ts` as an aware UTC datetime, its nanoseconds truncated to microseconds (never
    rounded up: 23:59:59.999999999 stays in its second, its day and its month);
    ValueError for one out of range (see `in_request`)."""
    return ts.ToDatetime(tzinfo=UTC)


def in_request(name: str, ts: Timestamp) -> datetime:
    """A request's Timestamp field `name` as an aware UTC datetime; InvalidRequest naming
    the field when it is out of range (years 1 to 9999, nanos 0 to 999,999,999), which
    the gRPC guard answers INVALID_ARGUMENT."""
    if not (_MIN_SECONDS <= ts.seconds <= _MAX_SECONDS and 0 <= ts.nanos < 1_000_000_000):
        raise InvalidRequest([f"{name}: not a time (years 1 to 9999, nanos below a second)"])
    return from_timestamp(ts)


def iso(ts: Timestamp) -> str:
    """`ts` in ISO 8601 (UTC) to the nanosecond it holds: `2026-11-30T23:59:59.999999999+00:00`
    (a datetime's isoformat stops at the microsecond); ValueError as `from_timestamp`."""
    sub = ts.nanos % 1000
    if not sub:
        return from_timestamp(ts).isoformat()
    text = from_timestamp(ts).isoformat(timespec="microseconds")
    return f"{text[:-6]}{sub:03d}{text[-6:]}"
