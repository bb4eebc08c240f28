"""The metering CLI's Cost API commands, `usage` and `top` (`cli.py` runs them).

`--from` and `--to` are read as `cli_time` says: without an offset in the workspace's
time zone, which is the Cost API's (its answers name it); bucket starts are shown in
it. A range off the quarter hours is refused before asking, naming the nearest two.
An answer without rows says so on stderr, with what may explain it.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from typing import Any, TextIO, TypeVar
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from quartermaster.cliargs import token_argument
from quartermaster.money import credits
from quartermaster.v1 import cost_pb2, cost_pb2_grpc
from quartermaster.wire import from_timestamp, timestamp
from services.metering.cli_table import write
from services.metering.cli_time import WORDS, moment
from services.metering.state import ROLLUP_COUNTERS

DIMENSIONS = {
    "user": cost_pb2.DIMENSION_USER,
    "product": cost_pb2.DIMENSION_PRODUCT,
    "model": cost_pb2.DIMENSION_MODEL,
    "cost_center": cost_pb2.DIMENSION_COST_CENTER,
    "group": cost_pb2.DIMENSION_GROUP,
    "model_id": cost_pb2.DIMENSION_MODEL_ID,  # the id as reported; "model": its catalog model
}
GRANULARITIES = {
    "hour": cost_pb2.GRANULARITY_HOUR,
    "day": cost_pb2.GRANULARITY_DAY,
    "month": cost_pb2.GRANULARITY_MONTH,
    "total": cost_pb2.GRANULARITY_TOTAL,
}
COLUMNS = tuple(c for c in ROLLUP_COUNTERS if c != "picos")  # money: the micros column


def _dims(text: str) -> list[str]:
    names = [d.strip() for d in text.split(",") if d.strip()]
    unknown = [d for d in names if d not in DIMENSIONS]
    if unknown:
        raise argparse.ArgumentTypeError(f"unknown dimension(s) {unknown}; use {list(DIMENSIONS)}")
    return names


def _filter(ns: argparse.Namespace, tz: ZoneInfo) -> cost_pb2.UsageFilter:
    """The filter asked, --from and --to read with the workspace in `tz`."""
    return cost_pb2.UsageFilter(
        start=timestamp(ns.start.instant(tz, ns.now)), end=timestamp(ns.end.instant(tz, ns.now)),
        user_ids=ns.user, products=ns.product, models=ns.model, cost_centers=ns.cost_center,
        group_ids=ns.group,
    )  # fmt: skip


Answer = TypeVar("Answer", cost_pb2.QueryUsageResponse, cost_pb2.TopSpendersResponse)


def _asked(ns: argparse.Namespace, ask: Callable[[cost_pb2.UsageFilter], Answer]) -> Answer:
    """The answer to `ask`, with dates read in the Cost API's time zone (`ns.zone` then
    holds it). They are read in QM_WORKSPACE_TIMEZONE here first; when the answer names
    another zone and a date was read in one, asked again in the server's: the server's
    days and months are what the answer's buckets and budgets are made of."""
    answer = ask(_filter(ns, ns.zone))
    server = ns.zone
    if answer.time_zone and answer.time_zone != ns.zone.key:
        try:
            server = ZoneInfo(answer.time_zone)
        except (ZoneInfoNotFoundError, ValueError):
            sys.stderr.write(f"(the Cost API's time zone {answer.time_zone!r} is unknown "
                             f"here: dates read and shown in {ns.zone.key})\n")  # fmt: skip
    if server is not ns.zone and (ns.start.zoned or ns.end.zoned):
        sys.stderr.write(f"(dates read in the Cost API's time zone, {server.key}, not "
                         f"QM_WORKSPACE_TIMEZONE here, {ns.zone.key})\n")  # fmt: skip
        answer = ask(_filter(ns, server))
    ns.zone = server
    return answer


def _none_matched(ns: argparse.Namespace, what: str) -> None:
    """Say that nothing matched and why that may be (on stderr: stdout stays the table
    or CSV)."""
    start, end = (m.instant(ns.zone, ns.now).astimezone(ns.zone) for m in (ns.start, ns.end))
    why = [f"no usage counted in [{start.isoformat()}, {end.isoformat()}) ({ns.zone.key})"]
    if ns.user or ns.product or ns.model or ns.cost_center:
        why.append("under the filters given (values as the events reported them)")
    if ns.group or "group" in getattr(ns, "group_by", ()):
        why.append("by people in a directory group now (people in none are left out; "
                   "has a directory been loaded into policy?)")  # fmt: skip
    sys.stderr.write(f"(no {what} matched: {' '.join(why)})\n")


def usage(stub: cost_pb2_grpc.UsageServiceStub, ns: argparse.Namespace, out: TextIO) -> None:
    req = cost_pb2.QueryUsageRequest(
        group_by=[DIMENSIONS[d] for d in ns.group_by],
        granularity=GRANULARITIES[ns.granularity],
        limit=ns.limit,
    )

    def ask(f: cost_pb2.UsageFilter) -> cost_pb2.QueryUsageResponse:
        req.filter.CopyFrom(f)
        return stub.QueryUsage(req, timeout=60, metadata=ns.metadata)

    resp = _asked(ns, ask)
    # One bucket for the whole range has no start to show: no column for it in the
    # table (CSV keeps it, empty: its columns stay the same whatever the granularity).
    bucketed = ns.granularity != "total" or ns.format == "csv"
    header = [*(["bucket_start"] if bucketed else []), *ns.group_by, "credits", "micros", *COLUMNS]
    rows = []
    for r in resp.rows:
        # in the workspace's time zone: 2026-11-01T00:00:00+05:30 is November there
        start = (
            from_timestamp(r.bucket_start).astimezone(ns.zone).isoformat()
            if r.HasField("bucket_start")
            else ""
        )
        bucket = [start] if bucketed else []
        dims = [getattr(r, {"user": "user_id", "group": "group_id"}.get(d, d)) for d in ns.group_by]
        rows.append([*bucket, *dims, credits(r.micros), str(r.micros),
                     *(str(getattr(r, c)) for c in COLUMNS)])  # fmt: skip
    write(rows, header, ns.format, out)
    if not rows:
        _none_matched(ns, "rows")
    if resp.truncated:
        sys.stderr.write(f"(cut at {ns.limit or 10000} rows: raise --limit)\n")


def top(stub: cost_pb2_grpc.UsageServiceStub, ns: argparse.Namespace, out: TextIO) -> None:
    resp = _asked(
        ns,
        lambda f: stub.TopSpenders(
            cost_pb2.TopSpendersRequest(filter=f, limit=ns.limit), timeout=60, metadata=ns.metadata
        ),
    )
    rows = [[s.user_id, credits(s.micros), str(s.micros), str(s.events)] for s in resp.spenders]
    write(rows, ["user", "credits", "micros", "events"], ns.format, out)
    if not rows:
        _none_matched(ns, "spenders")


_WHEN = (
    "an ISO date or time; with an offset (2026-12-01T08:30+05:30, ...Z) that instant, "
    "without one (2026-12-01, 2026-12-01T08:30) in the workspace's time zone (the Cost "
    f"API's), as are the words {', '.join(WORDS)}, each movable by days (today-30d). "
    "On a quarter hour (:00, :15, :30, :45): usage is kept in 15-minute buckets, and "
    "any other time is refused naming the nearest two"
)
_GROUP_BY = (
    "comma-separated, any of: user, product, model (the catalog model the reported id "
    "names), model_id (the id as reported), cost_center, group (directory groups now: "
    "a person in two counts in both, one in none in no row). Default: user"
)
_GRANULARITY = (
    "one row per hour, calendar day or month of the workspace's time zone, or total "
    "(one row per group for the whole range). Default: day"
)
_FILTERS = {
    "model": "only this model: a catalog model matches every id naming it (repeatable)",
    "group": "only people in this directory group now (repeatable)",
}
_TIMES = """
Times: --from is included, --to excluded. Without an offset they are in the
workspace's time zone (QM_WORKSPACE_TIMEZONE of the Cost API, which its answers
name; this CLI's own is used until then), and so are the bucket starts shown. Both
must be on a quarter hour (:00, :15, :30, :45): usage is kept in 15-minute buckets,
and a time inside one is refused with the nearest two, never moved.

An empty answer (said on stderr: "no ... matched") means no usage was counted in the
range under the filters: check the dates, the zone and the values filtered on."""
_DESCRIPTIONS = {
    "usage": """Usage rows: tokens by class and micro-credits per bucket and group,
largest spend first within a bucket. Money is rounded once per user and shared
over the user's rows (largest remainder), so a user's rows over a budget period
add up to what GetBudget shows (docs/cost-api.md).
"""
    + _TIMES
    + """
Grouped by group (or filtered by --group), only people in a directory group now
count: none if policy has no directory loaded.""",
    "top": "The people who spent most in the range, most first.\n" + _TIMES,
}


def off_quarter(ns: argparse.Namespace) -> list[str]:
    """--from and --to that are not on a quarter hour, each with the nearest two."""
    found = (ns.start.off_quarter("--from"), ns.end.off_quarter("--to"))
    return [m for m in found if m is not None]


def add_parsers(sub: Any) -> None:
    """The `usage` and `top` commands on the CLI's subparsers `sub`."""
    for name, help_text in (("usage", "usage rows"), ("top", "top spenders")):
        s = sub.add_parser(name, help=help_text, description=_DESCRIPTIONS[name],
                           formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
        s.add_argument("--from", dest="start", type=moment, required=True, metavar="WHEN",
                       help=f"start, included: {_WHEN}")  # fmt: skip
        s.add_argument("--to", dest="end", type=moment, required=True, metavar="WHEN",
                       help="end, excluded (--to tomorrow: through today); as --from")  # fmt: skip
        for f in ("user", "product", "model", "cost_center", "group"):
            s.add_argument(f"--{f.replace('_', '-')}", dest=f, action="append", default=[],
                           help=_FILTERS.get(f, f"only this {f} (repeatable)"))  # fmt: skip
        s.add_argument("--format", choices=("table", "csv"), default="table",
                       help="table (default), or csv for a spreadsheet")  # fmt: skip
        most = "10000" if name == "usage" else "10"
        s.add_argument("--limit", type=int, default=0,
                       help=f"most rows, largest spend first (0: {most})")  # fmt: skip
        token_argument(s, top=False)
        if name == "usage":
            s.add_argument("--group-by", type=_dims, default=["user"], metavar="DIMS",
                           help=_GROUP_BY)  # fmt: skip
            s.add_argument("--granularity", choices=list(GRANULARITIES), default="day",
                           help=_GRANULARITY)  # fmt: skip
