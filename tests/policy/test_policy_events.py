"""policy's event loops against the real broker, metering worker and Postgres:
threshold notifications (one per subject, period and percent, across replicas) and
approved credit requests installing their override exactly once."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime, timedelta

import asyncpg
import pytest

from devtools.localinfra.stack import Infra
from quartermaster.money import MICROS_PER_CREDIT as C
from quartermaster.topics import CONTENT_TYPE, PROTOBUF, Topic
from quartermaster.v1 import notifications_pb2, policy_pb2, requests_pb2
from quartermaster.wire import timestamp
from services.policy.decide import Enforcement
from tests.conftest import MeteringWorker, Replicas
from tests.helpers import eventually, new_user, produce, produce_usage, read_topic, usage

pytestmark = pytest.mark.infra

COST = 6_250  # micros of one helpers.usage() event


async def test_each_threshold_is_announced_once_per_period_across_replicas(
    infra: Infra, metering: MeteringWorker, metered_replicas: Replicas
) -> None:
    replicas = metered_replicas  # the workspace metering counts
    await replicas.set_default(20 * COST, Enforcement.SOFT)  # soft: spending goes on past 100 %
    a, b = await replicas.start(2)
    user = new_user()
    stub = replicas.policy(a)

    async def used() -> int:
        return int((await stub.GetBudget(policy_pb2.GetBudgetRequest(user_id=user))).used_micros)

    # 20 % → 55 % → 85 % → 130 % → 150 %, in several batches of events each
    for step, total in ((4, 4), (7, 11), (6, 17), (9, 26), (4, 30)):
        for _ in range(step):
            produce_usage(infra.kafka_bootstrap, [usage(user)])
        await eventually(used, total * COST)
    await asyncio.sleep(1.0)  # let both replicas finish with the last totals

    notes = []
    for m in read_topic(infra.kafka_bootstrap, Topic.NOTIFICATIONS.value, idle=1.5):
        if m.key() == user.encode():
            n = notifications_pb2.Notification()
            n.ParseFromString(m.value() or b"")
            if n.kind == notifications_pb2.NOTIFICATION_KIND_THRESHOLD_CROSSED:
                notes.append(n)
    period = datetime.now(UTC).strftime("%Y-%m")
    assert sorted(n.dedupe_key for n in notes) == sorted(
        f"threshold:user:{user}:{period}:{p}:{user}" for p in (50, 80, 100)
    ), [n.dedupe_key for n in notes]
    full = next(n for n in notes if n.data["percent"] == "100")
    assert full.subject == "You have used all of your monthly AI budget"
    assert "Ask for more credits" in full.body
    assert full.recipient_user_id == user
    assert a.thresholds.published + b.thresholds.published == 3


def _approval(
    request_id: str, user: str, workspace: str, amount: int, event_id: str
) -> requests_pb2.RequestEvent:
    now = datetime.now(UTC)
    return requests_pb2.RequestEvent(
        event_id=event_id,
        type="request.approved",
        request=requests_pb2.CreditRequest(
            request_id=request_id, workspace_id=workspace, requester_user_id=user,
            amount_micros=amount, duration_seconds=3600, justification="eval run for launch",
            approver_user_id="lead", state=requests_pb2.REQUEST_STATE_APPROVED,
        ),
        actor_user_id="lead",
        occurred_at=timestamp(now),
        override_starts_at=timestamp(now - timedelta(seconds=1)),
        override_expires_at=timestamp(now + timedelta(days=2)),
    )  # fmt: skip


async def test_an_approval_installs_its_override_once_however_often_it_arrives(
    infra: Infra, replicas: Replicas
) -> None:
    await replicas.set_default(10 * C, Enforcement.SOFT)
    a, b = await replicas.start(2)
    user, request_id = new_user(), f"cr-{uuid.uuid4().hex[:8]}"
    approval = _approval(request_id, user, replicas.workspace_id, 5 * C, "ev-1")
    redelivered = _approval(request_id, user, replicas.workspace_id, 5 * C, "ev-2")
    other_ws = _approval(f"cr-{uuid.uuid4().hex[:8]}", user, "another-workspace", 9 * C, "ev-3")
    headers = [(CONTENT_TYPE, PROTOBUF.encode())]
    records = [(request_id.encode(), e.SerializeToString(), headers)
               for e in (approval, approval, redelivered, other_ws)]  # fmt: skip
    records.append((b"junk", b"\xff\x00 not a RequestEvent", headers))
    produce(infra.kafka_bootstrap, records, topic=Topic.REQUESTS.value)

    async def limits() -> list[tuple[int, str]]:
        out = []
        for r in (a, b):
            c = await replicas.policy(r).Check(
                policy_pb2.CheckRequest(user_id=user, product="chat", model="gpt-5")
            )
            out.append((int(c.limit_micros), c.limit_source))
        return out

    source = f"workspace_default+override:req-{request_id}"
    await eventually(limits, [(15 * C, source), (15 * C, source)], within=30)
    await asyncio.sleep(1.0)  # every record consumed (the junk and the duplicates too)
    conn = await asyncpg.connect(infra.database_url)
    try:
        rows = await conn.fetch(
            "SELECT override_id, additive, limit_micros, granted_by, reason FROM policy.overrides"
            " WHERE workspace_id = $1 AND user_id = $2",
            replicas.workspace_id, user,
        )  # fmt: skip
        audit = await conn.fetch(
            "SELECT actor, action FROM policy.audit_log WHERE workspace_id = $1"
            " AND subject = $2",
            replicas.workspace_id, f"override:req-{request_id}",
        )  # fmt: skip
    finally:
        await conn.close()
    assert [(r["additive"], r["limit_micros"], r["granted_by"]) for r in rows] == [
        (True, 5 * C, "lead")
    ]
    assert rows[0]["reason"] == f"approved credit request {request_id}: eval run for launch"
    assert [(r["actor"], r["action"]) for r in audit] == [
        ("requests-service", "override.approved_request")
    ]
    assert await limits() == [(15 * C, source), (15 * C, source)]
    # the other workspace's approval was skipped, counted (and said once) by each (the
    # topic also holds other tests' approvals, each of a workspace foreign here too)
    seen = [r.approvals.foreign.by_workspace for r in (a, b)]
    assert [s.get("another-workspace") for s in seen] == [1, 1], seen
