"""`python -m services.metering.cli`: the Cost API from a terminal, for people and
finance. Prints a table, or CSV with `--format csv`.

    python -m services.metering.cli usage --from 2026-11-01 --to 2026-12-01 \\
        --group-by user,model --granularity day --format csv > november.csv
    python -m services.metering.cli top --from today-30d --to tomorrow --limit 10

Dates without an offset are in the workspace's time zone (the Cost API's), and so are
the bucket starts shown; a range starts and ends on a quarter hour (see `usage --help`).

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
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any, TextIO

import grpc

from quartermaster import kafka
from quartermaster.cliargs import Parser, rpc_hint, token_argument
from quartermaster.grpcclient import bearer, open_blocking_channel
from quartermaster.settings import load_or_exit
from quartermaster.v1 import cost_pb2_grpc, prices_pb2_grpc
from services.metering import cli_usage, dlq
from services.metering.cli_prices import prices, prices_parser
from services.metering.settings import MeteringSettings


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
    from quartermaster.db import service_pool
    from quartermaster.publisher import Publisher
    from services.metering.topic_guard import accept
    from services.metering.wiring import topic_guard

    settings = MeteringSettings.from_env()
    kafka.configure(settings)

    async def run() -> int:
        pool = await service_pool(settings, max_size=2)
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
    cli_usage.add_parsers(sub)
    prices_parser(sub)
    _topic_parser(sub)
    dlq.add_parser(sub)
    return p


def main(
    argv: Sequence[str] | None = None, out: TextIO = sys.stdout,
    clock: Callable[[], datetime] = lambda: datetime.now(UTC),
) -> int:  # fmt: skip
    """Run the command `argv`; `clock`: now, for today, this-month and the like."""
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
    if ns.command in ("usage", "top"):
        off = cli_usage.off_quarter(ns)
        if off:
            sys.stderr.writelines(f"{m}\n" for m in off)
            return 2
        ns.now, ns.zone = clock(), settings.timezone
    tls = settings.client_tls
    # TLS as the services' own clients: QM_TLS_CA_FILE and, for mutual TLS, the
    # client certificate settings.
    with open_blocking_channel(ns.addr or settings.api_addr, tls) as channel:
        try:
            if ns.command == "prices":
                prices(prices_pb2_grpc.PriceCatalogServiceStub(channel), ns, out)
            else:
                stub = cost_pb2_grpc.UsageServiceStub(channel)
                (cli_usage.usage if ns.command == "usage" else cli_usage.top)(stub, ns, out)
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
