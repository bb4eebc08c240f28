"""`python -m services.metering.cli`: the Cost API from a terminal, for people and
finance. Prints a table, or CSV with `--format csv`.

    python -m services.metering.cli usage --from 2026-11-01 --to 2026-12-01 \\
        --group-by user,model --granularity day --format csv > november.csv
    python -m services.metering.cli top --from 2026-11-01 --to 2026-12-01 --limit 10

and the price catalog:

    python -m services.metering.cli prices load prices.yaml [--replace] [--dry-run]
    python -m services.metering.cli prices list [--at 2026-06-01] [--model gpt-5]
    python -m services.metering.cli prices list --format yaml > catalog.yaml
    python -m services.metering.cli prices history [gpt-5]

and the topics metering counts (straight to Kafka and Postgres, QM_KAFKA_BOOTSTRAP
and QM_DATABASE_URL): whether they are the ones its stored offsets belong to, and,
after a broker lost its data, accepting them as they are now:

    python -m services.metering.cli topic check
    python -m services.metering.cli topic accept --by ann --reason "broker restarted"

and the usage DLQ (the same way): what is in it, and replaying a selection once its
cause is fixed (see services/metering/dlq.py):

    python -m services.metering.cli dlq list [--reason-contains "no price"]
    python -m services.metering.cli dlq replay --by ann --reason "gpt-9 priced" [...]

Every command sends a bearer token, QM_TOKEN or --token (before or after the
command): one with role reader (or admin) for usage, top and the price listings, role
prices for loading prices (see docs/security.md). Errors never repeat a value that
could be a token.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import Sequence
from typing import Any, TextIO

import grpc

from quartermaster import kafka
from quartermaster.cliargs import Parser, rpc_hint, token_argument
from quartermaster.grpcclient import bearer, open_blocking_channel
from quartermaster.money import credits
from quartermaster.settings import load_or_exit
from quartermaster.v1 import cost_pb2, cost_pb2_grpc, prices_pb2_grpc
from quartermaster.wire import from_timestamp, timestamp
from services.metering import dlq
from services.metering.cli_prices import prices, prices_parser
from services.metering.cli_table import when as _when
from services.metering.cli_table import write as _write
from services.metering.settings import MeteringSettings
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


def _filter(ns: argparse.Namespace) -> cost_pb2.UsageFilter:
    return cost_pb2.UsageFilter(
        start=timestamp(ns.start), end=timestamp(ns.end),
        user_ids=ns.user, products=ns.product, models=ns.model, cost_centers=ns.cost_center,
        group_ids=ns.group,
    )  # fmt: skip


def usage(stub: cost_pb2_grpc.UsageServiceStub, ns: argparse.Namespace, out: TextIO) -> None:
    req = cost_pb2.QueryUsageRequest(
        filter=_filter(ns),
        group_by=[DIMENSIONS[d] for d in ns.group_by],
        granularity=GRANULARITIES[ns.granularity],
        limit=ns.limit,
    )
    resp = stub.QueryUsage(req, timeout=60, metadata=ns.metadata)
    # One bucket for the whole range has no start to show: no column for it in the
    # table (CSV keeps it, empty: its columns stay the same whatever the granularity).
    bucketed = ns.granularity != "total" or ns.format == "csv"
    header = [*(["bucket_start"] if bucketed else []), *ns.group_by, "credits", "micros", *COLUMNS]
    rows = []
    for r in resp.rows:
        start = from_timestamp(r.bucket_start).isoformat() if r.HasField("bucket_start") else ""
        bucket = [start] if bucketed else []
        dims = [getattr(r, {"user": "user_id", "group": "group_id"}.get(d, d)) for d in ns.group_by]
        rows.append([*bucket, *dims, credits(r.micros), str(r.micros),
                     *(str(getattr(r, c)) for c in COLUMNS)])  # fmt: skip
    _write(rows, header, ns.format, out)
    if resp.truncated:
        sys.stderr.write(f"(cut at {ns.limit or 10000} rows: raise --limit)\n")


def top(stub: cost_pb2_grpc.UsageServiceStub, ns: argparse.Namespace, out: TextIO) -> None:
    request = cost_pb2.TopSpendersRequest(filter=_filter(ns), limit=ns.limit)
    resp = stub.TopSpenders(request, metadata=ns.metadata)
    rows = [[s.user_id, credits(s.micros), str(s.micros), str(s.events)] for s in resp.spenders]
    _write(rows, ["user", "credits", "micros", "events"], ns.format, out)


def _topic_parser(sub: Any) -> None:
    p = sub.add_parser("topic", help="are the topics the ones the stored offsets count?")
    actions = p.add_subparsers(dest="action", required=True)
    actions.add_parser("check", help="say what is wrong, if anything (exit 1 if so)")
    accept = actions.add_parser(
        "accept", help="count the topics as they are now (offsets to their start)"
    )
    accept.add_argument("--by", required=True, help="who accepts (kept with the change)")
    accept.add_argument("--reason", required=True, help="why (kept with the change)")


def topic(ns: argparse.Namespace, out: TextIO) -> int:
    """`topic check` / `topic accept`: 0 when the topics may be counted (or were
    accepted), 1 when check found problems, 2 for an accept refused (its reason on
    stderr)."""
    from quartermaster.db import connect_pool
    from quartermaster.publisher import Publisher
    from services.metering.topic_guard import accept
    from services.metering.wiring import topic_guard

    settings = MeteringSettings.from_env()
    kafka.configure(settings)

    async def run() -> int:
        pool = await connect_pool(settings.database_url, max_size=2)
        try:
            guard = topic_guard(settings, pool)
            if ns.action == "check":
                stored, _observed, found = await guard.check()
                out.writelines(f"problem: {p}\n" for p in found)
                out.write(f"stored offsets: {stored.offsets or 'none'}\n")
                out.write("ok: metering may count\n" if not found else "refused\n")
                return 1 if found else 0
            publisher = Publisher(settings.kafka_bootstrap)
            try:
                done = await accept(guard, publisher, ns.by, ns.reason)
            except ValueError as exc:
                sys.stderr.write(f"topic accept: {exc}\n")
                return 2
            finally:
                publisher.close()
            out.writelines(f"accepted: {p}\n" for p in done.problems)
            out.write(f"offsets now {done.offsets}; {done.republished} open totals published\n")
            return 0
        finally:
            await pool.close()

    return asyncio.run(run())


def parser() -> argparse.ArgumentParser:
    p = Parser(prog="python -m services.metering.cli", description=__doc__,
               formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    p.add_argument("--addr", help="Cost API address (default: QM_USAGE_API_ADDR)")
    token_argument(p, top=True)
    sub = p.add_subparsers(dest="command", required=True)
    for name, help_text in (("usage", "usage rows"), ("top", "top spenders")):
        s = sub.add_parser(name, help=help_text)
        s.add_argument("--from", dest="start", type=_when, required=True)
        s.add_argument("--to", dest="end", type=_when, required=True)
        for f in ("user", "product", "model", "cost_center", "group"):
            s.add_argument(f"--{f.replace('_', '-')}", dest=f, action="append", default=[],
                           help=f"only this {f} (repeatable)")  # fmt: skip
        s.add_argument("--format", choices=("table", "csv"), default="table")
        s.add_argument("--limit", type=int, default=0)
        token_argument(s, top=False)
        if name == "usage":
            s.add_argument("--group-by", type=_dims, default=["user"])
            s.add_argument("--granularity", choices=list(GRANULARITIES), default="day")
    prices_parser(sub)
    _topic_parser(sub)
    dlq.add_parser(sub)
    return p


def main(argv: Sequence[str] | None = None, out: TextIO = sys.stdout) -> int:
    ns = parser().parse_args(argv)
    if ns.command == "topic":
        return topic(ns, out)
    if ns.command == "dlq":
        settings = load_or_exit(MeteringSettings, "metering cli")
        kafka.configure(settings)
        return dlq.run(ns, settings.kafka_bootstrap, settings.database_url, out)
    if os.environ.get("QM_ADMIN_TOKEN") and not os.environ.get("QM_TOKEN"):
        sys.stderr.write("QM_ADMIN_TOKEN was renamed QM_TOKEN (see docs/security.md)\n")
        return 2
    token = ns.token or os.environ.get("QM_TOKEN", "")
    ns.metadata = bearer(token)
    settings = load_or_exit(MeteringSettings, "metering cli")
    tls = settings.client_tls
    # TLS as the services' own clients: QM_TLS_CA_FILE and, for mutual TLS, the
    # client certificate settings.
    with open_blocking_channel(ns.addr or settings.api_addr, tls) as channel:
        try:
            if ns.command == "prices":
                prices(prices_pb2_grpc.PriceCatalogServiceStub(channel), ns, out)
            else:
                stub = cost_pb2_grpc.UsageServiceStub(channel)
                (usage if ns.command == "usage" else top)(stub, ns, out)
        except grpc.RpcError as exc:
            code, details = exc.code().name, exc.details() or ""
            sys.stderr.write(f"{code}: {details}\n")
            hint = rpc_hint(code, details, token_given=bool(token), tls=tls)
            if hint:
                sys.stderr.write(f"  {hint}\n")
            return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
