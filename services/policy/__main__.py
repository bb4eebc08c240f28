"""`python -m services.policy`: serve until SIGTERM/SIGINT, then stop gracefully.

`python -m services.policy set-default CREDITS [--soft] [--actor NAME]` sets the
workspace default limit (audited).

`python -m services.policy topic accept --by NAME --reason TEXT` accepts the totals
topic as the broker holds it now as the one policy serves from (audited in
policy.topic_accepts; services.policy.topic_mark says when that is needed).
"""

from __future__ import annotations

import asyncio
import logging

from quartermaster import kafka, telemetry
from quartermaster.cliargs import Parser
from quartermaster.db import run_service, service_pool
from quartermaster.grpcserver import until_signalled
from quartermaster.money import MICROS_PER_CREDIT
from quartermaster.settings import load_or_exit
from quartermaster.topics import Topic
from services.policy import wiring
from services.policy.decide import Enforcement
from services.policy.settings import PolicySettings
from services.policy.stores.limits import LimitStore
from services.policy.stores.topics import TopicMarkStore
from services.policy.topic_guard import broker_mark

log = logging.getLogger("qm.policy")


async def _serve(settings: PolicySettings) -> None:
    running = await wiring.start(settings)
    await until_signalled(lambda: running.stop(settings.grace_seconds))


async def _set_default(settings: PolicySettings, credits: int, soft: bool, actor: str) -> None:
    pool = await service_pool(settings)
    try:
        enforcement = Enforcement.SOFT if soft else Enforcement.HARD
        store = LimitStore(pool, settings.workspace_id)
        await store.set_workspace_default(credits * MICROS_PER_CREDIT, enforcement, actor)
    finally:
        await pool.close()


async def _accept_topic(settings: PolicySettings, by: str, reason: str) -> str:
    topic = Topic.USAGE_TOTALS.value
    now = await asyncio.to_thread(broker_mark, settings.kafka_bootstrap, topic)
    if now is None:
        raise SystemExit(f"{topic} does not exist on the broker: create the topics first")
    pool = await service_pool(settings)
    try:
        old = await TopicMarkStore(pool, settings.workspace_id, topic).accept(now, by, reason)
    except ValueError as exc:
        raise SystemExit(str(exc)) from None
    finally:
        await pool.close()
    return f"{topic}: accepted {now} (was {old or 'nothing recorded'})"


def main() -> None:
    parser = Parser(prog="python -m services.policy")  # errors hide token-like values
    sub = parser.add_subparsers(dest="command")
    sd = sub.add_parser("set-default", help="set the workspace default monthly limit")
    sd.add_argument("credits", type=int)
    sd.add_argument("--soft", action="store_true", help="warn instead of deny past the limit")
    sd.add_argument("--actor", default="cli")
    topic = sub.add_parser("topic", help="the totals topic policy serves from")
    accept = topic.add_subparsers(dest="action", required=True).add_parser(
        "accept", help="accept the totals topic as the broker holds it now (audited)"
    )
    accept.add_argument("--by", required=True, help="who accepts it (audited)")
    accept.add_argument("--reason", required=True, help="why (audited)")
    ns = parser.parse_args()
    settings = load_or_exit(PolicySettings, "policy")
    # Only the server serves metrics: a CLI command beside it would find the port taken.
    serving = ns.command not in ("set-default", "topic")
    telemetry.setup(
        "policy", settings.log_level, metrics_addr=settings.metrics_addr if serving else ""
    )
    kafka.configure(settings)
    if ns.command == "set-default":
        if ns.credits < 0:
            parser.error("credits: must not be negative")
        asyncio.run(_set_default(settings, ns.credits, ns.soft, ns.actor))
    elif ns.command == "topic":
        print(asyncio.run(_accept_topic(settings, ns.by, ns.reason)))  # noqa: T201
    else:
        run_service("policy", _serve(settings))


if __name__ == "__main__":
    main()
