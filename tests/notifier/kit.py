"""What the notifier's infrastructure tests share: the Slack stand-in in the test's
event loop, people in policy's directory, intents on the topic, notifier processes,
and the delivery rows and stand-in messages to count."""

from __future__ import annotations

import os
import sys
import uuid
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path

import asyncpg

from devtools.localinfra import free_port
from devtools.localinfra.process import ChildProcess
from devtools.slack_standin import SlackStandin
from quartermaster import kafka
from quartermaster.notifications import intent, record
from quartermaster.v1 import notifications_pb2, policy_pb2, policy_pb2_grpc

ROOT = Path(__file__).resolve().parents[2]


def notifier_env(base: dict[str, str], standin: SlackStandin, directory_port: int,
                 **overrides: str) -> dict[str, str]:  # fmt: skip
    """A notifier's environment: the stand-in for Slack, a group of its own, short
    claims so a dead sender's deliveries are handed on within seconds."""
    return {
        **base,
        "QM_NOTIFIER_SLACK_BASE_URL": standin.api_url,
        "QM_DIRECTORY_ADDR": f"127.0.0.1:{directory_port}",
        "QM_NOTIFIER_GROUP_ID": f"qm-notifier-test-{uuid.uuid4().hex[:8]}",
        "QM_NOTIFIER_SLACK_PACE_SECONDS": "0",
        "QM_NOTIFIER_CLAIM_SECONDS": "2",
        "QM_NOTIFIER_RECONCILE_SECONDS": "0.5",
        "QM_NOTIFIER_POLL_SECONDS": "0.05",
        "QM_NOTIFIER_SESSION_TIMEOUT_SECONDS": "6",
        **overrides,
    }


def process(name: str, env: dict[str, str]) -> ChildProcess:
    """`python -m services.notifier` (not started), its metrics on a port of its own
    unless `env` names one."""
    env = {"QM_NOTIFIER_METRICS_ADDR": f"127.0.0.1:{free_port()}", **env}
    log = ROOT / ".run" / f"test-{os.getpid()}-logs" / f"{name}-{uuid.uuid4().hex[:6]}.log"
    return ChildProcess(name, [sys.executable, "-m", "services.notifier"], log, env=env, cwd=ROOT)


async def add_people(admin: policy_pb2_grpc.PolicyAdminServiceAsyncStub, users: list[str]) -> None:
    """Each user in the directory, Slack id "U" + their id."""
    for u in users:
        await admin.UpsertUser(policy_pb2.User(user_id=u, email=f"{u}@example.com",
                                               slack_user_id=f"U{u}", display_name=u))  # fmt: skip


def threshold_intent(workspace_id: str, user: str, n: int) -> notifications_pb2.Notification:
    return intent(
        dedupe_key=f"threshold:user:{user}:test-{n}:80:{user}",
        kind=notifications_pb2.NOTIFICATION_KIND_THRESHOLD_CROSSED,
        workspace_id=workspace_id, recipient_user_id=user,
        subject="You have used 80% of your monthly AI budget", body="8 of 10 credits",
        data={"subject": f"user:{user}", "percent": "80", "used_micros": "8000000",
              "limit_micros": "10000000", "period_key": datetime.now(UTC).strftime("%Y-%m")},
        created_at=datetime.now(UTC),
    )  # fmt: skip


def produce_intents(
    bootstrap: str, notes: list[notifications_pb2.Notification], partition: int | None = None
) -> None:
    """Publish intents as metering and policy do (keyed by recipient), or all to one
    `partition`; returns once the broker has them all."""
    producer = kafka.producer(bootstrap, acks="all")
    for n in notes:
        topic, key, value, headers = record(n)
        if partition is None:
            producer.produce(topic, key=key, value=value, headers=headers)
        else:
            producer.produce(topic, key=key, value=value, headers=headers, partition=partition)
    assert producer.flush(30) == 0, "intents still in flight after 30 s"


def delivery_ids(standin: SlackStandin) -> Counter[str]:
    """How many stand-in messages carry each delivery id."""
    return Counter(str(m.metadata.get("event_payload", {}).get("delivery_id"))
                   for m in standin.posted())  # fmt: skip


async def states(database_url: str, workspace_id: str) -> Counter[str]:
    conn = await asyncpg.connect(database_url)
    try:
        rows = await conn.fetch("SELECT state FROM notifier.deliveries WHERE workspace_id = $1",
                                workspace_id)  # fmt: skip
    finally:
        await conn.close()
    return Counter(r["state"] for r in rows)
