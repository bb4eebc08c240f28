"""A restart of policy after the broker lost its data never answers from zero (issue
14, item 2): policy records which incarnation of the totals topic it served from, and
a start against another one is UNAVAILABLE, saying what to do, until an operator
accepts the new topic (`python -m services.policy topic accept`, audited). A broker of
the test's own (killed and started again empty), the session's PostgreSQL, real
replicas and the real command."""

from __future__ import annotations

import asyncio
import subprocess
import sys

import grpc
import pytest

from devtools.localinfra.broker import LocalBroker
from devtools.localinfra.stack import Infra
from quartermaster.db import connect_pool
from quartermaster.kafka import ensure_topics
from quartermaster.v1 import policy_pb2, policy_pb2_grpc
from services.policy import wiring
from services.policy.settings import PolicySettings
from tests.conftest import ROOT
from tests.helpers import channel, eventually, new_user
from tests.policy.test_readiness_faults import CREDIT, DENY, _check, _publish_totals
from tests.policy.workspaces import new_workspace

pytestmark = pytest.mark.infra
ALLOW = policy_pb2.DECISION_ALLOW


async def test_a_replica_started_on_a_recreated_totals_topic_waits_for_it_to_be_accepted(
    infra: Infra, own_broker: LocalBroker, service_env: dict[str, str]
) -> None:
    over = new_user()
    workspace = await new_workspace(infra.database_url, 20 * CREDIT)
    _publish_totals(own_broker.bootstrap, {over: 25 * CREDIT})
    env = {**service_env, "QM_WORKSPACE_ID": workspace, "QM_KAFKA_BOOTSTRAP": own_broker.bootstrap,
           "QM_POLICY_TOTALS_CHECK_SECONDS": "0.2"}  # fmt: skip
    settings = PolicySettings.from_env(env)

    first = await wiring.start(settings, addr="127.0.0.1:0")  # records the topic served from
    try:
        await asyncio.wait_for(first.serving.wait(), 60)
    finally:
        await first.stop(1)

    # The local broker keeps everything in memory: killed, it comes back empty, and the
    # topics are created again (with another partition count, as the tester saw).
    own_broker.stop()
    own_broker.start()
    ensure_topics(own_broker.bootstrap, 4)

    answers: list[object] = []
    again = await wiring.start(settings, addr="127.0.0.1:0")
    try:
        async with channel(f"127.0.0.1:{again.port}") as ch:
            stub = policy_pb2_grpc.PolicyServiceStub(ch)

            async def answer() -> object:
                try:
                    got = await stub.Check(_check(over), timeout=2)
                    answers.append((got.decision, got.used_micros))
                    return got.decision
                except grpc.aio.AioRpcError as exc:
                    answers.append((exc.code(), exc.details()))
                    return exc.code(), "topic accept --by" in (exc.details() or "")

            unavailable = (grpc.StatusCode.UNAVAILABLE, True)
            await eventually(answer, unavailable, within=30)
            for _ in range(20):  # and it stays so: nothing changes it but an operator
                assert await answer() == unavailable
                await asyncio.sleep(0.05)

            # What metering's `topic accept` does (its open totals back on the topic),
            # then the operator's accept, with the real command.
            _publish_totals(own_broker.bootstrap, {over: 25 * CREDIT})
            done = await asyncio.to_thread(
                subprocess.run,
                [sys.executable, "-m", "services.policy", "topic", "accept", "--by", "tests",
                 "--reason", "broker restarted empty; totals republished"],
                env=env, cwd=ROOT, capture_output=True, text=True, timeout=120,
            )  # fmt: skip
            assert done.returncode == 0, done.stderr[-2000:]
            assert "accepted" in done.stdout, done.stdout
            assert "4 partitions" in done.stdout, done.stdout

            await eventually(answer, DENY, within=30)
            assert answers[-1] == (DENY, 25 * CREDIT)
    finally:
        await again.stop(1)

    assert not [a for a in answers if isinstance(a, tuple) and a[0] == ALLOW], answers
    pool = await connect_pool(infra.database_url)
    try:
        audited = await pool.fetch(
            "SELECT accepted_by, new_partitions FROM policy.topic_accepts WHERE workspace_id = $1",
            workspace,
        )
    finally:
        await pool.close()
    assert [(r["accepted_by"], r["new_partitions"]) for r in audited] == [("tests", 4)]
