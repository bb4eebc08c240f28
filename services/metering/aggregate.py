"""The metering arithmetic, without I/O: what one batch of one partition changes.

`plan()` prices records' events and sums them once per (user, minute, product, model,
cost center, workspace) as it reads them, keeping rejects apart and skipping records
already counted (offset below the stored one) and event_ids seen in the last
`dedupe_window`; the period totals, 15-minute rollups and burn-rate minutes of the
batch are derived from those sums.

An event is counted by its user's home partition (`partitioning.partition_of`: Kafka's
murmur2 of the user id), which holds the user's state. An event that arrives on
another partition (a producer with another partitioner, no key, a request-id key or an
explicit partition) is not counted here but *forwarded*: the plan lists it under its
home partition, and the processor sends it there inside the same fenced commit that
moves this partition's offset past it. Counting it stays exactly once: a crash before
that commit forwards it again on replay, and the home partition skips the second copy
by its event_id, as it skips any event reported twice within `dedupe_window`.

Exact throughout: instants are integers (epoch seconds for buckets and periods, epoch
nanoseconds for the price in force), never float seconds, which round an instant up
into the next period from ~120 ns before it; money is summed in exact pico-credits
and rounded once, where a total leaves metering (`state.Total.used_micros`).

`fold()` then computes the new absolute totals. The caller writes them, the seen ids
and the next offset to Postgres in one transaction, and only then updates the state
with `apply()` (see `processor.Processor`). One module, over the usual 400 lines, as
the hot loop reads better whole with the plan it fills and the fold that follows.
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import NamedTuple
from zoneinfo import ZoneInfo

from quartermaster.money import micros_of_picos
from quartermaster.partitioning import partition_of
from quartermaster.topics import CONTENT_TYPE, PROTOBUF
from quartermaster.v1.usage_pb2 import CallEnding, UsageEvent
from quartermaster.wire import NS_PER_SECOND
from services.metering.acceptance import Accepted
from services.metering.bounds import MAX_EVENT_MICROS, MAX_EVENT_PICOS, Headroom
from services.metering.decode import Decoded, InvalidUsage, decode
from services.metering.dlq_limit import source_of
from services.metering.pricing import SERVICE_TIERS, Price, PriceCatalog, picos_of
from services.metering.state import (
    COST_CENTER,
    HOUR,
    QUARTER,
    QUARTER_SECONDS,
    PartitionState,
    Rollup,
    RollupKey,
    Total,
    TotalKey,
    id_hash,
    periods_at,
)


class Record(NamedTuple):
    """One Kafka record of `qm.usage.v1`, as the consumer hands it over (a tuple:
    one is made per record, and a tuple is made several times faster than a frozen
    dataclass)."""

    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: Mapping[str, str]


@dataclass(frozen=True)
class Reject:
    """A record or event for the DLQ: its original bytes and why it was refused."""

    offset: int
    key: bytes | None
    value: bytes
    reason: str
    source: str = ""  # dlq_limit.source_of the record; "" when not worked out
    # the value's content-type header ("": none), so the DLQ copy can be replayed as is
    content_type: str = PROTOBUF


# (user_id, occurred_at's epoch minute, product, model, cost center, workspace): the
# finest grain a batch is summed at. Every 15-minute rollup, 15-minute period bucket and
# burn-rate minute is a union of these, so they are all derived from the sums exactly.
SumKey = tuple[str, int, str, str, str, str]
MINUTE = 60
COMPLETED = CallEnding.CALL_ENDING_COMPLETED  # endings above it are partial calls


@dataclass
class Plan:
    """What a batch of one partition adds, summed once per SumKey (not kept per event)."""

    next_offset: int
    rejects: list[Reject] = field(default_factory=list)
    new_seen: dict[int, float] = field(default_factory=dict)
    replayed: int = 0  # records below next_offset, counted before
    duplicates: int = 0  # events whose event_id was counted within the window
    valid_records: int = 0
    invalid_records: int = 0
    # dlq_limit.source_of → [valid records, invalid records] (what the DLQ limit counts)
    sources: dict[str, list[int]] = field(default_factory=dict)
    # SumKey → the ROLLUP_COUNTERS of the events counted under it (emptied once the
    # rest is derived from it)
    sums: dict[SumKey, list[int]] = field(default_factory=dict)
    # user → request ids whose usage this batch counts (they settle reservations)
    settled: dict[str, list[str]] = field(default_factory=dict)
    # derived from `sums` by Meter.plan:
    counted: int = 0
    micros: int = 0
    totals: dict[TotalKey, list[int]] = field(default_factory=dict)  # [picos, events, fallback]
    total_where: dict[TotalKey, tuple[str, datetime, datetime]] = field(default_factory=dict)
    rollups: dict[RollupKey, list[int]] = field(default_factory=dict)  # ROLLUP_COUNTERS
    rollup_workspace: dict[RollupKey, str] = field(default_factory=dict)
    # (user, epoch minute) → micros (each minute's exact spend rounded once)
    burn: dict[tuple[str, int], int] = field(default_factory=dict)
    workspaces: dict[str, str] = field(default_factory=dict)  # user → workspace
    unpriced: dict[str, int] = field(default_factory=dict)  # model → fallback-priced events
    # UsageEvent.ending → counted events of calls that ended early (INCOMPLETE, FAILED,
    # CUT_OFF); the rest of `counted` completed (or did not say)
    partial: dict[int, int] = field(default_factory=dict)
    # (home partition, source) → events that arrived on another partition, to forward
    forwards: dict[tuple[int, str], list[UsageEvent]] = field(default_factory=dict)

    def keys(self) -> set[TotalKey]:
        """The totals this plan changes."""
        return set(self.totals)

    def rollup_keys(self) -> set[RollupKey]:
        """The 15-minute rollups this plan changes."""
        return set(self.rollups)

    def days(self) -> set[datetime]:
        """The starts (UTC) of the workspace-zone days whose usage this plan changes."""
        return {where[1] for key, where in self.total_where.items() if key[1] == "day"}


class Meter:
    """Plans, folds and applies batches of one partition (see the module docstring).

    `catalog` may be replaced between batches (a new price revision): a batch is
    planned with one catalog."""

    def __init__(
        self,
        catalog: PriceCatalog,
        tz: ZoneInfo,
        partitions: int,
        default_workspace: str,
        max_age: timedelta,
        dedupe_window: timedelta,
        clock: Callable[[], datetime],
        reject_unpriced: bool = False,
    ) -> None:
        self._versions: dict[str, tuple[int, int, Price, bool]] = {}
        self.use_catalog(catalog)
        self.tz = tz
        self.partitions = partitions
        self.default_workspace = default_workspace
        self.max_age = max_age
        self.dedupe_window = dedupe_window
        self.clock = clock
        self.reject_unpriced = reject_unpriced  # else counted at the fallback price

    @property
    def catalog(self) -> PriceCatalog:
        return self._catalog

    def use_catalog(self, catalog: PriceCatalog) -> None:
        """Price the next batches with `catalog` (a new revision came in force)."""
        self._catalog = catalog
        self._versions = {}  # model → (from, until, price, fallback) last used

    def _price(self, model: str, at: int) -> tuple[Price, bool]:
        """The price in force for `model` at epoch nanosecond `at`, and whether it is
        the fallback (the version last used per model is kept: it nearly always holds)."""
        v = self._versions.get(model)
        if v is None or not v[0] <= at < v[1]:
            price, fallback, start, until = self._catalog.version_at(model, at)
            self._versions[model] = v = (start, until, price, fallback)
        return v[2], v[3]

    def plan(
        self,
        state: PartitionState,
        records: list[Record],
        refused: Mapping[int, str] | None = None,
        guarded: set[str] | None = None,
    ) -> Plan:
        """What `records` (one partition's, any order) add to `state`, summed per SumKey.
        Reads `state`, changes nothing; bad records and events become rejects (a bug in
        decoding too: it must not stall the partition), and so do the records at the
        offsets in `refused` (offset → why: PostgreSQL refused to store them) and an
        event costing more than MAX_EVENT_MICROS (exactly: MAX_EVENT_PICOS). The events
        of `guarded` users (whose sums a first plan found past MAX_SUM) are admitted
        one by one by a `Headroom`:
        `state` must then hold their totals and rollups. The hot loop of metering:
        every line here runs once per event."""
        now = self.clock()
        now_ts = now.timestamp()
        cutoff = now_ts - self.dedupe_window.total_seconds()
        plan = Plan(next_offset=state.next_offset)
        new_seen, sums, settled = plan.new_seen, plan.sums, plan.settled
        partial = plan.partial
        partitions, default_workspace = self.partitions, self.default_workspace
        headroom = Headroom(guarded, state, self.tz) if guarded else None
        accepted = Accepted.at(now, self.max_age, self.default_workspace)
        # First every record's events at home with their id hashes, then one bulk
        # look-up of those hashes in what the partition remembers (dedupe.SeenIds).
        home_events: list[tuple[Record, str, UsageEvent, int]] = []
        for rec in sorted(records, key=lambda r: r.offset):
            if rec.offset < state.next_offset:
                plan.replayed += 1
                continue
            plan.next_offset = rec.offset + 1
            decoded = self._decode(plan, rec, now, refused, accepted)
            if decoded is None:
                continue
            for event in decoded.events:
                user = event.user_id
                home = partition_of(user, partitions)
                if home != rec.partition:
                    _forward(plan, rec, event, home, decoded.source)
                    continue
                home_events.append((rec, decoded.source, event, id_hash(user, event.event_id)))
        seen = state.seen.seen_among([e[3] for e in home_events], cutoff)
        for rec, source, event, h in home_events:
            if h in new_seen or h in seen:
                plan.duplicates += 1
                continue
            user = event.user_id
            ts = event.occurred_at
            # Integers: the second's floor places the event in its minute (nanos are
            # never negative), the exact nanosecond picks its price.
            second = ts.seconds
            model = event.model
            price, fallback = self._price(model, second * NS_PER_SECOND + ts.nanos)
            if fallback and self.reject_unpriced:
                _unpriced(plan, rec, event, source)
                continue
            inp, cached, written = (
                event.input_tokens, event.cached_input_tokens, event.cache_write_input_tokens
            )  # fmt: skip
            out, reasoning = event.output_tokens, event.reasoning_tokens
            w1h, a_in, a_out = (
                event.cache_write_1h_input_tokens, event.audio_input_tokens,
                event.audio_output_tokens,
            )  # fmt: skip
            if event.service_tier:  # batch, flex, priority: the tier's prices
                price = price.at_tier(SERVICE_TIERS.get(event.service_tier, ""))
            picos = picos_of(price, inp, cached, written, out, reasoning, w1h, a_in, a_out)
            center = event.attributes.get(COST_CENTER, "")
            if (picos > MAX_EVENT_PICOS or headroom is not None) and _refused(
                plan, rec, event, headroom, second, center,
                [inp, cached, written, out, reasoning, picos, 1, fallback, w1h, a_in, a_out],
            ):  # fmt: skip
                continue
            new_seen[h] = now_ts
            if event.ending > COMPLETED:
                partial[event.ending] = partial.get(event.ending, 0) + 1
            key = (user, second // MINUTE, event.product, model, center,
                   event.workspace_id or default_workspace)  # fmt: skip
            acc = sums.get(key)
            if acc is None:
                sums[key] = [inp, cached, written, out, reasoning, picos, 1, fallback,
                             w1h, a_in, a_out]  # fmt: skip
            else:
                acc[0] += inp
                acc[1] += cached
                acc[2] += written
                acc[3] += out
                acc[4] += reasoning
                acc[5] += picos
                acc[6] += 1
                acc[7] += fallback
                if w1h or a_in or a_out:  # the newer classes: rare, one branch
                    acc[8] += w1h
                    acc[9] += a_in
                    acc[10] += a_out
            if event.request_id:
                settled.setdefault(user, []).append(event.request_id)
        self._derive(plan)
        return plan

    def _decode(
        self,
        plan: Plan,
        rec: Record,
        now: datetime,
        refused: Mapping[int, str] | None,
        accepted: Accepted,
    ) -> Decoded | None:
        """The record's events, its bad events added to the plan's rejects; None (the
        record a reject) when it can't be read or was refused before."""
        event_source = ""
        if refused and rec.offset in refused:
            reason = refused[rec.offset]
        else:
            try:
                decoded = decode(
                    rec.value, rec.headers, now, self.max_age, self.default_workspace, accepted
                )
            except InvalidUsage as exc:
                reason, event_source = str(exc), exc.source
            except Exception as exc:  # a bug must not stall the partition
                reason = f"internal error: {type(exc).__name__}: {exc}"
            else:
                plan.valid_records += 1
                source = source_of(rec.headers, decoded.source)
                _tally(plan, source, 0)
                for value, why in decoded.rejects:
                    # an event of a batch, serialized alone: a protobuf UsageEvent
                    plan.rejects.append(Reject(rec.offset, rec.key, value, why, source))
                return decoded
        source = source_of(rec.headers, event_source)
        _tally(plan, source, 1)
        content_type = rec.headers.get(CONTENT_TYPE, "")
        plan.rejects.append(
            Reject(rec.offset, rec.key, rec.value or b"", reason, source, content_type)
        )
        plan.invalid_records += 1
        return None

    def _derive(self, plan: Plan) -> None:
        """Budget-period totals, 15-minute rollups and burn minutes from the plan's sums."""
        totals, where, rollups, rollup_ws = (
            plan.totals, plan.total_where, plan.rollups, plan.rollup_workspace
        )  # fmt: skip
        burn: dict[tuple[str, int], int] = {}
        all_picos = 0
        for (user, minute, product, model, center, workspace), acc in plan.sums.items():
            at = minute * MINUTE
            picos, events, fallback = acc[5], acc[6], acc[7]
            for kind, period_key, start, end in periods_at(at, self.tz):
                tkey = (user, kind, period_key)
                t = totals.get(tkey)
                if t is None:
                    totals[tkey] = [picos, events, fallback]
                    where[tkey] = (workspace, start, end)
                else:
                    t[0] += picos
                    t[1] += events
                    t[2] += fallback
            rkey = (QUARTER, at - at % QUARTER_SECONDS, user, product, model, center)
            r = rollups.get(rkey)
            if r is None:
                rollups[rkey] = list(acc)
                rollup_ws[rkey] = workspace
            else:
                for i, v in enumerate(acc):
                    r[i] += v
            bkey = (user, minute)
            burn[bkey] = burn.get(bkey, 0) + picos
            plan.workspaces.setdefault(user, workspace)
            if fallback:
                plan.unpriced[model] = plan.unpriced.get(model, 0) + fallback
            plan.counted += events
            all_picos += picos
        plan.burn = {k: micros_of_picos(v) for k, v in burn.items()}
        plan.micros = micros_of_picos(all_picos)
        # Everything is derived: the sums, the plan's largest part (~400 bytes an event
        # when each is its own minute), are not held through the commit.
        plan.sums = {}

    def fold(self, state: PartitionState, plan: Plan) -> dict[TotalKey, Total]:
        """The new absolute totals of every key the plan touches (state must hold them)."""
        changed: dict[TotalKey, Total] = {}
        for key, (picos, count, fallback) in plan.totals.items():
            old = state.totals.get(key)
            workspace, start, end = plan.total_where[key]
            changed[key] = Total(
                workspace_id=workspace,
                period_start=start,
                period_end=end,
                used_picos=(old.used_picos if old else 0) + picos,
                event_count=(old.event_count if old else 0) + count,
                fallback_count=(old.fallback_count if old else 0) + fallback,
            )
        return changed

    def fold_rollups(self, state: PartitionState, plan: Plan) -> dict[RollupKey, Rollup]:
        """The new absolute 15-minute rollups the plan touches (state must hold them)."""
        out: dict[RollupKey, Rollup] = {}
        where = plan.rollup_workspace
        for key, acc in plan.rollups.items():
            old = state.rollups.get(key)
            if old is None:
                out[key] = Rollup(where[key], *acc)
            else:  # a Rollup is its workspace, then ROLLUP_COUNTERS in order
                out[key] = Rollup(where[key], *map(operator.add, old[1:], acc))
        return out

    def apply(
        self,
        state: PartitionState,
        plan: Plan,
        changed: dict[TotalKey, Total],
        rollups: dict[RollupKey, Rollup] | None = None,
    ) -> None:
        """Make the state what Postgres now holds (call after the commit)."""
        state.next_offset = plan.next_offset
        if plan.new_seen:
            state.seen.add(plan.new_seen, max(plan.new_seen.values()))
        state.totals.update(changed)
        state.rollups.update(rollups or {})

    def forget_expired(self, state: PartitionState) -> int:
        """Drop seen ids older than the window (`dedupe.SeenIds.expire`) and totals of
        ended periods; how many ids were dropped."""
        now = self.clock()
        forgotten = state.seen.expire(now.timestamp() - self.dedupe_window.total_seconds())
        horizon = now - self.max_age
        for key in [k for k, t in state.totals.items() if t.period_end < horizon]:
            del state.totals[key]
        keep_from = {QUARTER: now.timestamp() - 2 * HOUR}
        for rkey in [k for k in state.rollups if k[1] < keep_from[k[0]]]:
            del state.rollups[rkey]
            # Postgres holds it: it must be looked up again if touched.
            grain = rkey[0]
            state.rollup_horizon[grain] = max(state.rollup_horizon.get(grain, rkey[1]), rkey[1])
        return forgotten


def _tally(plan: Plan, source: str, invalid: int) -> None:
    """Count one record of `source` in the plan, valid (0) or invalid (1)."""
    plan.sources.setdefault(source, [0, 0])[invalid] += 1


def _unpriced(plan: Plan, rec: Record, event: UsageEvent, event_source: str) -> None:
    why = (
        f"no price for model {event.model!r} at {event.occurred_at.ToJsonString()} "
        "(QM_METERING_UNPRICED=reject): load its price (cli prices load), then replay "
        "(cli dlq replay)"
    )
    source = source_of(rec.headers, event_source)
    plan.rejects.append(Reject(rec.offset, rec.key, event.SerializeToString(), why, source))


def _forward(plan: Plan, rec: Record, event: UsageEvent, home: int, event_source: str) -> None:
    """List `event` (of `rec`, away from its user's `home` partition) for forwarding,
    under its record's source so the DLQ limit at home still knows the producer."""
    source = source_of(rec.headers, event_source)
    plan.forwards.setdefault((home, source), []).append(event)


def _refused(
    plan: Plan, rec: Record, event: UsageEvent, headroom: Headroom | None, at: int,
    center: str, counters: list[int],
) -> bool:  # fmt: skip
    """True (and the event a reject) when it costs more than one event may, or would
    take a sum of its user past MAX_SUM. `at`: epoch second; counters[5]: picos."""
    picos = counters[5]
    why: str | None = None
    if picos > MAX_EVENT_PICOS:
        why = (
            f"costs {micros_of_picos(picos):,} micro-credits, more than one event may "
            f"({MAX_EVENT_MICROS:,}): check its token counts and the price of {event.model!r}"
        )
    elif headroom is not None and event.user_id in headroom.users:
        why = headroom.refuse(event.user_id, at, event.product, event.model, center, counters)
        if why is None:
            return False
    else:
        return False
    plan.rejects.append(Reject(rec.offset, rec.key, event.SerializeToString(), why))
    return True
