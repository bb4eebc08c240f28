"""The price catalog: exact integer pricing of token usage into micro-credits.

A model id is priced as the catalog model it names (quartermaster.model_ids): a key,
a dated snapshot or routed form of one, or an alias the catalog lists (`aliases`:
exact ids such as Azure deployment names, or fnmatch globs), so `gpt-5-2025-08-07`
and `openai/gpt-5` pay gpt-5's price, while a snapshot with a price of its own keeps it.
"""

from __future__ import annotations

import bisect
import re
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from functools import lru_cache
from pathlib import Path
from typing import Any

from quartermaster.model_ids import resolve_model
from quartermaster.wire import epoch_ns
from services.metering.catalog_limits import (
    load_yaml,
    name_problem,
    shown,
    start_problem,
)
from services.metering.token_prices import (
    SERVICE_TIERS,
    TOKENS_PER_PRICE_UNIT,
    CatalogError,
    Price,
    Priced,
    Tokens,
    cost_micros,
    micros_of,
    parse_price,
    picos_of,
)

# Token classes and their arithmetic live in token_prices; importers read them here too.
__all__ = [
    "FALLBACK_ROW",
    "SERVICE_TIERS",
    "TOKENS_PER_PRICE_UNIT",
    "CatalogDocument",
    "CatalogError",
    "Price",
    "PriceCatalog",
    "Priced",
    "Tokens",
    "alias_problems",
    "cost_micros",
    "micros_of",
    "parse_csv",
    "parse_document",
    "parse_yaml",
    "picos_of",
]  # fmt: skip

FALLBACK_ROW = "*"  # the fallback price's row in a CSV catalog


def version_start(raw: Any, where: str, stored: bool = False) -> datetime:
    """An effective_from: aware, in years 1 to 9999 UTC (what a Timestamp holds) when
    `stored`, and in catalog_limits' FIRST_YEAR to LAST_YEAR when loaded. A date alone
    (YAML reads an unquoted 2026-12-01 as one) is refused, as a time without a zone
    is: which midnight it means is the writer's to say."""
    if raw is None or raw == "":
        raise CatalogError(
            f'{where}: required: an ISO-8601 instant with a time zone, e.g. "2026-12-01T00:00:00Z"'
        )
    if isinstance(raw, date) and not isinstance(raw, datetime):
        raise CatalogError(
            f"{where}: {raw.isoformat()} is a date, not an instant: write it quoted, with a "
            f'time and zone, e.g. "{raw.isoformat()}T00:00:00Z"'
        )
    if isinstance(raw, datetime):
        value = raw
    else:
        try:
            value = datetime.fromisoformat(str(raw).replace("Z", "+00:00"))
        except ValueError as exc:  # "year 0 is out of range", "month must be in 1..12"
            raise CatalogError(f"{where}: not an ISO-8601 time: {shown(raw)} ({exc})") from None
    if value.tzinfo is None:
        raise CatalogError(
            f"{where}: needs a time zone, got {shown(raw)}: write it quoted, e.g. "
            f'"{value.isoformat()}Z"'
        )
    # The instant must be one a protobuf Timestamp holds (UTC years 1 to 9999):
    # 9999-12-31T23:00-05:00 is in year 10000 in UTC, and ListPrices could not send it.
    if not _FIRST_NS <= epoch_ns(value) <= _LAST_NS:
        raise CatalogError(f"{where}: {value.isoformat()} is outside years 1 to 9999 in UTC")
    problem = "" if stored else start_problem(value)
    if problem:
        raise CatalogError(f"{where}: {problem}")
    return value


Versions = list[tuple[datetime, Price]]
_FIRST_NS = epoch_ns(datetime(1, 1, 1, tzinfo=UTC))
_LAST_NS = epoch_ns(datetime(9999, 12, 31, 23, 59, 59, tzinfo=UTC))

# Before and after every instant a Timestamp can hold (years 1 to 9999), as epoch ns.
NEVER_BEFORE = -(2**64)
NEVER_AFTER = 2**64


@dataclass(frozen=True)
class CatalogDocument:
    """A parsed catalog file: all of a catalog, or (to load on top of one) a part."""

    fallback: Price | None
    models: dict[str, Versions]
    # {alias: model}: exact ids (lower case) or fnmatch globs (with * ? or [)
    aliases: dict[str, str] = field(default_factory=dict)
    where: str = "document"  # its name in messages (a file name)
    # Written as CSV, which has no service-tier, long-context or alias columns: a load
    # removing such prices is refused unless `drop_yaml_only` (revisions.merge).
    from_csv: bool = False
    drop_yaml_only: bool = False


_GLOB = frozenset("*?[")
MAX_ALIASES = 10_000


def _aliases(raw: Any, where: str, stored: bool = False) -> dict[str, str]:
    if not isinstance(raw, dict) or len(raw) > MAX_ALIASES:
        raise CatalogError(f"{where}: aliases must map at most {MAX_ALIASES} ids to models")
    out: dict[str, str] = {}
    written: dict[str, str] = {}  # lower case -> the alias as written
    for alias, model in raw.items():
        if not isinstance(alias, str) or not alias.strip() or not isinstance(model, str):
            raise CatalogError(f"{where}: aliases: {shown(alias)}: expected 'id or glob: model'")
        checked_name(alias, f"{where}: aliases", stored)
        checked_name(model, f"{where}: aliases: {shown(alias)} names", stored)
        key = alias.strip().lower()
        if key in out and out[key] != model.strip():
            raise CatalogError(
                f"{where}: aliases: {written[key]!r} and {alias!r} are one alias (aliases "
                f"ignore case) claimed by two models, {out[key]} and {model.strip()}: keep one"
            )
        out[key], written[key] = model.strip(), alias
    return out


_WILDCARDS = re.compile(r"\[[^\]]*\]|[*?]")


def alias_problems(models: Collection[str], aliases: Mapping[str, str]) -> list[str]:
    """Why aliases can't stand beside `models` (checked when a catalog is loaded, not
    when a stored revision is read): an alias that is a model of its own would never
    apply (a model's own name wins), and a glob of wildcards alone (`*`) would name
    every id, so no unknown model would be flagged again."""
    out = []
    for alias, model in sorted(aliases.items()):
        # aliases are lower case; a model key is matched as written first
        if alias in models:
            out.append(
                f"alias {alias} -> {model}: {alias} is a model of the catalog, whose own "
                "price always wins: remove the alias or the model"
            )
        elif _GLOB & set(alias) and not _WILDCARDS.sub("", alias).strip():
            out.append(
                f"alias {alias} -> {model}: a glob of wildcards alone names every model id, "
                "so unknown models would no longer be flagged (the fallback prices them): "
                "give it a literal part, e.g. gpt-5-*"
            )
    return out


def checked_name(name: Any, where: str, stored: bool) -> str:
    """A model's or an alias's name: text that PostgreSQL stores (no NUL, no lone
    surrogate: a dry run said OK where the load then failed writing it), and, loaded,
    not blank nor longer than catalog_limits.MAX_NAME_LENGTH."""
    problem = name_problem(name)
    if problem and not (stored and problem.startswith("longer")):  # no length bound before
        raise CatalogError(f"{where}: {shown(name)} is not a name: {problem}")
    return str(name)


def _models(raw: Any, where: str, stored: bool = False) -> dict[str, Versions]:
    if not isinstance(raw, dict):
        raise CatalogError(f"{where}: models must map model names to price versions")
    models: dict[str, Versions] = {}
    for model, versions in raw.items():
        checked_name(model, f"{where}: models", stored)
        if model == FALLBACK_ROW:
            raise CatalogError(f"{where}: models: {model!r} is not a model name")
        if not isinstance(versions, list) or not versions:
            raise CatalogError(f"{where}: models.{model}: expected a list of versions")
        seen: set[datetime] = set()
        out: Versions = []
        for i, v in enumerate(versions):
            here = f"{where}: models.{model}[{i}]"
            if not isinstance(v, dict):
                raise CatalogError(f"{here}: expected a mapping")
            start = version_start(v.get("effective_from"), f"{here}.effective_from", stored)
            if start in seen:
                raise CatalogError(f"{here}: two versions take effect at {start.isoformat()}")
            seen.add(start)
            out.append((start, parse_price(v, here, stored=stored)))
        models[model] = sorted(out, key=lambda x: x[0])
    return models


def parse_document(raw: Any, where: str = "catalog", stored: bool = False) -> CatalogDocument:
    """A YAML/JSON-shaped mapping: `fallback` (optional here), `models` and `aliases`.
    CatalogError naming the model, field and value at fault. `stored`: a revision read
    back from the database, held only to what pricing needs (`token_prices.parse_price`),
    so a bound added since never stops a worker from reading an older revision; a
    document being loaded is held to every bound of catalog_limits."""
    if not isinstance(raw, dict) or not ({"fallback", "models", "aliases"} & raw.keys()):
        raise CatalogError(f"{where}: needs top-level 'fallback', 'models' and/or 'aliases'")
    unknown = set(raw) - {"fallback", "models", "aliases"}
    if unknown:
        names = sorted(str(k)[:40] for k in unknown)
        raise CatalogError(f"{where}: unknown top-level key(s) {names}")
    fallback = (
        parse_price(raw["fallback"], f"{where}: fallback", "fallback", stored)
        if "fallback" in raw
        else None
    )
    aliases = _aliases(raw.get("aliases", {}), where, stored)
    models = _models(raw.get("models", {}), where, stored)
    return CatalogDocument(fallback, models, aliases, where)


def parse_yaml(text: str, where: str = "catalog") -> CatalogDocument:
    """The catalog document YAML `text` writes, held to every bound of catalog_limits;
    CatalogError naming the line, or the model, field and value, at fault. CPU-bound:
    an async caller runs it in a thread."""
    try:
        raw = load_yaml(text)  # bounded: catalog_limits (depth, expanded nodes, keys)
    except ValueError as exc:
        raise CatalogError(f"{where}: {exc}") from None
    return parse_document(raw, where)


def parse_csv(text: str, where: str = "catalog") -> CatalogDocument:
    """The catalog document CSV `text` writes (services.metering.catalog_csv)."""
    from services.metering.catalog_csv import parse_csv as parse  # it imports this module

    return parse(text, where)


class PriceCatalog:
    """Versions of prices per model, a fallback, and aliases naming models.

    Raises CatalogError when an alias names a model the catalog lacks."""

    def __init__(
        self, models: dict[str, Versions], fallback: Price, aliases: dict[str, str] | None = None
    ) -> None:
        self._models = {m: sorted(v, key=lambda x: x[0]) for m, v in models.items()}
        # effective_from as integer epoch nanoseconds, so pricing an event builds no
        # datetime and an instant a nanosecond before a new price still gets the old one
        # (float seconds rounded up past the boundary ~120 ns before it).
        self._starts = {m: [epoch_ns(t) for t, _ in v] for m, v in self._models.items()}
        self.fallback = fallback
        self.aliases = dict(aliases or {})
        dangling = sorted(a for a, m in self.aliases.items() if m not in self._models)
        if dangling:
            raise CatalogError(
                "aliases name models the catalog lacks: "
                + ", ".join(f"{a} -> {self.aliases[a]}" for a in dangling[:10])
            )
        exact = {a: m for a, m in self.aliases.items() if not _GLOB & set(a)}
        globs = tuple((a, m) for a, m in self.aliases.items() if _GLOB & set(a))
        starts = self._starts

        # Bounded: ids come from producers, and random ones must not grow memory.
        @lru_cache(maxsize=4096)
        def resolve(model: str) -> str | None:
            return resolve_model(model, starts, exact, globs)

        self.resolve = resolve
        """The catalog model `model` names, or None (unknown: the fallback prices it)."""

    @classmethod
    def from_file(cls, path: Path) -> PriceCatalog:
        try:
            text = path.read_text()
        except OSError as exc:
            raise CatalogError(f"{path}: {exc}") from None
        parse = parse_csv if path.suffix.lower() == ".csv" else parse_yaml
        catalog = cls.whole(parse(text, str(path)), str(path))
        problems = alias_problems(catalog.models, catalog.aliases)
        if problems:
            raise CatalogError(f"{path}: " + "; ".join(problems))
        return catalog

    @classmethod
    def from_mapping(cls, raw: Any, where: str = "catalog", stored: bool = False) -> PriceCatalog:
        """The catalog `raw` holds (`to_mapping`'s shape); `stored`: a revision read back
        (see `parse_document`)."""
        return cls.whole(parse_document(raw, where, stored), where)

    @classmethod
    def whole(cls, doc: CatalogDocument, where: str = "catalog") -> PriceCatalog:
        if doc.fallback is None:
            raise CatalogError(f"{where}: a whole catalog needs a 'fallback' price")
        try:
            return cls(doc.models, doc.fallback, doc.aliases)
        except CatalogError as exc:
            raise CatalogError(f"{where}: {exc}") from None

    @property
    def models(self) -> dict[str, Versions]:
        return self._models

    def to_mapping(self) -> dict[str, Any]:
        """The catalog as plain data (every class spelled out) that from_mapping reads."""
        return {
            "fallback": self.fallback.to_mapping(),
            "models": {
                m: [{"effective_from": t.isoformat(), **p.to_mapping()} for t, p in v]
                for m, v in self._models.items()
            },
            "aliases": dict(self.aliases),
        }

    def price_at(self, model: str, at: datetime) -> tuple[Price, bool]:
        """The price in force for `model` at instant `at` (aware), and whether it is
        the fallback."""
        price, fallback, _, _ = self.version_at(model, epoch_ns(at))
        return price, fallback

    def version_at(self, model: str, at_ns: int) -> tuple[Price, bool, int, int]:
        """The price in force for `model` at `at_ns` (integer epoch nanoseconds) and
        whether it is the fallback, with the interval [from, until) of epoch ns over
        which that answer holds (so a caller can reuse it; NEVER_BEFORE/NEVER_AFTER
        when unbounded)."""
        key = model if model in self._starts else self.resolve(model)
        if key is None:
            return self.fallback, True, NEVER_BEFORE, NEVER_AFTER
        starts = self._starts[key]
        i = bisect.bisect_right(starts, at_ns) - 1
        until = starts[i + 1] if i + 1 < len(starts) else NEVER_AFTER
        if i < 0:
            return self.fallback, True, NEVER_BEFORE, starts[0]
        return self._models[key][i][1], False, starts[i], until

    def price(self, model: str, at: datetime, tokens: Tokens) -> Priced:
        price, fallback = self.price_at(model, at)
        return Priced(cost_micros(price, tokens), fallback)
