"""Small conversions between Python values and protobuf well-known types."""

from __future__ import annotations

from datetime import UTC, datetime

from google.protobuf.timestamp_pb2 import Timestamp

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def timestamp(at: datetime) -> Timestamp:
    """`at` (aware) as a protobuf Timestamp."""
    # Exact integer arithmetic, and cheaper than Timestamp.FromDatetime, which metering
    # would call for every total it publishes.
    delta = at - _EPOCH
    return Timestamp(seconds=delta.days * 86_400 + delta.seconds, nanos=delta.microseconds * 1000)


def from_timestamp(ts: Timestamp) -> datetime:
    return ts.ToDatetime(tzinfo=UTC)
