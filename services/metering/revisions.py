"""The price catalog's revisions, without I/O: what a load changes, and a load's input.

Every load makes a new revision holding the whole catalog after it (see
`stores.catalog`). `merge` computes that catalog, `changes` the lines a person reads
about it, and `PriceLoad` is the load request, which validates itself.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum

from quartermaster.validation import text_problem
from services.metering.catalog_csv import parse_csv, refuse_yaml_only_losses
from services.metering.pricing import (
    CatalogDocument,
    CatalogError,
    Price,
    PriceCatalog,
    alias_problems,
    parse_yaml,
)
from services.metering.token_prices import TOKEN_CLASSES

MAX_DOCUMENT = 4 * 1024 * 1024  # characters
MAX_SOURCE = 1024  # characters of a load's `source` (a file name)


@dataclass(frozen=True)
class LoadRecord:
    """One load of the catalog as PriceHistory tells it: who, when, how, what changed."""

    revision: int
    loaded_at: datetime
    loaded_by: str
    mode: str
    source: str
    changes: list[str]


@dataclass(frozen=True)
class Revision(LoadRecord):
    """One load of the catalog, with the whole catalog after it."""

    catalog: PriceCatalog


# -- PriceHistory's pages --

DEFAULT_HISTORY_PAGE = 20  # revisions
MAX_HISTORY_PAGE = 100
MAX_HISTORY_BYTES = 1024 * 1024
"""About the most change lines (UTF-8 bytes) one PriceHistory answer holds: a gRPC
client refuses an answer past 4 MiB (RESOURCE_EXHAUSTED), and three loads of a 1.2 MB
catalog made one. A revision whose own lines pass it is cut (`changes_omitted`)."""
_LINE_OVERHEAD = 4  # a repeated string's tag and length, about


class BadPage(ValueError):
    """A page size or page token PriceHistory can't use (the message says which)."""


def history_token(after: int) -> str:
    """The opaque token of the page after revision `after`."""
    return base64.urlsafe_b64encode(f"history|{after}".encode()).decode().rstrip("=")


_TOKEN = re.compile(r"history\|([0-9]{1,18})")  # ASCII digits: str.isdigit takes "²"


def history_position(token: str) -> int:
    """The revision after which `token` (history_token's) starts the page; BadPage for
    a string this service did not give."""
    if len(token) > 64:
        raise BadPage(f"page_token: not a token PriceHistory gave ({len(token)} characters)")
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)).decode()
    except (binascii.Error, UnicodeDecodeError, ValueError):
        raise BadPage("page_token: not a token PriceHistory gave") from None
    found = _TOKEN.fullmatch(raw)
    if found is None:
        raise BadPage("page_token: not a token PriceHistory gave")
    return int(found[1])


def history_page_size(asked: int) -> int:
    """The revisions a page holds for PriceHistoryRequest.page_size (0: the default);
    BadPage outside 0 to MAX_HISTORY_PAGE."""
    if not 0 <= asked <= MAX_HISTORY_PAGE:
        raise BadPage(
            f"page_size: must be between 1 and {MAX_HISTORY_PAGE} (0: {DEFAULT_HISTORY_PAGE}),"
            f" got {asked}"
        )
    return asked or DEFAULT_HISTORY_PAGE


def history_page(
    records: Sequence[LoadRecord], size: int, budget: int = MAX_HISTORY_BYTES
) -> tuple[list[tuple[LoadRecord, list[str], int]], bool]:
    """Of `records` (the next ones in order, up to size + 1 of them), those one page
    holds, each with the change lines it sends and how many it leaves out, and whether
    more follow. A page holds at most `size` records and about `budget` bytes of lines;
    it always holds the first record, its lines cut to the budget if they pass it."""
    out: list[tuple[LoadRecord, list[str], int]] = []
    used = 0
    for r in records[:size]:
        cost = sum(len(line.encode()) + _LINE_OVERHEAD for line in r.changes)
        if out and used + cost > budget:
            break
        if used + cost <= budget:
            out.append((r, list(r.changes), 0))
            used += cost
            continue
        kept: list[str] = []  # the first record alone passes the budget: its first lines
        for line in r.changes:
            line_cost = len(line.encode()) + _LINE_OVERHEAD
            if used + line_cost > budget:
                break
            kept.append(line)
            used += line_cost
        out.append((r, kept, len(r.changes) - len(kept)))
        break
    return out, len(out) < len(records)


def _flat(p: Price, prefix: str = "") -> dict[str, int]:
    """A price's classes, its long-context tier's as `long_context.<class>` and its
    service tiers' as `service_tiers.<tier>.<class>`."""
    # every class, those left at their default too: a line tells every price charged
    out = {f"{prefix}{k}": getattr(p, k) for k in TOKEN_CLASSES}
    if p.long_context is not None:
        out[f"{prefix}long_context.above_input_tokens"] = p.long_context_above
        out.update(_flat(p.long_context, f"{prefix}long_context."))
    for name, tier in p.service_tiers:
        out.update(_flat(tier, f"{prefix}service_tiers.{name}."))
    return out


def _prices(p: Price) -> str:
    return ", ".join(f"{k} {v}" for k, v in _flat(p).items())


def _price_diff(a: Price, b: Price) -> str:
    old, new = _flat(a), _flat(b)
    return ", ".join(
        f"{k} {old.get(k, '(none)')} -> {new.get(k, '(none)')}"
        for k in [*old, *(k for k in new if k not in old)]
        if old.get(k) != new.get(k)
    )


def merge(old: PriceCatalog | None, doc: CatalogDocument, replace: bool) -> PriceCatalog:
    """The catalog after loading `doc` on top of `old` (or instead of it). A CSV `doc`
    that would remove prices or aliases only YAML writes is refused, naming them,
    unless its `drop_yaml_only` is set (catalog_csv.yaml_only_losses)."""
    if replace or old is None:
        where = doc.where if replace else f"{doc.where} (the first catalog)"
        new = PriceCatalog.whole(doc, where)
    else:
        models = {m: list(v) for m, v in old.models.items()}
        for model, versions in doc.models.items():
            by_start = dict(models.get(model, []))
            by_start.update(versions)  # the same effective_from: the document's price wins
            models[model] = sorted(by_start.items())
        aliases = {**old.aliases, **doc.aliases}  # the same alias: the document's model wins
        try:
            new = PriceCatalog(models, doc.fallback or old.fallback, aliases)
        except CatalogError as exc:
            raise CatalogError(f"{doc.where}: {exc}") from None
    problems = alias_problems(new.models, new.aliases)
    if problems:
        raise CatalogError(f"{doc.where}: " + "; ".join(problems))
    if old is not None and doc.from_csv and not doc.drop_yaml_only:
        refuse_yaml_only_losses(old, new, doc)
    return new


def changes(old: PriceCatalog | None, new: PriceCatalog, now: datetime) -> list[str]:
    """One line a person can read per difference between two catalogs."""
    out: list[str] = []
    if old is None:
        out.append(f"fallback: {_prices(new.fallback)}")
    elif old.fallback != new.fallback:
        out.append(f"fallback: {_price_diff(old.fallback, new.fallback)}")
    before = old.models if old is not None else {}
    for model in sorted(before.keys() | new.models.keys()):
        a, b = dict(before.get(model, [])), dict(new.models.get(model, []))
        if not b:
            out.append(f"{model}: removed ({len(a)} version(s)); the fallback prices it now")
            continue
        for start in sorted(a.keys() | b.keys()):
            when = start.isoformat()
            late = (
                " (already in force: it prices events counted from now on, not those counted"
                " before)"
                if start <= now and old is not None
                else ""
            )
            if start not in b:
                out.append(f"{model}: version from {when} removed")
            elif start not in a:
                out.append(f"{model}: new version from {when}: {_prices(b[start])}{late}")
            elif a[start] != b[start]:
                out.append(f"{model}: version from {when}: {_price_diff(a[start], b[start])}{late}")
    old_aliases = old.aliases if old is not None else {}
    for alias in sorted(old_aliases.keys() | new.aliases.keys()):
        was, now_names = old_aliases.get(alias), new.aliases.get(alias)
        if was != now_names:
            out.append(f"alias {alias}: {was or '(none)'} -> {now_names or '(none)'}")
    return out


class CatalogFormat(StrEnum):
    """How a catalog document is written (see `pricing.parse_yaml` / `parse_csv`)."""

    YAML = "yaml"
    CSV = "csv"


_PARSERS = {CatalogFormat.YAML: parse_yaml, CatalogFormat.CSV: parse_csv}


@dataclass(frozen=True)
class PriceLoad:
    """A request to load a catalog document: on top of the catalog in force, or
    instead of it (`replace`); `dry_run` reports the changes and writes nothing.
    `format` is None when the caller named none (or one this version doesn't know)."""

    document: str
    format: CatalogFormat | None
    source: str = ""
    replace: bool = False
    dry_run: bool = False
    drop_yaml_only: bool = False  # a CSV load may remove what only YAML writes

    def problems(self) -> list[str]:
        """Every bad field, each as `field: why` (empty when the load may go ahead)."""
        out = []
        if not self.document.strip():
            out.append("document: empty")
        elif len(self.document) > MAX_DOCUMENT:
            out.append(f"document: larger than {MAX_DOCUMENT} characters")
        if len(self.source) > MAX_SOURCE:
            out.append(f"source: longer than {MAX_SOURCE} characters")
        elif problem := text_problem(self.source):  # stored with the revision
            out.append(f"source: {problem}")
        if self.format is None:
            out.append("format: required, CATALOG_FORMAT_YAML or CATALOG_FORMAT_CSV")
        return out

    def parse(self) -> CatalogDocument:
        """The document parsed (call after `problems()` came back empty); CatalogError
        names the place that is wrong. The one check of a load and of its dry run alike:
        whatever the load would refuse, the dry run refuses. CPU-bound (seconds for a
        4 MB document): the servicer runs it in a thread."""
        assert self.format is not None
        doc = _PARSERS[self.format](self.document, self.source or "document")
        return dataclasses.replace(doc, drop_yaml_only=self.drop_yaml_only)
