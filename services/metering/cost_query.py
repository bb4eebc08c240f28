"""The Cost API's questions and answers, without I/O: what may be asked, and in what terms.

A range is [start, end) on quarter hours: the rollups are 15-minute buckets, so a
start or end inside one is refused (naming the two nearest) rather than moved to one.
Day and month buckets are calendar days and months in the workspace's time zone.
Inputs validate themselves (`problems()` names every bad field at once, as
`field: why`); the servicer turns that into INVALID_ARGUMENT.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from zoneinfo import ZoneInfo

from quartermaster.periods import QUARTER_HOUR, PeriodKind, period_of, quarter_floor
from quartermaster.validation import MAX_ID_LENGTH, text_problem

MAX_RANGE = timedelta(days=400)
# The instants a query may name: usage before 2000 was never metered, and past year
# 9999 the day or month after `end` is no date (period_of overflowed: INTERNAL for a
# range ending 9999-12-31). The price catalog's versions start in the same years.
FIRST_YEAR, LAST_YEAR = 2000, 2200
EARLIEST = datetime(FIRST_YEAR, 1, 1, tzinfo=UTC)
LATEST = datetime(LAST_YEAR + 1, 1, 1, tzinfo=UTC)  # exclusive
DEFAULT_LIMIT = 10_000
MAX_LIMIT = 100_000
MAX_TOP_SPENDERS = 1000
# Values in one of a filter's lists (ids, products, models, cost centers, groups):
# policy's GroupMembers takes as many group_ids, each of at most MAX_ID_LENGTH.
MAX_FILTER_VALUES = 1000
DEFAULT_TOP_SPENDERS = 10


class Dimension(StrEnum):
    """What rows may be grouped by; the value is the rollup column (or `group_id`)."""

    USER = "user_id"
    PRODUCT = "product"
    MODEL = "model"  # the catalog model the reported id names
    MODEL_ID = "model_id"  # the id as reported
    COST_CENTER = "cost_center"
    GROUP = "group_id"


class Granularity(StrEnum):
    """The bucket rows are summed over (TOTAL: the whole range)."""

    HOUR = "hour"
    DAY = "day"
    MONTH = "month"
    TOTAL = "total"


def _iso(at: datetime, nanos: int = 0) -> str:
    """`at` in ISO 8601, to the nanosecond when `nanos` (below its microsecond) is set."""
    if not nanos:
        return at.isoformat()
    offset = at.isoformat()[26:] if at.microsecond else at.isoformat()[19:]
    return f"{at:%Y-%m-%dT%H:%M:%S}.{at.microsecond * 1000 + nanos:09d}{offset}"


def off_quarter(name: str, at: datetime, nanos: int = 0) -> str | None:
    """Why `at` (+ `nanos` below its microsecond) may not bound a range, naming the two
    nearest quarter hours; None when it is on one."""
    floor = quarter_floor(at)
    if floor == at and not nanos:
        return None
    return (
        f"{name}: {_iso(at, nanos)} is not on a quarter hour (the rollups are 15-minute "
        f"buckets: a range starts and ends on one); the nearest are {floor.isoformat()} "
        f"and {(floor + QUARTER_HOUR).isoformat()}"
    )


@dataclass(frozen=True)
class UsageFilter:
    """Which usage: [start, end) (None: not given) and, when non-empty, only these.
    `nanos`: the nanoseconds of start and end below the microsecond (which a datetime
    cannot hold), kept so a time a nanosecond past a quarter hour is refused too."""

    start: datetime | None
    end: datetime | None
    user_ids: tuple[str, ...] = ()
    products: tuple[str, ...] = ()
    models: tuple[str, ...] = ()
    cost_centers: tuple[str, ...] = ()
    group_ids: tuple[str, ...] = ()
    nanos: tuple[int, int] = (0, 0)

    def problems(self, name: str = "filter") -> list[str]:
        """Every bad field, as `{name}.field: why`."""
        out = []
        if self.start is None:
            out.append(f"{name}.start: must be set")
        if self.end is None:
            out.append(f"{name}.end: must be set")
        for at, what, nanos in ((self.start, "start", self.nanos[0]),
                                (self.end, "end", self.nanos[1])):  # fmt: skip
            if at is None:
                continue
            if not EARLIEST <= at < LATEST:
                out.append(
                    f"{name}.{what}: {at.isoformat()} is outside years {FIRST_YEAR} to "
                    f"{LAST_YEAR} (UTC)"
                )
            elif (off := off_quarter(f"{name}.{what}", at, nanos)) is not None:
                out.append(off)
        if self.start is not None and self.end is not None:
            if self.end <= self.start:
                out.append(f"{name}.end: must be after {name}.start")
            elif self.end - self.start > MAX_RANGE:
                out.append(f"{name}.end: at most {MAX_RANGE.days} days after {name}.start")
        for values, what in (
            (self.user_ids, "user_ids"),
            (self.products, "products"),
            (self.models, "models"),
            (self.cost_centers, "cost_centers"),
            (self.group_ids, "group_ids"),
        ):
            # an event without a cost center is asked for by ""
            out += list_problems(f"{name}.{what}", values, blank_ok=what == "cost_centers")
        return out

    def window(self) -> tuple[datetime, datetime]:
        """(start, end); only for a filter without problems."""
        assert self.start is not None
        assert self.end is not None
        return self.start, self.end


@dataclass(frozen=True)
class UsageQuery:
    """Usage rows summed per bucket of `granularity` and the `group_by` dimensions.

    An `int` in `group_by` is a dimension code the API does not know, and `granularity`
    None one it does not know or none: both are kept so `problems()` can name them."""

    filter: UsageFilter
    group_by: tuple[Dimension | int, ...] = ()
    granularity: Granularity | None = None
    limit: int = 0  # 0: DEFAULT_LIMIT

    def problems(self) -> list[str]:
        """Every bad field, the filter's first, as `field: why`."""
        out = self.filter.problems()
        seen: set[Dimension] = set()
        for i, d in enumerate(self.group_by):
            if not isinstance(d, Dimension):
                out.append(f"group_by[{i}]: unknown dimension {d}")
            elif d in seen:
                out.append(f"group_by[{i}]: DIMENSION_{d.name} twice")
            else:
                seen.add(d)
        if self.granularity is None:
            out.append("granularity: must be HOUR, DAY, MONTH or TOTAL")
        if not 0 <= self.limit <= MAX_LIMIT:
            out.append(f"limit: must be between 0 and {MAX_LIMIT}")
        return out

    def dimensions(self) -> list[Dimension]:
        """`group_by` as known dimensions (only for a query without problems)."""
        return [d for d in self.group_by if isinstance(d, Dimension)]


@dataclass(frozen=True)
class TopSpendersQuery:
    """The users who spent most under `filter`, most first (limit 0: 10)."""

    filter: UsageFilter
    limit: int = 0

    def problems(self) -> list[str]:
        """Every bad field, the filter's first, as `field: why`."""
        out = self.filter.problems()
        if not 0 <= self.limit <= MAX_TOP_SPENDERS:
            out.append(f"limit: must be between 0 and {MAX_TOP_SPENDERS}")
        return out


@dataclass(frozen=True)
class UsageRow:
    """One answer row: its bucket's start (None for TOTAL), the values of the grouped
    dimensions (by column), and the summed rollup counters (by `ROLLUP_COUNTERS` name)."""

    bucket_start: datetime | None
    dimensions: dict[str, str] = field(default_factory=dict)
    counters: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class Spender:
    """A user's spend over the range: micro-credits and events, and `tokens`, the
    user's token counts by class (by `state.TOKEN_COUNTERS` name; absent: 0)."""

    user_id: str
    micros: int
    events: int
    tokens: dict[str, int] = field(default_factory=dict)


# group id → its members now
Members = dict[str, tuple[str, ...]]


def list_problems(name: str, values: tuple[str, ...], blank_ok: bool = False) -> list[str]:
    """The problems of one of a filter's lists, every list bounded alike (issue 14:
    only group_ids was, by policy): at most MAX_FILTER_VALUES values, each at most
    MAX_ID_LENGTH characters of storable text and (unless `blank_ok`) not blank. The
    first value of each kind of problem is named, by index."""
    if len(values) > MAX_FILTER_VALUES:  # before looking at each of them
        return [f"{name}: at most {MAX_FILTER_VALUES} values, got {len(values)}"]
    out: list[str] = []
    if not blank_ok and any(not v.strip() for v in values):
        out.append(f"{name}: empty values are not allowed")
    long = next((i for i, v in enumerate(values) if len(v) > MAX_ID_LENGTH), None)
    if long is not None:
        out.append(f"{name}[{long}]: longer than {MAX_ID_LENGTH} characters")
    for i, v in enumerate(values):
        if (problem := text_problem(v)) is not None:
            out.append(f"{name}[{i}]: {problem}")
            break
    return out


def whole_days(start: datetime, end: datetime, tz: ZoneInfo) -> tuple[datetime, datetime]:
    """[a, b): the whole local days inside [start, end), empty (a == b) if none."""
    first = period_of(PeriodKind.DAY, start, tz)
    a = start if first.start == start else first.end
    b = period_of(PeriodKind.DAY, end, tz).start
    return (a, b) if a < b else (end, end)
