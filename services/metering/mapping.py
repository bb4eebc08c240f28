"""metering's wire messages ↔ its domain types, in one place.

The Cost API (`cost_pb2`), the price catalog API (`prices_pb2`) and the totals metering
publishes (`usage_pb2.UsageTotal`): a renamed field or a new enum value touches this
module only. Requests map without judging them (an unknown enum value is carried
through, for the domain input's `problems()` to name).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from google.protobuf.timestamp_pb2 import Timestamp

from quartermaster.v1 import cost_pb2, prices_pb2, usage_pb2
from quartermaster.wire import in_request, timestamp
from services.metering.cost_query import (
    Dimension,
    Granularity,
    Spender,
    TopSpendersQuery,
    UsageFilter,
    UsageQuery,
    UsageRow,
)
from services.metering.pricing import Price
from services.metering.revisions import CatalogFormat, LoadRecord, PriceLoad
from services.metering.state import Total, TotalKey

# -- totals published on qm.usage.totals.v1 --

PERIOD_KINDS = {
    "day": usage_pb2.PERIOD_KIND_DAY,
    "week": usage_pb2.PERIOD_KIND_WEEK,
    "month": usage_pb2.PERIOD_KIND_MONTH,
}


@functools.lru_cache(maxsize=4096)
def _period_stamp(at: datetime) -> Timestamp:
    """A period boundary as a Timestamp: few distinct ones, each used by every user."""
    return timestamp(at)


def total_message(
    key: TotalKey, total: Total, now: Timestamp, settled: list[str] | None = None
) -> usage_pb2.UsageTotal:
    """A user's absolute total of one period; `settled`: the request ids whose usage it
    now includes (policy settles their reservations)."""
    user, kind, period_key = key
    return usage_pb2.UsageTotal(
        workspace_id=total.workspace_id,
        subject_kind=usage_pb2.SUBJECT_KIND_USER,
        subject_id=user,
        period_kind=PERIOD_KINDS[kind],
        period_key=period_key,
        period_start=_period_stamp(total.period_start),
        period_end=_period_stamp(total.period_end),
        used_micros=total.used_micros,
        event_count=total.event_count,
        unpriced_event_count=total.fallback_count,
        updated_at=now,
        settled_request_ids=settled or [],
    )


def updated_at_part(now: Timestamp) -> bytes:
    """The `updated_at` part of every `total_value` of one publish, serialized once."""
    return usage_pb2.UsageTotal(updated_at=now).SerializeToString()


@functools.lru_cache(maxsize=4096)
def _period_part(workspace: str, kind: str, period_key: str, start: datetime,
                 end: datetime) -> bytes:  # fmt: skip
    """The fields every user's total of one period shares, serialized once."""
    return usage_pb2.UsageTotal(
        workspace_id=workspace,
        subject_kind=usage_pb2.SUBJECT_KIND_USER,
        period_kind=PERIOD_KINDS[kind],
        period_key=period_key,
        period_start=_period_stamp(start),
        period_end=_period_stamp(end),
    ).SerializeToString()


def total_value(
    key: TotalKey, total: Total, updated_at: bytes, settled: list[str] | None = None
) -> bytes:
    """`total_message(...).SerializeToString()`, for a publish of thousands of totals:
    the period's fields and `updated_at` (`updated_at_part`) are serialized once
    and the user's own appended. Serialized protobuf messages concatenated parse as
    one message with the fields of each ("Concatenating two messages merges them",
    https://protobuf.dev/programming-guides/encoding/#last-one-wins); no field is in
    two parts. A publish makes one per changed total: building each whole cost
    several times as much (docs/benchmarks.md)."""
    user, kind, period_key = key
    own = usage_pb2.UsageTotal(
        subject_id=user,
        used_micros=total.used_micros,
        event_count=total.event_count,
        unpriced_event_count=total.fallback_count,
    )
    if settled:  # most totals settle none: an empty list passed is work for nothing
        own.settled_request_ids.extend(settled)
    shared = _period_part(total.workspace_id, kind, period_key, total.period_start,
                          total.period_end)  # fmt: skip
    return shared + updated_at + own.SerializeToString()


# -- the Cost API (UsageService) --

_DIMENSIONS = {
    cost_pb2.DIMENSION_USER: Dimension.USER,
    cost_pb2.DIMENSION_PRODUCT: Dimension.PRODUCT,
    cost_pb2.DIMENSION_MODEL: Dimension.MODEL,
    cost_pb2.DIMENSION_COST_CENTER: Dimension.COST_CENTER,
    cost_pb2.DIMENSION_GROUP: Dimension.GROUP,
    cost_pb2.DIMENSION_MODEL_ID: Dimension.MODEL_ID,
}
_GRANULARITIES = {
    cost_pb2.GRANULARITY_HOUR: Granularity.HOUR,
    cost_pb2.GRANULARITY_DAY: Granularity.DAY,
    cost_pb2.GRANULARITY_MONTH: Granularity.MONTH,
    cost_pb2.GRANULARITY_TOTAL: Granularity.TOTAL,
}


def usage_filter(f: cost_pb2.UsageFilter) -> UsageFilter:
    """The filter as asked (unset times are None; nothing else is judged here).
    InvalidRequest for a time no datetime can hold."""
    return UsageFilter(
        start=in_request("filter.start", f.start) if f.HasField("start") else None,
        end=in_request("filter.end", f.end) if f.HasField("end") else None,
        user_ids=tuple(f.user_ids),
        products=tuple(f.products),
        models=tuple(f.models),
        cost_centers=tuple(f.cost_centers),
        group_ids=tuple(f.group_ids),
        nanos=(f.start.nanos % 1000, f.end.nanos % 1000),
    )


def usage_query(req: cost_pb2.QueryUsageRequest) -> UsageQuery:
    """The query as asked; unknown dimension codes stay ints, an unknown granularity None."""
    return UsageQuery(
        filter=usage_filter(req.filter),
        group_by=tuple(_DIMENSIONS.get(d, int(d)) for d in req.group_by),
        granularity=_GRANULARITIES.get(req.granularity),
        limit=req.limit,
    )


def top_spenders_query(req: cost_pb2.TopSpendersRequest) -> TopSpendersQuery:
    """The question as asked."""
    return TopSpendersQuery(filter=usage_filter(req.filter), limit=req.limit)


def usage_response(rows: Sequence[UsageRow], truncated: bool) -> cost_pb2.QueryUsageResponse:
    """The answer rows in order; `truncated`: more rows matched than were sent."""
    out = cost_pb2.QueryUsageResponse(truncated=truncated)
    for r in rows:
        fields: dict[str, Any] = {**r.counters, **r.dimensions}
        row = cost_pb2.UsageRow(**fields)
        if r.bucket_start is not None:
            row.bucket_start.CopyFrom(timestamp(r.bucket_start))
        out.rows.append(row)
    return out


def top_spenders_response(spenders: Sequence[Spender]) -> cost_pb2.TopSpendersResponse:
    """The spenders in order, micros in micro-credits, tokens by class."""
    return cost_pb2.TopSpendersResponse(
        spenders=[
            cost_pb2.Spender(user_id=s.user_id, micros=s.micros, events=s.events, **s.tokens)
            for s in spenders
        ]
    )


# -- the price catalog (PriceCatalogService) --

_FORMATS = {
    prices_pb2.CATALOG_FORMAT_YAML: CatalogFormat.YAML,
    prices_pb2.CATALOG_FORMAT_CSV: CatalogFormat.CSV,
}


def price_load(req: prices_pb2.LoadPricesRequest) -> PriceLoad:
    """The load as asked; an unknown or unset format is None."""
    return PriceLoad(
        document=req.document,
        format=_FORMATS.get(req.format),
        source=req.source,
        replace=req.replace,
        dry_run=req.dry_run,
        drop_yaml_only=req.drop_yaml_only,
    )


_INT64_MAX = 2**63 - 1


def model_price(model: str, start: datetime | None, p: Price) -> prices_pb2.ModelPrice:
    """A model's price version (`model` "" and `start` None: the fallback price)."""
    out = prices_pb2.ModelPrice(
        model=model, input=p.input, cached_input=p.cached_input, cache_write=p.cache_write,
        output=p.output, reasoning=p.reasoning, cache_write_1h=p.cache_write_1h,
        audio_input=p.audio_input, audio_output=p.audio_output,
    )  # fmt: skip
    if p.long_context is not None:
        # A revision stored before the threshold was bounded may hold one past int64;
        # past any event's input it never applies, which int64's largest says as well.
        out.long_context_above_input_tokens = min(p.long_context_above, _INT64_MAX)
        out.long_context.CopyFrom(model_price(model, None, p.long_context))
    for name, tier in p.service_tiers:
        out.service_tiers[name].CopyFrom(model_price(model, None, tier))
    if start is not None:
        out.effective_from.CopyFrom(timestamp(start))
    return out


def revision_message(r: LoadRecord, lines: Sequence[str]) -> prices_pb2.PriceRevision:
    """A revision with the change lines to show (all of them, or one model's)."""
    return prices_pb2.PriceRevision(
        revision=r.revision, loaded_at=timestamp(r.loaded_at), loaded_by=r.loaded_by,
        mode=r.mode, source=r.source, changes=list(lines),
    )  # fmt: skip
