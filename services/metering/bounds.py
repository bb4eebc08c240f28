"""The bounds every counted number and stored string keeps, and the guard that keeps
sums inside them.

Every value metering writes ends in a PostgreSQL `bigint`, a protobuf `int64` or a
btree index, each of which refuses a value past its limit. A refused write used to
stop the whole worker (the batch was retried for ever), so the limits are enforced
before anything is written: an event past one is a DLQ record naming it.

- one event: each token count at most MAX_EVENT_TOKENS, its cost at most
  MAX_EVENT_MICROS (checked in `decode` and `aggregate.Meter.plan`);
- a sum (a total, a rollup counter): at most MAX_SUM. A batch whose sums would pass
  it is planned again with a `Headroom` for the users concerned, which admits their
  events one by one and refuses the first that would pass the bound;
- an id or key string: at most MAX_ID_LENGTH characters and MAX_KEY_BYTES bytes of
  UTF-8, without NUL (PostgreSQL's text cannot hold NUL).

Pure: no I/O.
"""

from __future__ import annotations

from zoneinfo import ZoneInfo

from quartermaster.money import PICOS_PER_MICRO
from services.metering.state import (
    PICOS,
    QUARTER,
    QUARTER_SECONDS,
    ROLLUP_COUNTERS,
    PartitionState,
    Rollup,
    RollupKey,
    Total,
    TotalKey,
    periods_at,
)

# A thousand times the largest context window sold today: a count above it is a bug
# upstream, not usage.
MAX_EVENT_TOKENS = 1_000_000_000
# One million credits: no single model call costs that; a price or a count is wrong.
MAX_EVENT_MICROS = 1_000_000_000_000
MAX_EVENT_PICOS = MAX_EVENT_MICROS * PICOS_PER_MICRO  # its exact amount
# Half of int64: a total or rollup counter never passes it, so a reader that adds a
# bounded amount to it (policy adds held reservations; the Cost API adds a few rows)
# stays within int64 too.
MAX_SUM = 2**62
# The same bound on an exact sum of money (pico-credits: Python ints, stored as
# micro-credits and a remainder, each within a bigint).
MAX_SUM_PICOS = MAX_SUM * PICOS_PER_MICRO
# The rollups' primary key holds four strings (user, product, model, cost center)
# and PostgreSQL refuses a btree row over 2,704 bytes: 4 x 512 bytes stay below it.
MAX_KEY_BYTES = 512


def utf8_length(text: str) -> int:
    """Bytes of `text` in UTF-8 (what PostgreSQL stores; only for the careful path)."""
    return len(text.encode("utf-8", "surrogatepass"))


def overflowing(changed: dict[TotalKey, Total], rollups: dict[RollupKey, Rollup]) -> set[str]:
    """The users of `changed` totals or `rollups` with a sum past MAX_SUM (usually none:
    one comparison per value)."""
    users = {
        key[0]
        for key, t in changed.items()
        if max(t.event_count, t.fallback_count) > MAX_SUM or t.used_picos > MAX_SUM_PICOS
    }
    for key, r in rollups.items():
        # spelled out: this runs for every rollup of every batch
        if (max(r.input_tokens, r.cached_input_tokens, r.cache_write_tokens, r.output_tokens,
                r.reasoning_tokens, r.events, r.fallback_events, r.cache_write_1h_tokens,
                r.audio_input_tokens, r.audio_output_tokens) > MAX_SUM
                or r.picos > MAX_SUM_PICOS):  # fmt: skip
            users.add(key[2])
    return users


class Headroom:
    """Admits the events of `users` one at a time against what `state` holds (it must
    hold every total and rollup their events touch, as after a first fold) plus what
    this batch admitted before, so that no sum passes MAX_SUM."""

    def __init__(self, users: set[str], state: PartitionState, tz: ZoneInfo) -> None:
        self.users = users
        self._state = state
        self._tz = tz
        self._totals: dict[TotalKey, list[int]] = {}
        self._rollups: dict[RollupKey, list[int]] = {}

    def refuse(
        self, user: str, at: int, product: str, model: str, center: str, counters: list[int]
    ) -> str | None:
        """Why the event of `user` at integer epoch second `at` with these
        ROLLUP_COUNTERS values would take a sum past MAX_SUM (money: MAX_SUM_PICOS);
        None when it fits (then it is admitted: later events are measured with it
        included)."""
        picos, events, fallback = counters[5], counters[6], counters[7]
        totals = []
        for kind, period_key, _start, _end in periods_at(at, self._tz):
            tkey = (user, kind, period_key)
            sums = self._totals.get(tkey)
            if sums is None:
                old = self._state.totals.get(tkey)
                base = [old.used_picos, old.event_count, old.fallback_count] if old else [0] * 3
                sums = self._totals[tkey] = base
            over = max(sums[1] + events, sums[2] + fallback) > MAX_SUM
            if over or sums[0] + picos > MAX_SUM_PICOS:
                return f"it would take the {kind} total of user_id past {MAX_SUM} micro-credits"
            totals.append(sums)
        rkey = (QUARTER, at - at % QUARTER_SECONDS, user, product, model, center)
        acc = self._rollups.get(rkey)
        if acc is None:
            old_r = self._state.rollups.get(rkey)
            acc = [getattr(old_r, c) for c in ROLLUP_COUNTERS] if old_r else [0] * len(counters)
            self._rollups[rkey] = acc
        for i, (name, have, add) in enumerate(zip(ROLLUP_COUNTERS, acc, counters, strict=True)):
            if i == PICOS and have + add > MAX_SUM_PICOS:
                return f"it would take the 15-minute cost of user_id past {MAX_SUM} micro-credits"
            if i != PICOS and have + add > MAX_SUM:
                return f"it would take the 15-minute {name} of user_id past {MAX_SUM}"
        for sums in totals:
            sums[0] += picos
            sums[1] += events
            sums[2] += fallback
        for i, add in enumerate(counters):
            acc[i] += add
        return None
