"""The DLQ limit, per source: which producers' records are mostly rejected, once per episode.

A *source* is who produced a record (`source_of`), in this order:

1. the `qm-source` header (`quartermaster.topics.SOURCE_HEADER`): a producer's own
   id, the one thing an unreadable record (empty, not protobuf) still carries;
2. the `source` field of the record's event (of its first event in a `UsageBatch`),
   read from a record that parsed, valid or not ("gateway/eu-1", "sdk/python");
3. else `UNKNOWN`.

The record key is not a source: it is the user, not the producer, and a producer
keying by user id would split into thousands of keys each too small to notice.

A source is *over its limit* when, over about its last `window` records, more than
`max_ratio` were invalid and at least `min_invalid` were. The counts decay (each
record of a source ages its older ones by a factor of 1 - 1/window), so a source costs
two numbers, whatever the window. Being over the limit changes nothing about counting:
its bad records still go to the DLQ and every good record, its own included, is
counted. It opens an episode (an alert, told once, see `source_watch`); the episode
ends when the source's invalid share falls below half of `max_ratio` or when the
source is forgotten. At most `max_sources` sources are remembered (the least recently
seen is forgotten first), and one silent for `idle_seconds` is forgotten, so producers
inventing ids can't grow memory.

There is no global pause any more: one source used to be able to pause counting for
every user (enforcement off for the company). See docs/operations.md.

Pure: no I/O.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass

from quartermaster.topics import SOURCE_HEADER

UNKNOWN = "unknown"
# A source longer than this is cut (it names a metric label and an alert).
MAX_SOURCE_CHARS = 128


def source_of(headers: Mapping[str, str], event_source: str = "") -> str:
    """The source of a record (see the module docstring): its `qm-source` header, else
    `event_source` (the parsed event's `source` field, "" when none), else UNKNOWN;
    stripped and cut to MAX_SOURCE_CHARS characters."""
    for candidate in (headers.get(SOURCE_HEADER, ""), event_source):
        name = candidate.strip()
        if name:
            return name[:MAX_SOURCE_CHARS]
    return UNKNOWN


@dataclass(frozen=True)
class DlqLimit:
    """When a source is over its limit (see the module docstring). `window` in records,
    `max_ratio` a share in (0, 1], `idle_seconds` in seconds."""

    window: int = 1000
    max_ratio: float = 0.5
    min_invalid: int = 100
    max_sources: int = 10_000
    idle_seconds: float = 3600.0

    def __post_init__(self) -> None:
        problems = []
        if self.window < 1:
            problems.append(f"window: must be at least 1, not {self.window}")
        if not 0 < self.max_ratio <= 1:
            problems.append(f"max_ratio: must be above 0 and at most 1, not {self.max_ratio}")
        if self.min_invalid < 1:
            problems.append(f"min_invalid: must be at least 1, not {self.min_invalid}")
        if self.max_sources < 1:
            problems.append(f"max_sources: must be at least 1, not {self.max_sources}")
        if problems:
            raise ValueError("; ".join(problems))


@dataclass
class SourceCounts:
    """One source's decaying counts of recent records (see the module docstring)."""

    valid: float = 0.0
    invalid: float = 0.0
    last_seen: float = 0.0  # epoch seconds
    over: bool = False  # an episode is open

    @property
    def ratio(self) -> float:
        total = self.valid + self.invalid
        return self.invalid / total if total else 0.0


class SourceLimits:
    """Every remembered source's counts; `record` a committed batch's records per source,
    and learn whose episodes opened."""

    def __init__(self, limit: DlqLimit) -> None:
        self.limit = limit
        self._sources: OrderedDict[str, SourceCounts] = OrderedDict()

    def __len__(self) -> int:
        return len(self._sources)

    def get(self, source: str) -> SourceCounts | None:
        return self._sources.get(source)

    def over(self) -> list[str]:
        """The sources over their limit now (an episode open)."""
        return [name for name, c in self._sources.items() if c.over]

    def record(self, counts: Mapping[str, tuple[int, int]], now: float) -> list[str]:
        """Add `counts` (source → (valid records, invalid records)) seen at `now` (epoch
        seconds); the sources whose episode opened with them (each once per episode)."""
        limit, sources = self.limit, self._sources
        age = 1.0 - 1.0 / limit.window
        opened = []
        for name, (valid, invalid) in counts.items():
            c = sources.get(name)
            if c is None:
                c = sources[name] = SourceCounts()
            else:
                sources.move_to_end(name)
            keep = age ** (valid + invalid)
            c.valid = c.valid * keep + valid
            c.invalid = c.invalid * keep + invalid
            c.last_seen = now
            if c.over:
                if c.ratio < limit.max_ratio / 2:
                    c.over = False  # the episode is over
            elif c.invalid >= limit.min_invalid and c.ratio > limit.max_ratio:
                c.over = True
                opened.append(name)
        self._forget(now)
        return opened

    def _forget(self, now: float) -> None:
        """Forget the least recently seen sources past max_sources, and the idle ones
        (the least recently seen come first: stop at the first one still active)."""
        sources = self._sources
        while len(sources) > self.limit.max_sources:
            sources.popitem(last=False)
        idle_since = now - self.limit.idle_seconds
        while sources:
            oldest = next(iter(sources.values()))
            if oldest.last_seen >= idle_since:
                break
            sources.popitem(last=False)
