"""`python -m services.notifier.cli`: the delivery records, people's channel preferences
and the webhook endpoints from a terminal (straight to PostgreSQL, QM_DATABASE_URL,
for the workspace QM_WORKSPACE_ID).

    python -m services.notifier.cli deliveries [--state failed] [--limit 50]
    python -m services.notifier.cli replay 42
    python -m services.notifier.cli preferences set alice email [--digest]
    python -m services.notifier.cli preferences set bob digest
    python -m services.notifier.cli preferences show [alice ...]
    python -m services.notifier.cli preferences clear alice
    python -m services.notifier.cli webhooks [enable NAME]

`deliveries` prints one line per delivery, newest first: id, state, channel,
recipient, attempts, the intent's dedupe key, and the reason of the last failure.
`replay` makes a failed delivery pending again (attempts reset): a running notifier
sends it within a poll; it exits 1 naming the id when there is no failed delivery
with it.

`preferences set` chooses how a person is told: slack, email or both, `--digest` for
news of their people's spend in one daily digest instead of a message each; `digest`
alone keeps the workspace default's channels (QM_NOTIFIER_DEFAULT_CHANNELS). A running
notifier applies it within 30 s. `clear` returns them to the workspace default; `show`
lists the default and every preference (or the people named).

`webhooks` lists the endpoints of QM_NOTIFIER_WEBHOOKS (names only: URLs may carry a
token) and which answered 410 and are disabled; `enable NAME` posts to it again.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Sequence
from typing import TextIO

import asyncpg

from quartermaster.db import service_pool
from quartermaster.settings import load_or_exit
from services.notifier.plan import CHOICES, chosen, describe, preference_of
from services.notifier.settings import NotifierSettings
from services.notifier.stores.deliveries import Delivery, DeliveryStore
from services.notifier.stores.people import PreferenceStore
from services.notifier.stores.webhooks import WebhookGate
from services.notifier.webhooks import parse_endpoints

STATES = ("pending", "sending", "retrying", "delivered", "failed")


def _line(d: Delivery) -> str:
    reason = f"  {d.reason}" if d.reason else ""
    return (f"{d.id:>8}  {d.state:<9}  {d.channel:<7}  {d.recipient:<20}  "
            f"{d.attempts:>5}  {d.dedupe_key}{reason}")  # fmt: skip


async def _deliveries(args: argparse.Namespace, pool: asyncpg.Pool, ws: str, out: TextIO) -> int:
    store = DeliveryStore(pool, ws, "cli")
    if args.command == "deliveries":
        rows = await store.list([args.state] if args.state else [], args.limit)
        out.write(f"{'id':>8}  {'state':<9}  {'channel':<7}  {'recipient':<20}  "
                  "tries  dedupe key  reason\n")  # fmt: skip
        out.writelines(_line(d) + "\n" for d in rows)
        return 0
    replayed = await store.replay(args.id)
    if replayed is None:
        sys.stderr.write(f"no failed delivery {args.id} in workspace {ws}\n")
        return 1
    out.write(f"delivery {replayed.id} ({replayed.channel} to {replayed.recipient}) is"
              " pending again\n")  # fmt: skip
    return 0


async def _preferences(
    args: argparse.Namespace, settings: NotifierSettings, pool: asyncpg.Pool, out: TextIO
) -> int:
    store = PreferenceStore(pool, settings.workspace_id)
    in_force = await store.default_in_force()
    if in_force is not None:
        default, by, since = in_force
        said = f"the running notifier's, {by} since {since:%Y-%m-%d %H:%M} UTC"
    else:
        default = preference_of(settings.default_channels)
        said = "QM_NOTIFIER_DEFAULT_CHANNELS here: no notifier has started in this workspace"
    if args.action == "set":
        choice = chosen(args.choice, args.digest, default)
        await store.set(args.user, choice)
        out.write(f"{args.user}: {describe(choice)}\n")
    elif args.action == "clear":
        if not await store.clear(args.user):
            sys.stderr.write(f"{args.user} has no preference of their own\n")
            return 1
        out.write(f"{args.user}: the workspace default ({describe(default)})\n")
    else:
        found = await store.listed(args.users)
        out.write(f"workspace default: {describe(default)} ({said})\n")
        out.writelines(f"{u}: {describe(p)}\n" for u, p in found.items())
        missing = [u for u in args.users if u not in found]
        out.writelines(f"{u}: the workspace default\n" for u in missing)
    return 0


async def _webhooks(
    args: argparse.Namespace, settings: NotifierSettings, pool: asyncpg.Pool, out: TextIO
) -> int:
    gate = WebhookGate(pool, settings.workspace_id)
    if args.action == "enable":
        if not await gate.enable(args.name):
            known = sorted(parse_endpoints(settings.webhooks.get_secret_value()))
            if args.name in known:
                sys.stderr.write(f"webhook endpoint {args.name!r} is not disabled\n")
            else:
                sys.stderr.write(f"no webhook endpoint {args.name!r}: QM_NOTIFIER_WEBHOOKS "
                                 f"names {', '.join(known) or 'none'}\n")  # fmt: skip
            return 1
        out.write(f"webhook endpoint {args.name} enabled: notices are posted to it again\n")
        return 0
    configured = parse_endpoints(settings.webhooks.get_secret_value())
    disabled = await gate.disabled(fresh=True)
    for name in sorted(set(configured) | set(disabled)):
        state = f"disabled: {disabled[name]}" if name in disabled else "enabled"
        where = "" if name in configured else " (not in QM_NOTIFIER_WEBHOOKS)"
        out.write(f"{name}: {state}{where}\n")
    if not configured and not disabled:
        out.write("no webhook endpoints (QM_NOTIFIER_WEBHOOKS is empty)\n")
    return 0


async def _run(args: argparse.Namespace, settings: NotifierSettings, out: TextIO) -> int:
    pool = await service_pool(settings)
    try:
        if args.command == "preferences":
            return await _preferences(args, settings, pool, out)
        if args.command == "webhooks":
            return await _webhooks(args, settings, pool, out)
        return await _deliveries(args, pool, settings.workspace_id, out)
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
    prefs = sub.add_parser("preferences", help="how each person is told").add_subparsers(
        dest="action", required=True)  # fmt: skip
    choose = prefs.add_parser("set", help="set a person's channel preference")
    choose.add_argument("user", help="their directory user id")
    choose.add_argument("choice", choices=CHOICES)
    choose.add_argument("--digest", action="store_true",
                        help="their people's spend news in one daily digest")  # fmt: skip
    prefs.add_parser("clear", help="back to the workspace default").add_argument("user")
    prefs.add_parser("show", help="the default and the preferences").add_argument(
        "users", nargs="*")  # fmt: skip
    hooks = sub.add_parser("webhooks", help="webhook endpoints, enabled or disabled")
    hook_actions = hooks.add_subparsers(dest="action")
    hook_actions.add_parser("enable", help="post to a disabled endpoint again").add_argument(
        "name")  # fmt: skip
    return p


def main(argv: Sequence[str] | None = None, out: TextIO = sys.stdout) -> int:
    args = parser().parse_args(argv)
    if args.command == "deliveries" and not 1 <= args.limit <= 10_000:
        parser().error("--limit: expected 1 to 10000")
    if args.command == "preferences" and args.action == "set" and not args.user.strip():
        parser().error("user: must not be empty")
    settings = load_or_exit(NotifierSettings, "notifier cli")
    return asyncio.run(_run(args, settings, out))


if __name__ == "__main__":
    sys.exit(main())
