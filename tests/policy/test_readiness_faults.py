"""Policy never answers from state it doesn't have (issue 14, items 1, 2 and 13), as
fault tests: a replica killed and restarted, PostgreSQL restarted under two replicas,
the broker restarted under a replica. Each fault is done to an instance of the test's
own (a real policy process, a private PostgreSQL, a private broker), never to the
session's.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from devtools.localinfra import free_port
from devtools.localinfra.broker import LocalBroker
from devtools.localinfra.postgres import LocalPostgres
from devtools.localinfra.process import ChildProcess
from devtools.localinfra.stack import Infra
from quartermaster.db import connect_pool
from quartermaster.money import MICROS_PER_CREDIT
from quartermaster.periods import PeriodKind
from quartermaster.topics import Topic
from quartermaster.v1 import policy_pb2, policy_pb2_grpc, usage_pb2
from quartermaster.wire import timestamp
from services.policy import wiring
from services.policy.decide import Enforcement
from services.policy.directory import GroupInfo, UserInfo
from services.policy.directory_import import DirectoryDoc
from services.policy.rules import Rule
from services.policy.settings import PolicySettings
from services.policy.stores.directory import DirectoryStore
from services.policy.stores.limits import LimitStore
from tests.conftest import ROOT
from tests.helpers import channel as credentialed_channel
from tests.helpers import eventually, new_user, produce
from tests.policy.workspaces import new_workspace

pytestmark = pytest.mark.infra
CREDIT = MICROS_PER_CREDIT
ALLOW, DENY = policy_pb2.DECISION_ALLOW, policy_pb2.DECISION_DENY
DOWN = grpc.StatusCode.UNAVAILABLE


async def _call(
    stub: policy_pb2_grpc.PolicyServiceAsyncStub, method: str, request: object
) -> object:
    """One PolicyService call as a client makes it (the one place for its credentials)."""
    return await getattr(stub, method)(request, timeout=2)


def _check(user: str) -> policy_pb2.CheckRequest:
    return policy_pb2.CheckRequest(user_id=user, product="chat", model="gpt-5")


def _publish_totals(bootstrap: str, used: dict[str, int]) -> None:
    """Each user's month total on the totals topic, as metering publishes it."""
    period = datetime.now(UTC).strftime("%Y-%m")
    records: list[tuple[bytes, bytes, list[tuple[str, bytes]]]] = []
    for user, micros in used.items():
        total = usage_pb2.UsageTotal(
            subject_kind=usage_pb2.SUBJECT_KIND_USER, subject_id=user, period_key=period,
            used_micros=micros, updated_at=timestamp(datetime.now(UTC)),
        )  # fmt: skip
        records.append((f"user:{user}:{period}".encode(), total.SerializeToString(), []))
    produce(bootstrap, records, topic=Topic.USAGE_TOTALS.value)


async def _health(port: int) -> int:
    async with credentialed_channel(f"127.0.0.1:{port}") as channel:
        got = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest())
        return int(got.status)


# -- (a) a replica killed and restarted ------------------------------------------------

# Other users' totals ahead of the ones checked, so a restarted replica takes a moment
# to reach them (as with a real workspace's totals) on a broker of the test's own.
FILLER = 60_000


async def test_a_restarted_replica_answers_unavailable_or_the_right_deny_never_allow(
    infra: Infra, own_broker: LocalBroker, service_env: dict[str, str], tmp_path: Path
) -> None:
    over, pooled, mate, pool = new_user(), new_user(), new_user(), f"g-{uuid.uuid4().hex[:6]}"
    workspace = await new_workspace(infra.database_url, 20 * CREDIT)
    db = await connect_pool(infra.database_url)
    try:  # pooled and mate share a 5-credit pool; pooled alone is far under its limit
        users = [UserInfo(u) for u in (over, pooled, mate)]
        await DirectoryStore(db, workspace).apply(
            DirectoryDoc(users, [GroupInfo(pool, "Pool")], {pooled: [pool], mate: [pool]}),
            "tests", dry_run=False,
        )  # fmt: skip
        await LimitStore(db, workspace).set_group_limit(
            pool, "pool", Rule(5 * CREDIT, PeriodKind.MONTH, Enforcement.HARD), "tests"
        )
    finally:
        await db.close()
    bootstrap = own_broker.bootstrap
    _publish_totals(bootstrap, {f"filler-{i}": CREDIT for i in range(FILLER)})
    _publish_totals(bootstrap, {over: 30 * CREDIT, pooled: 1 * CREDIT, mate: 10 * CREDIT})

    port = free_port()
    env = {**service_env, "QM_WORKSPACE_ID": workspace, "QM_POLICY_ADDR": f"127.0.0.1:{port}",
           "QM_KAFKA_BOOTSTRAP": bootstrap}  # fmt: skip
    log = tmp_path / "policy.log"
    argv = [sys.executable, "-m", "services.policy"]
    answers: list[tuple[str, object]] = []

    async def loop_until_settled() -> None:
        """Check both users from the moment the process starts until each got ten
        answers in a row from a serving replica."""
        # Reconnect at once once the port opens (gRPC's default backoff waits a second
        # or more after a refused connection, past the moment this test is about).
        fast = [("grpc.initial_reconnect_backoff_ms", 20), ("grpc.max_reconnect_backoff_ms", 50),
                ("grpc.min_reconnect_backoff_ms", 20)]  # fmt: skip
        async with credentialed_channel(f"127.0.0.1:{port}", options=fast) as channel:
            stub = policy_pb2_grpc.PolicyServiceStub(channel)
            streak = {over: 0, pooled: 0}

            async def probe() -> bool:
                for user in streak:
                    try:
                        got = await _call(stub, "Check", _check(user))
                        assert isinstance(got, policy_pb2.CheckResponse)
                        answers.append((user, got))
                        streak[user] += 1
                    except grpc.aio.AioRpcError as exc:
                        answers.append((user, (exc.code(), exc.details() or "")))
                        streak[user] = 0
                return min(streak.values()) >= 10

            await eventually(probe, True, within=90)

    proc = ChildProcess("policy", argv, log, env=env, cwd=ROOT)
    proc.start()
    try:
        await loop_until_settled()
        proc.kill()
        proc = ChildProcess("policy", argv, log, env=env, cwd=ROOT)
        proc.start()
        await loop_until_settled()
    finally:
        proc.stop(timeout=10)

    not_ready = 0
    for user, got in answers:
        if not isinstance(got, policy_pb2.CheckResponse):
            assert isinstance(got, tuple)
            code, details = got
            assert code in (DOWN, grpc.StatusCode.DEADLINE_EXCEEDED), (user, got)
            not_ready += details.startswith("policy is not ready: ")
        elif user == over:
            assert (got.decision, got.used_micros) == (DENY, 30 * CREDIT), got
        else:
            assert (got.decision, got.used_micros) == (DENY, 1 * CREDIT), got
            assert [(p.group_id, p.used_micros) for p in got.pools] == [(pool, 11 * CREDIT)]
    # The replica was reached while it read the filler, and said so (not only
    # "connection refused" before it listened).
    assert not_ready > 0, answers[:20]
    print(f"answers: {len(answers)}, of them UNAVAILABLE not ready: {not_ready}")  # noqa: T201


# -- (b) PostgreSQL restarted under two replicas ----------------------------------------


@pytest.fixture
async def two_replicas(
    own_postgres: LocalPostgres, service_env: dict[str, str]
) -> AsyncIterator[list[wiring.RunningPolicy]]:
    workspace = await new_workspace(own_postgres.url, 100 * CREDIT)
    # Polling only every 30 s: what arrives within a second came by LISTEN/NOTIFY.
    env = {**service_env, "QM_DATABASE_URL": own_postgres.url, "QM_WORKSPACE_ID": workspace,
           "QM_POLICY_REFRESH_SECONDS": "30"}  # fmt: skip
    running: list[wiring.RunningPolicy] = []
    try:
        for _ in range(2):
            running.append(await wiring.start(PolicySettings.from_env(env), addr="127.0.0.1:0"))
        for r in running:
            await asyncio.wait_for(r.serving.wait(), 60)
        yield running
    finally:
        for r in running:
            await r.stop(1)


async def test_after_postgres_restarts_a_hold_on_one_replica_shows_on_the_other_within_a_second(
    own_postgres: LocalPostgres, two_replicas: list[wiring.RunningPolicy]
) -> None:
    a, b = two_replicas
    user = new_user()
    async with (
        credentialed_channel(f"127.0.0.1:{a.port}") as ch_a,
        credentialed_channel(f"127.0.0.1:{b.port}") as ch_b,
    ):
        on_a, on_b = (
            policy_pb2_grpc.PolicyServiceStub(ch_a),
            policy_pb2_grpc.PolicyServiceStub(ch_b),
        )

        async def reserved_on_b() -> object:
            got = await _call(on_b, "GetBudget", policy_pb2.GetBudgetRequest(user_id=user))
            assert isinstance(got, policy_pb2.Budget)
            return got.reserved_micros

        def hold(request_id: str) -> policy_pb2.ReserveRequest:
            return policy_pb2.ReserveRequest(
                user_id=user, product="chat", model="gpt-5", estimated_micros=CREDIT,
                request_id=request_id,
            )  # fmt: skip

        own_postgres.stop()
        own_postgres.fresh = False
        own_postgres.start()

        async def held_on_a() -> object:
            # A's pool connects again on its own: UNAVAILABLE until it has.
            try:
                return (await _call(on_a, "Reserve", hold("first"))).decision  # type: ignore[attr-defined]
            except grpc.aio.AioRpcError as exc:
                return exc.code()

        await eventually(held_on_a, ALLOW, within=30)
        await eventually(reserved_on_b, CREDIT, within=1.0)
        # And NOTIFY works again (not only the catch-up read on reconnect).
        await eventually(lambda: asyncio.sleep(0, b.listener.connected), True, within=5)
        await _call(on_a, "Reserve", hold("second"))
        await eventually(reserved_on_b, 2 * CREDIT, within=1.0)
    assert b.listener.reconnects >= 1
    assert a.listener.reconnects >= 1


# -- (c) the broker restarted under a replica --------------------------------------------


async def test_after_the_broker_restarts_empty_policy_stops_answering_from_stale_totals(
    infra: Infra,
    own_broker: LocalBroker,
    service_env: dict[str, str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    over = new_user()
    workspace = await new_workspace(infra.database_url, 20 * CREDIT)
    _publish_totals(own_broker.bootstrap, {over: 30 * CREDIT})
    env = {**service_env, "QM_WORKSPACE_ID": workspace, "QM_KAFKA_BOOTSTRAP": own_broker.bootstrap,
           "QM_POLICY_TOTALS_CHECK_SECONDS": "0.2"}  # fmt: skip
    running = await wiring.start(PolicySettings.from_env(env), addr="127.0.0.1:0")
    try:
        await asyncio.wait_for(running.serving.wait(), 60)
        async with credentialed_channel(f"127.0.0.1:{running.port}") as channel:
            stub = policy_pb2_grpc.PolicyServiceStub(channel)
            got = await _call(stub, "Check", _check(over))
            assert (got.decision, got.used_micros) == (DENY, 30 * CREDIT)  # type: ignore[attr-defined]
            SERVING = health_pb2.HealthCheckResponse.SERVING
            assert await _health(running.port) == SERVING

            # The local broker keeps everything in memory: it comes back empty.
            own_broker.stop()
            with caplog.at_level(logging.ERROR, logger="qm.policy.totals"):
                own_broker.start()

                async def answer() -> object:
                    try:
                        got = await _call(stub, "Check", _check(over))
                        return got.decision  # type: ignore[attr-defined]
                    except grpc.aio.AioRpcError as exc:
                        return exc.code(), (exc.details() or "").split(":")[:2]

                await eventually(answer, (DOWN, ["policy is not ready", " totals"]), within=30)
                NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
                await eventually(lambda: _health(running.port), NOT_SERVING, within=5)
                errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
                assert any("restart the policy replicas" in e for e in errors), errors
                assert running.feed.problem is not None
    finally:
        await running.stop(1)
