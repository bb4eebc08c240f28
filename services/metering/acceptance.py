"""Which events are accepted at a glance: the occurred_at range and workspace accepted
at one moment (`Accepted`), and `plain`, the rules' common case in a few comparisons.

`decode` checks every event of a Kafka record with `plain` first and words each problem
only when it says no; the HTTP ingest's first pass (`ingest_body.plain_events`) asks
it of an event before the event is a protobuf message at all. One statement of the
common case for both, so HTTP and Kafka accept the same events.

Pure: no I/O.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Protocol

from quartermaster.v1.usage_pb2 import CallEnding, ServiceTier
from quartermaster.validation import MAX_ID_LENGTH
from quartermaster.wire import epoch_ns
from services.metering.bounds import MAX_EVENT_TOKENS

# An event dated further ahead than this is a clock or a bug, not usage.
MAX_FUTURE = timedelta(minutes=5)
_ENDINGS = frozenset(CallEnding.values())
_TIERS = frozenset(ServiceTier.values())


@dataclass(frozen=True)
class Accepted:
    """The occurred_at range accepted at one moment, inclusive, in integer epoch
    nanoseconds (worked out once per record, not once per event of a batch; integers,
    so an instant a nanosecond past a bound is outside it)."""

    earliest: int
    latest: int
    max_age_days: int
    workspace: str = ""  # the one counted here ("": any)

    @classmethod
    def at(cls, now: datetime, max_age: timedelta, workspace: str = "") -> Accepted:
        return cls(epoch_ns(now - max_age), epoch_ns(now + MAX_FUTURE), max_age.days, workspace)


class EventFields(Protocol):
    """What `plain` reads of an event: a UsageEvent, or the HTTP ingest's reading of
    one (`ingest_body`) before it becomes a UsageEvent. Enums as numbers."""

    @property
    def event_id(self) -> str: ...
    @property
    def user_id(self) -> str: ...
    @property
    def product(self) -> str: ...
    @property
    def model(self) -> str: ...
    @property
    def workspace_id(self) -> str: ...
    @property
    def request_id(self) -> str: ...
    @property
    def input_tokens(self) -> int: ...
    @property
    def cached_input_tokens(self) -> int: ...
    @property
    def cache_write_input_tokens(self) -> int: ...
    @property
    def cache_write_1h_input_tokens(self) -> int: ...
    @property
    def audio_input_tokens(self) -> int: ...
    @property
    def output_tokens(self) -> int: ...
    @property
    def reasoning_tokens(self) -> int: ...
    @property
    def audio_output_tokens(self) -> int: ...
    @property
    def ending(self) -> int: ...
    @property
    def service_tier(self) -> int: ...


def plain(event: EventFields, at: int | None, center: str, accepted: Accepted) -> bool:
    """True when `event` is valid by the common case's few comparisons, no allocation:
    `at` its occurred_at in epoch nanoseconds (None: not set), `center` its cost_center
    attribute. False says only "look closer": `_validate` then names every problem (or
    finds none). The one statement of the rules' common case, for metering's records
    and the HTTP ingest's bodies alike."""
    # isascii() is O(1) in CPython and makes a length in characters a length in bytes.
    event_id, user, product, model = event.event_id, event.user_id, event.product, event.model
    ws, rid = event.workspace_id, event.request_id
    inp, cached, written = (
        event.input_tokens,
        event.cached_input_tokens,
        event.cache_write_input_tokens,
    )
    out, reasoning = event.output_tokens, event.reasoning_tokens
    return (
        at is not None and accepted.earliest <= at <= accepted.latest
        and 0 < len(event_id) <= MAX_ID_LENGTH and 0 < len(user) <= MAX_ID_LENGTH
        and 0 < len(product) <= MAX_ID_LENGTH and 0 < len(model) <= MAX_ID_LENGTH
        and len(ws) <= MAX_ID_LENGTH and len(rid) <= MAX_ID_LENGTH
        and len(center) <= MAX_ID_LENGTH
        and user.isascii() and product.isascii() and model.isascii() and ws.isascii()
        and rid.isascii() and center.isascii()
        and "\0" not in event_id and "\0" not in user and "\0" not in product
        and "\0" not in model
        and "\0" not in ws and "\0" not in rid and "\0" not in center
        and not (event_id.isspace() or user.isspace() or product.isspace() or model.isspace())
        and cached >= 0 and written >= 0 and reasoning >= 0 and inp >= cached + written
        and out >= reasoning and inp <= MAX_EVENT_TOKENS and out <= MAX_EVENT_TOKENS
        and event.ending in _ENDINGS
        and _plain_classes(event)
        and (not ws or not accepted.workspace or ws == accepted.workspace)
    )  # fmt: skip


def _plain_classes(event: EventFields) -> bool:
    """The newer classes are absent (nearly always) or consistent subsets; a known tier."""
    w1h, a_in, a_out = (
        event.cache_write_1h_input_tokens, event.audio_input_tokens, event.audio_output_tokens
    )  # fmt: skip
    tier = event.service_tier
    if not (w1h or a_in or a_out or tier):
        return True
    return (
        0 <= w1h <= event.cache_write_input_tokens and a_in >= 0 and a_out >= 0
        and event.input_tokens - event.cached_input_tokens - event.cache_write_input_tokens
        >= a_in
        and event.output_tokens - event.reasoning_tokens >= a_out
        and tier in _TIERS
    )  # fmt: skip
