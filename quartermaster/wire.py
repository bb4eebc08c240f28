"""Small conversions between Python values and protobuf well-known types."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from google.protobuf.timestamp_pb2 import Timestamp

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


def from_timestamp(ts: Timestamp) -> datetime:
    """`ts` as an aware UTC datetime, its nanoseconds truncated to microseconds (never
    rounded up: 23:59:59.999999999 stays in its second, its day and its month)."""
    return ts.ToDatetime(tzinfo=UTC)
