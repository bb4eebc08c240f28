"""What metering has counted, per partition: the absolute totals, 15-minute rollups
and recently seen event ids of the users whose events land in one partition.

Money is kept exact here, in pico-credits (`quartermaster.money`): a total's
micro-credits are its exact sum rounded once (`Total.used_micros`).

Pure data (no I/O): the counting store loads and writes it, `aggregate.Meter` computes
what a batch changes in it. Every event of a user is counted on one partition, its
home (Kafka's murmur2 partitioner on user_id; events arriving elsewhere are forwarded
there, see `aggregate`), so one worker owns a user's state at a time.
"""

from __future__ import annotations

import functools
import hashlib
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import NamedTuple
from zoneinfo import ZoneInfo

from quartermaster.money import micros_of_picos
from quartermaster.periods import PeriodKind, period_of
from services.metering.dedupe import SeenIds

PERIOD_KINDS = (PeriodKind.DAY, PeriodKind.WEEK, PeriodKind.MONTH)

# (user_id, period kind, period key)
TotalKey = tuple[str, str, str]
# (grain, bucket start as epoch seconds, user_id, product, model, cost center).
# metering writes 15-minute rollups only (every zone's offset is a multiple of 15
# minutes, so every local day, month and hour of every workspace zone is a union of
# them); the Cost API compacts them into daily ones (services/metering/compaction.py),
# off the counting path.
RollupKey = tuple[str, int, str, str, str, str]
QUARTER = "quarter"  # the grain: 15 minutes, starting on the UTC quarter hour
GRAINS = (QUARTER,)
COST_CENTER = "cost_center"  # the UsageEvent attribute rollups group by
QUARTER_SECONDS = 900
HOUR = 3600


def id_hash(user_id: str, event_id: str) -> int:
    """64-bit signed hash of a user's event_id: what dedupe remembers (8 bytes, not the
    id). Per user: an id another person's producer happens to use (or reuses on
    purpose) never hides this user's event. A user_id holds no NUL (validation refuses
    one), so the NUL between them keeps ("ab", "c") and ("a", "bc") apart. BLAKE2b of
    8 bytes, unkeyed: the hashes Postgres holds were made so."""
    h = _BLAKE2B_8.copy()  # a copy of a made hasher: its keywords are not parsed again
    h.update(f"{user_id}\0{event_id}".encode())
    return int.from_bytes(h.digest(), "big", signed=True)


# Never updated itself: id_hash copies it once an event (a copy skips parsing the
# constructor's keywords, docs/benchmarks.md).
_BLAKE2B_8 = hashlib.blake2b(digest_size=8)


class Total(NamedTuple):
    """One user's absolute spend in one budget period: exact pico-credits, events.
    (A named tuple: immutable, and quicker to make than a frozen dataclass; a batch
    makes one per total it changes, docs/benchmarks.md.)"""

    workspace_id: str
    period_start: datetime
    period_end: datetime
    used_picos: int
    event_count: int
    fallback_count: int

    @property
    def used_micros(self) -> int:
        """The spend in micro-credits: the exact sum rounded once, half up (what is
        published and what GetBudget shows)."""
        return micros_of_picos(self.used_picos)


class Rollup(NamedTuple):
    """One user's usage of one product and model in one 15-minute bucket (absolute;
    `picos`: its exact cost in pico-credits). A tuple, as `Total` is: the workspace,
    then ROLLUP_COUNTERS in order."""

    workspace_id: str
    input_tokens: int
    cached_input_tokens: int
    cache_write_tokens: int
    output_tokens: int
    reasoning_tokens: int
    picos: int
    events: int
    fallback_events: int
    # The newer token classes (issue 13, item 2), each a subset of a count above:
    # one-hour cache writes of cache_write_tokens, audio of input/output_tokens.
    cache_write_1h_tokens: int = 0
    audio_input_tokens: int = 0
    audio_output_tokens: int = 0


# Rollup's counters in field order: sums. PostgreSQL holds `picos` as two bigint
# columns (stores.rollups.COLUMNS), the others as one column each. The newer classes
# come last, so the positions the hot loop indexes (picos 5, events 6, fallback 7)
# stay where they were.
ROLLUP_COUNTERS = (
    "input_tokens", "cached_input_tokens", "cache_write_tokens", "output_tokens",
    "reasoning_tokens", "picos", "events", "fallback_events",
    "cache_write_1h_tokens", "audio_input_tokens", "audio_output_tokens",
)  # fmt: skip
PICOS = ROLLUP_COUNTERS.index("picos")
# The counters that are token counts, by class (what a Cost API row and spender carry).
TOKEN_COUNTERS = tuple(c for c in ROLLUP_COUNTERS if c.endswith("_tokens"))


@dataclass
class PartitionState:
    """Everything counted for one partition that a batch may need: what Postgres holds,
    minus what was dropped as expired (reloaded when touched)."""

    partition: int
    # The first offset not yet counted; records below it were counted already.
    next_offset: int
    # the id_hashes counted within the dedupe window, by hour of first count
    seen: SeenIds = field(default_factory=SeenIds)
    totals: dict[TotalKey, Total] = field(default_factory=dict)
    # recent rollups; older ones are reloaded from Postgres when touched
    rollups: dict[RollupKey, Rollup] = field(default_factory=dict)
    # grain → the newest bucket start Postgres may hold a row for that is not in
    # `rollups`. A key past it is new: this worker is the partition's only writer
    # since it loaded it, and everything it wrote is in `rollups` (or raised this
    # mark when it was dropped). Saves looking up every key of every new hour.
    rollup_horizon: dict[str, int] = field(default_factory=dict)

    def rollups_to_load(self, keys: set[RollupKey]) -> set[RollupKey]:
        """Those of `keys` that Postgres may hold but this state does not."""
        never = -(2**62)
        return {
            k for k in keys
            if k not in self.rollups and k[1] <= self.rollup_horizon.get(k[0], never)
        }  # fmt: skip


# (kind, key, start, end) for each budget period kind, in PERIOD_KINDS order
Periods = tuple[tuple[str, str, datetime, datetime], ...]


def periods_at(at: int, tz: ZoneInfo) -> Periods:
    """The day, week and month containing integer epoch second `at` (the instant's
    floor: exact, as every boundary is a whole second), cached per 15-minute bucket,
    which is exact: a local midnight always falls on a 15-minute UTC boundary."""
    return _periods_of_bucket(at // QUARTER_SECONDS, tz)


@functools.lru_cache(maxsize=8192)
def _periods_of_bucket(bucket: int, tz: ZoneInfo) -> Periods:
    at = datetime.fromtimestamp(bucket * QUARTER_SECONDS, UTC)
    out = []
    for kind in PERIOD_KINDS:
        period = period_of(kind, at, tz)
        out.append((kind.value, period.key, period.start, period.end))
    return tuple(out)
