"""`python -m services.notifier.cli`: the delivery records from a terminal (straight to
PostgreSQL, QM_DATABASE_URL, for the workspace QM_WORKSPACE_ID).

    python -m services.notifier.cli deliveries [--state failed] [--limit 50]
    python -m services.notifier.cli replay 42

`deliveries` prints one line per delivery, newest first: id, state, channel,
recipient, attempts, the intent's dedupe key, and the reason of the last failure.
`replay` makes a failed delivery pending again (attempts reset): a running notifier
sends it within a poll; it exits 1 naming the id when there is no failed delivery
with it.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Sequence
from typing import TextIO

from quartermaster.db import connect_pool
from quartermaster.settings import load_or_exit
from services.notifier.settings import NotifierSettings
from services.notifier.stores.deliveries import Delivery, DeliveryStore

STATES = ("pending", "sending", "retrying", "delivered", "failed")


def _line(d: Delivery) -> str:
    reason = f"  {d.reason}" if d.reason else ""
    return (f"{d.id:>8}  {d.state:<9}  {d.channel:<7}  {d.recipient:<20}  "
            f"{d.attempts:>2}  {d.dedupe_key}{reason}")  # fmt: skip


async def _run(args: argparse.Namespace, settings: NotifierSettings, out: TextIO) -> int:
    pool = await connect_pool(settings.database_url)
    try:
        store = DeliveryStore(pool, settings.workspace_id, "cli")
        if args.command == "deliveries":
            rows = await store.list([args.state] if args.state else [], args.limit)
            out.write(f"{'id':>8}  {'state':<9}  {'channel':<7}  {'recipient':<20}  "
                      "tries  dedupe key  reason\n")  # fmt: skip
            out.writelines(_line(d) + "\n" for d in rows)
            return 0
        replayed = await store.replay(args.id)
        if replayed is None:
            sys.stderr.write(f"no failed delivery {args.id} in workspace {store.workspace_id}\n")
            return 1
        out.write(f"delivery {replayed.id} ({replayed.channel} to {replayed.recipient}) is"
                  " pending again\n")  # fmt: skip
        return 0
    finally:
        await pool.close()


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m services.notifier.cli",
                                description=__doc__.split("\n\n")[0])  # fmt: skip
    sub = p.add_subparsers(dest="command", required=True)
    listing = sub.add_parser("deliveries", help="list delivery records, newest first")
    listing.add_argument("--state", choices=STATES)
    listing.add_argument("--limit", type=int, default=50)
    replay = sub.add_parser("replay", help="send a failed delivery again")
    replay.add_argument("id", type=int)
    return p


def main(argv: Sequence[str] | None = None, out: TextIO = sys.stdout) -> int:
    args = parser().parse_args(argv)
    if args.command == "deliveries" and not 1 <= args.limit <= 10_000:
        parser().error("--limit: expected 1 to 10000")
    settings = load_or_exit(NotifierSettings, "notifier cli")
    return asyncio.run(_run(args, settings, out))


if __name__ == "__main__":
    sys.exit(main())
