"""The price catalog as CSV: one price version a row, and what CSV cannot write.

A CSV catalog has a column per token class and no others: a service tier's prices,
a long-context tier's and aliases are YAML only. So a CSV load refuses a column it
does not know (a `service_tier` column of batch prices loaded as the standard ones;
an `ouput` column was read as no output column at all), and, loaded on top of a
catalog, refuses to remove prices only YAML can write (`yaml_only_losses`) unless
asked to.

Every refusal names the line (`prices.csv: line 3.output: ...`).
"""

from __future__ import annotations

import csv
import io
import re
from datetime import datetime

from services.metering.catalog_limits import LongNumber, price_problem, shown
from services.metering.pricing import (
    FALLBACK_ROW,
    CatalogDocument,
    CatalogError,
    Price,
    PriceCatalog,
    Versions,
    checked_name,
    version_start,
)
from services.metering.token_prices import TOKEN_CLASSES, parse_price

REQUIRED_COLUMNS = ("model", "effective_from", "input", "cached_input", "output")
# Left out (or a cell left empty): the class's default (token_prices: reasoning is
# output's price, cache_write input's, cache_write_1h cache_write's, audio_input
# input's, audio_output output's).
OPTIONAL_COLUMNS = ("cache_write", "reasoning", "cache_write_1h", "audio_input", "audio_output")
_REQUIRED_PRICES = ("input", "cached_input", "output")
_COLUMNS_SAID = (
    f"the columns are {', '.join(REQUIRED_COLUMNS)} (required) and "
    f"{', '.join(OPTIONAL_COLUMNS)} (optional; empty or left out: the class's default); "
    "service-tier and long-context prices and aliases are YAML only"
)

# A price in a CSV cell: ASCII digits, as YAML reads an integer. int() alone also takes
# "١٢٣" (Arabic-Indic digits), "1_000" and " +5", none of which a spreadsheet writes for
# a price, and a "1.5" is a price in another unit (credits, not micro-credits).
_CSV_INT = re.compile(r"-?[0-9]+")


def _csv_number(text: str, where: str) -> int | LongNumber:
    """A CSV cell's price as the YAML path would read it (its bounds are checked with
    the YAML path's, token_prices); CatalogError quoting the cell for anything else."""
    if not _CSV_INT.fullmatch(text):
        raise CatalogError(
            f"{where}: not a whole number of micro-credits per million tokens (ASCII digits "
            f"0-9 only): {shown(text)}"
        )
    if len(text) > LongNumber.MAX_DIGITS:  # int() refuses past 4300 digits; no price is so long
        raise CatalogError(f"{where}: {price_problem(LongNumber(text))}")
    return int(text)


def _header(fields: list[str], where: str, first_line: str) -> list[str]:
    """The header's column names; CatalogError for a missing, unknown or repeated one."""
    names = [f.strip() for f in fields]
    known = {*REQUIRED_COLUMNS, *OPTIONAL_COLUMNS}
    unknown = [n[:40] for n in names if n not in known]
    missing = sorted(set(REQUIRED_COLUMNS) - set(names))
    if missing:
        hint = next((f" (separated by {sep!r}? use commas)" for sep in ";\t|" if sep in first_line),
                    "")  # fmt: skip
        if unknown and not hint:
            hint = f" and has unknown column(s) {unknown} (misspelt?)"
        raise CatalogError(f"{where}: header lacks column(s) {missing}{hint}")
    if unknown:
        raise CatalogError(f"{where}: line 1: unknown column(s) {unknown}: {_COLUMNS_SAID}")
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise CatalogError(f"{where}: line 1: column(s) {twice} written twice: keep one")
    return names


def parse_csv(text: str, where: str = "catalog") -> CatalogDocument:
    """One price version a row under a header of REQUIRED_COLUMNS and any of
    OPTIONAL_COLUMNS, in any order; the model `*` is the fallback, without
    effective_from. CatalogError naming the line (and column) at fault."""
    # A spreadsheet's "CSV UTF-8" starts with a byte-order mark, which would become part
    # of the first column's name ("header lacks model" for a header that shows one).
    text = text.removeprefix("\ufeff").strip()
    reader = csv.reader(io.StringIO(text))
    rows: list[tuple[int, list[str]]] = []
    try:
        for fields in reader:
            if fields:  # a blank line
                rows.append((reader.line_num, fields))
    except csv.Error as exc:  # a field past csv's size limit, a stray quote, ...
        raise CatalogError(f"{where}: after line {reader.line_num}: not CSV: {exc}") from None
    if len(rows) < 2:
        raise CatalogError(f"{where}: no rows under a header")
    header = _header(rows[0][1], where, text.split("\n", 1)[0])
    fallback: Price | None = None
    fallback_line = 0
    models: dict[str, Versions] = {}
    lines: dict[tuple[str, datetime], int] = {}
    for n, fields in rows[1:]:
        here = f"{where}: line {n}"
        if len(fields) > len(header):
            raise CatalogError(f"{here}: more fields than the header has")
        cells = dict(zip(header, (f.strip() for f in fields), strict=False))
        prices: dict[str, object] = {}
        for cls in TOKEN_CLASSES:
            value = cells.get(cls, "")
            if value:
                prices[cls] = _csv_number(value, f"{here}.{cls}")
            elif cls in _REQUIRED_PRICES:
                raise CatalogError(
                    f"{here}.{cls}: required: a whole number of micro-credits per million tokens"
                )
        model = cells.get("model", "")
        if model == FALLBACK_ROW:
            if fallback is not None:
                first = f"the first on line {fallback_line}"
                raise CatalogError(f"{here}: a second fallback row ({first})")
            if cells.get("effective_from"):
                # as YAML's `fallback:` refuses it (token_prices.parse_price)
                raise CatalogError(
                    f"{here}.effective_from: the fallback row ({FALLBACK_ROW}) has one price "
                    "for every time; leave effective_from empty"
                )
            fallback, fallback_line = parse_price(prices, here, "fallback"), n
            continue
        checked_name(model, f"{here}.model", stored=False)
        start = version_start(cells.get("effective_from"), f"{here}.effective_from")
        earlier = lines.get((model, start))
        if earlier is not None:
            raise CatalogError(
                f"{here}: a second {model} version from {start.isoformat()} (the first on line "
                f"{earlier}): keep one"
            )
        lines[(model, start)] = n
        models.setdefault(model, []).append((start, parse_price(prices, here)))
    models = {m: sorted(v, key=lambda x: x[0]) for m, v in models.items()}
    return CatalogDocument(fallback, models, {}, where, from_csv=True)


def _yaml_only(p: Price) -> list[str]:
    """The parts of a price only YAML writes: its long-context tier, its service tiers
    and theirs."""
    out = ["long_context"] if p.long_context is not None else []
    for name, tier in p.service_tiers:
        out.append(f"service_tiers.{name}")
        if tier.long_context is not None:
            out.append(f"service_tiers.{name}.long_context")
    return out


MAX_LOSSES_SAID = 10


def yaml_only_losses(old: PriceCatalog, new: PriceCatalog, doc: CatalogDocument) -> list[str]:
    """What loading the CSV `doc` on `old` (giving `new`) removes that CSV cannot write:
    the long-context and service-tier prices of the versions (and fallback) it rewrites,
    and aliases. Models and versions a replace leaves out are not counted: CSV writes
    those, and leaving them out is what a replace is for."""
    out = []
    if doc.fallback is not None and (lost := _yaml_only(old.fallback)):
        out.append(f"the fallback's {', '.join(lost)}")
    for model, versions in sorted(doc.models.items()):
        before = dict(old.models.get(model, []))
        for start, _ in versions:
            if start in before and (lost := _yaml_only(before[start])):
                out.append(f"{model} version from {start.isoformat()}: {', '.join(lost)}")
    out.extend(
        f"alias {a} -> {m}" for a, m in sorted(old.aliases.items()) if new.aliases.get(a) != m
    )
    return out


def refuse_yaml_only_losses(old: PriceCatalog, new: PriceCatalog, doc: CatalogDocument) -> None:
    """CatalogError naming what a CSV load would remove that only YAML writes."""
    lost = yaml_only_losses(old, new, doc)
    if not lost:
        return
    said = "; ".join(lost[:MAX_LOSSES_SAID])
    more = f"; and {len(lost) - MAX_LOSSES_SAID} more" if len(lost) > MAX_LOSSES_SAID else ""
    raise CatalogError(
        f"{doc.where}: this CSV load would remove prices and aliases CSV cannot write (it "
        f"has no service-tier, long-context or alias columns): {said}{more}. Load YAML "
        "instead (`prices list --format yaml` writes the catalog as YAML), or, to remove "
        "them, load with --drop-yaml-only (LoadPricesRequest.drop_yaml_only)"
    )
