"""End to end: usage crosses 80 % of a person's budget → metering counts it, policy
announces the crossing, the notifier sends exactly one Slack message per crossing (to
the Slack stand-in) with the numbers. Real metering worker process, policy server and
notifier (built by its wiring, in this process's event loop)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from devtools.localinfra.stack import Infra
from devtools.slack_standin import SlackStandin
from quartermaster.v1 import policy_pb2
from services.metering import api
from services.metering.settings import MeteringSettings
from services.notifier import wiring
from services.notifier.settings import NotifierSettings
from services.policy.decide import Enforcement
from tests.conftest import MeteringWorker, Replicas
from tests.helpers import eventually, new_user, produce_usage, usage
from tests.notifier.kit import add_people, notifier_env

COST = 6_250  # micros of one helpers.usage() event


@pytest.fixture
async def standin() -> AsyncIterator[SlackStandin]:
    s = SlackStandin("secret")
    await s.start()
    try:
        yield s
    finally:
        await s.stop()


@pytest.mark.infra
async def test_usage_crossing_80_percent_sends_one_slack_message_per_crossing(
    infra: Infra, metering: MeteringWorker, metered_replicas: Replicas, standin: SlackStandin
) -> None:
    replicas = metered_replicas  # the workspace metering counts
    await replicas.set_default(20 * COST, Enforcement.SOFT)
    [policy] = await replicas.start(1)
    user = new_user()
    await add_people(replicas.admin(policy), [user])
    # The Cost API, which the notifier asks what drove the crossing, reads the rollups
    # the session's metering worker writes.
    usage_api = await api.start(
        MeteringSettings.from_env({**replicas.env, "QM_DATABASE_URL": infra.database_url}),
        addr="127.0.0.1:0",
    )
    env = notifier_env(replicas.env, standin, policy.port,
                       QM_NOTIFIER_USAGE_API_ADDR=f"127.0.0.1:{usage_api.served.port}")  # fmt: skip
    notifier = await wiring.start(NotifierSettings.from_env(env))
    try:
        stub = replicas.policy(policy)

        async def used() -> int:
            req = policy_pb2.GetBudgetRequest(user_id=user)
            return int((await stub.GetBudget(req)).used_micros)

        produce_usage(infra.kafka_bootstrap, [usage(user) for _ in range(17)])  # 85 %
        await eventually(used, 17 * COST)

        def texts() -> list[str]:
            return [m.text for m in standin.posted(f"DU{user}")]

        async def told_80() -> bool:
            return any(t.startswith("You have used 80%") for t in texts())

        await eventually(told_80, True, within=60)
        await asyncio.sleep(1.0)  # a second message, were one coming, would be here by now
    finally:
        await notifier.stop()
        await usage_api.stop(1)
    # The 17 events may reach policy in one total (one message: 80 %) or in two, the
    # first past 50 % (then that crossing has its own message first). Never twice.
    said = sorted(t.split(" of ", 1)[0] for t in texts())
    assert said in (["You have used 80%"], ["You have used 50%", "You have used 80%"]), said
    [message] = [m for m in standin.posted(f"DU{user}") if m.text.startswith(said[-1])]
    assert " of 0.13 credits in " in message.text
    assert "(80 %)" in message.text
    assert "Most of it: product chat (0." in message.text, message.text  # what drove it
    assert ", model gpt-5 (0." in message.text, message.text
    assert message.metadata["event_type"] == "qm_delivery"
