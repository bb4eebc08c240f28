"""`python -m services.metering.cli prices load|list|history`: the price catalog from a
terminal (see services.metering.cli for the commands' shape and the token they send).

`prices list --format yaml` writes the whole catalog (every version, service-tier and
long-context prices, aliases) as YAML `prices load` reads back as it is: loading it
changes nothing. `--format csv` writes the table a CSV load reads, which has no place
for service tiers, long-context tiers or aliases: it says on stderr what it leaves out.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any, TextIO

import yaml

from quartermaster.cliargs import token_argument
from quartermaster.v1 import prices_pb2, prices_pb2_grpc
from quartermaster.wire import from_timestamp, timestamp
from services.metering.cli_table import when, write

PRICE_COLUMNS = ("input", "cached_input", "cache_write", "output", "reasoning",
                 "cache_write_1h", "audio_input", "audio_output")  # fmt: skip
# Classes a version may leave out, and the class whose price each then takes
# (token_prices): the YAML written leaves them out when they are that price.
_DEFAULT_OF = {"reasoning": "output", "cache_write": "input", "cache_write_1h": "cache_write",
               "audio_input": "input", "audio_output": "output"}  # fmt: skip
_FORMATS = {".csv": prices_pb2.CATALOG_FORMAT_CSV}
PRICE_UNITS = "prices: micro-credits per million tokens (1 credit = 1,000,000 micros)"


def _price_row(p: prices_pb2.ModelPrice, label: str = "") -> list[str]:
    start = from_timestamp(p.effective_from).isoformat() if p.HasField("effective_from") else ""
    return [label or p.model or "*", start, *(str(getattr(p, c)) for c in PRICE_COLUMNS)]


def _tier_rows(p: prices_pb2.ModelPrice, label: str, tiers: tuple[str, ...]) -> list[list[str]]:
    """Rows of `p`'s long-context tier and service tiers (and theirs), each labelled
    `model [tier, ...]`: every price charged has a row."""
    rows = []
    if p.HasField("long_context"):
        tier = (*tiers, f"input > {p.long_context_above_input_tokens:,}")
        rows.append(_price_row(p.long_context, f"{label} [{', '.join(tier)}]"))
    for name, price in sorted(p.service_tiers.items()):
        rows.append(_price_row(price, f"{label} [{', '.join((*tiers, name))}]"))
        rows.extend(_tier_rows(price, label, (*tiers, name)))
    return rows


def _price_rows(p: prices_pb2.ModelPrice, tiers: bool) -> list[list[str]]:
    """A version's row and, with `tiers` (the table, not the CSV a load reads back), one
    row per long-context and service tier, labelled `model [tier]`."""
    return [_price_row(p), *(_tier_rows(p, p.model or "*", ()) if tiers else ())]


def _price_mapping(p: prices_pb2.ModelPrice) -> dict[str, Any]:
    """`p` as a catalog document writes it (a class left out where it is its default)."""
    out: dict[str, Any] = {}
    if p.HasField("effective_from"):
        out["effective_from"] = from_timestamp(p.effective_from).isoformat()
    out.update({c: getattr(p, c) for c in ("input", "cached_input", "output")})
    out.update({c: getattr(p, c) for c, d in _DEFAULT_OF.items() if getattr(p, c) != getattr(p, d)})
    if p.HasField("long_context"):
        above = {"above_input_tokens": p.long_context_above_input_tokens}
        out["long_context"] = {**above, **_price_mapping(p.long_context)}
    if p.service_tiers:
        out["service_tiers"] = {n: _price_mapping(t) for n, t in sorted(p.service_tiers.items())}
    return out


def catalog_yaml(listed: prices_pb2.ListPricesResponse) -> str:
    """The catalog ListPrices listed (every_version) as the YAML a load reads."""
    models: dict[str, list[dict[str, Any]]] = {}
    for p in listed.prices:
        models.setdefault(p.model, []).append(_price_mapping(p))
    document: dict[str, Any] = {"fallback": _price_mapping(listed.fallback), "models": models}
    if listed.aliases:
        document["aliases"] = dict(sorted(listed.aliases.items()))
    head = (f"# The price catalog, revision {listed.revision}: every version, in micro-credits "
            "per million tokens.\n# `prices load` reads it back (with --replace: as the whole "
            "catalog).\n")  # fmt: skip
    return head + yaml.safe_dump(document, sort_keys=False, allow_unicode=True)


def _csv_leaves_out(listed: prices_pb2.ListPricesResponse, at: str) -> str:
    """What a `prices list --format csv` leaves out, said on stderr ("" when nothing)."""
    tiered = [p.model or "*" for p in (*listed.prices, listed.fallback)
              if p.HasField("long_context") or p.service_tiers]  # fmt: skip
    parts = []
    if tiered:
        shown = ", ".join(tiered[:5]) + (f" and {len(tiered) - 5} more" if len(tiered) > 5 else "")
        parts.append(f"the service-tier and long-context prices of {shown}")
    if listed.aliases:
        parts.append(f"{len(listed.aliases)} alias(es)")
    parts.append(f"every version but the one in force {at}")
    return (
        f"(the CSV leaves out {'; '.join(parts)}: CSV has no columns for tiers or aliases. "
        "`prices list --format yaml` writes them all; a CSV load that would remove them "
        "is refused unless --drop-yaml-only)\n"
    )


def _load(stub: prices_pb2_grpc.PriceCatalogServiceStub, ns: argparse.Namespace,
          out: TextIO) -> None:  # fmt: skip
    path = Path(ns.file)
    try:
        document = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise SystemExit(f"{path}: {exc}") from None
    except UnicodeDecodeError as exc:  # a spreadsheet's .xlsx, or a Latin-1 export
        raise SystemExit(
            f"{path}: not UTF-8 text (byte {exc.start}): save it as CSV UTF-8 or YAML"
        ) from None
    resp = stub.LoadPrices(
        prices_pb2.LoadPricesRequest(
            document=document, source=path.name, replace=ns.replace, dry_run=ns.dry_run,
            format=_FORMATS.get(path.suffix.lower(), prices_pb2.CATALOG_FORMAT_YAML),
            drop_yaml_only=ns.drop_yaml_only,
        ),
        metadata=ns.metadata,
        timeout=60,
    )  # fmt: skip
    for line in resp.changes:
        out.write(f"  {line}\n")
    if not resp.changes:
        out.write(f"nothing to change: revision {resp.revision} stays in force\n")
    elif resp.dry_run:
        out.write(f"dry run: {len(resp.changes)} change(s), nothing written\n")
    else:
        out.write(f"revision {resp.revision} in force ({len(resp.changes)} change(s))\n")


def _list(stub: prices_pb2_grpc.PriceCatalogServiceStub, ns: argparse.Namespace,
          out: TextIO) -> None:  # fmt: skip
    whole = ns.format == "yaml"
    if whole and ns.at is not None:
        raise SystemExit("prices list: --at is not for --format yaml, which writes every version")
    req = prices_pb2.ListPricesRequest(models=ns.model, every_version=whole)
    if ns.at is not None:
        req.at.CopyFrom(timestamp(ns.at))
    listed = stub.ListPrices(req, timeout=60, metadata=ns.metadata)
    table = ns.format == "table"
    # what an id asked for names: on stdout in the table, else on stderr (the CSV and
    # YAML stay what a load reads)
    said = out if table else sys.stderr
    said.writelines(f"{i}: priced as {m}\n" for i, m in sorted(listed.resolved.items()))
    if whole:
        out.write(catalog_yaml(listed))
        return
    rows = [r for p in (*listed.prices, listed.fallback) for r in _price_rows(p, table)]
    write(rows, ["model", "effective_from", *PRICE_COLUMNS], ns.format, out)
    if table:
        out.write(PRICE_UNITS + "\n")
        out.writelines(f"alias {a} -> {m}\n" for a, m in sorted(listed.aliases.items()))
    else:
        sys.stderr.write(_csv_leaves_out(listed, f"at {ns.at.isoformat()}" if ns.at else "now"))


def _history(stub: prices_pb2_grpc.PriceCatalogServiceStub, ns: argparse.Namespace,
             out: TextIO) -> None:  # fmt: skip
    """`prices history`: every page PriceHistory gives (each bounded in size), in order."""
    token = ""
    while True:
        request = prices_pb2.PriceHistoryRequest(model=ns.model, page_token=token)
        history = stub.PriceHistory(request, timeout=60, metadata=ns.metadata)
        if not token and history.model and history.model != ns.model.strip():
            said = out if ns.format == "table" else sys.stderr
            said.write(f"{ns.model.strip()}: priced as {history.model}\n")
        if history.versions:  # on the first page only
            rows = [r for p in history.versions for r in _price_rows(p, ns.format != "csv")]
            write(rows, ["model", "effective_from", *PRICE_COLUMNS], ns.format, out)
        for r in history.revisions:
            at = from_timestamp(r.loaded_at).isoformat()
            source = f" from {r.source}" if r.source else ""
            out.write(f"revision {r.revision}: {r.mode} by {r.loaded_by} at {at}{source}\n")
            out.writelines(f"  {line}\n" for line in r.changes)
            if r.changes_omitted:
                out.write(f"  ... and {r.changes_omitted} more change line(s): one answer "
                          "holds about 1 MiB of them\n")  # fmt: skip
        token = history.next_page_token
        if not token:
            return


def prices(stub: prices_pb2_grpc.PriceCatalogServiceStub, ns: argparse.Namespace,
           out: TextIO) -> None:  # fmt: skip
    {"load": _load, "list": _list, "history": _history}[ns.action](stub, ns, out)


def prices_parser(sub: Any) -> None:
    p = sub.add_parser("prices", help="the price catalog: load, list, history")
    actions = p.add_subparsers(dest="action", required=True)
    load = actions.add_parser("load", help="load a YAML or CSV catalog file (a new revision)")
    load.add_argument("file")
    whole = "the file is the whole catalog: models it leaves out are removed"
    load.add_argument("--replace", action="store_true", help=whole)
    load.add_argument("--dry-run", action="store_true", help="show the changes, write nothing")
    load.add_argument(
        "--drop-yaml-only", action="store_true",
        help="a CSV load may remove the service-tier and long-context prices of the versions "
        "it rewrites, and (with --replace) aliases: CSV has no columns for them",
    )  # fmt: skip
    listing = actions.add_parser("list", help="the prices in force (now, or --at)")
    listing.add_argument("--at", type=when, help="not with --format yaml (every version)")
    listing.add_argument("--model", action="append", default=[], help="repeatable")
    listing.add_argument(
        "--format", choices=("table", "csv", "yaml"), default="table",
        help="yaml: the whole catalog (every version, tiers, aliases) as a load reads it",
    )  # fmt: skip
    history = actions.add_parser("history", help="a model's versions and who changed them")
    history.add_argument("model", nargs="?", default="")
    history.add_argument("--format", choices=("table", "csv"), default="table")
    for a in (load, listing, history):
        token_argument(a, top=False)
