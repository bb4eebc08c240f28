"""A record naming another workspace is never counted or applied here (issue 14,
breaker #11): metering sends such a usage event to the DLQ with a reason naming both
workspaces (an event naming none is this workspace's, as ever) and counts the rest;
policy skips such a total on the totals topic, and such an approval on the requests
topic (tests/policy/test_policy_events.py), counting each skip and saying it once per
workspace. Against the session's broker, PostgreSQL, metering worker and policy
server, and a policy replica of a workspace of the test's own."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import TYPE_CHECKING

import pytest

from devtools.localinfra.stack import Infra
from quartermaster.periods import PeriodKind, period_of
from quartermaster.topics import CONTENT_TYPE, PROTOBUF, Topic
from quartermaster.v1 import policy_pb2, usage_pb2
from quartermaster.wire import timestamp
from services.policy.decide import Enforcement
from tests.conftest import MeteringWorker, Replicas
from tests.helpers import eventually, new_user, produce, produce_usage, usage
from tests.metering.test_metering import EVENT_MICROS, used_of
from tests.metering.test_poison import dlq_reasons

if TYPE_CHECKING:
    from quartermaster.v1.policy_pb2_grpc import PolicyServiceAsyncStub as Stub

pytestmark = pytest.mark.infra


async def test_usage_of_another_workspace_goes_to_the_dlq_naming_both_and_is_not_counted(
    infra: Infra, metering: MeteringWorker, policy: Stub
) -> None:
    here = metering.env["QM_WORKSPACE_ID"]
    user = new_user()
    events = [
        usage(user, workspace_id="acme-corp"),  # another workspace: the DLQ
        usage(user),  # none named: this workspace's, counted
        usage(user, workspace_id=here),  # this workspace, named: counted
    ]
    produce_usage(infra.kafka_bootstrap, events)
    await eventually(used_of(policy, user), 2 * EVENT_MICROS)
    [reason] = await dlq_reasons(infra, user, 1)
    assert reason == (
        f"workspace_id: 'acme-corp' is another workspace; this metering counts workspace "
        f"{here!r} (QM_WORKSPACE_ID)"
    )
    assert metering.alive()


async def test_a_total_of_another_workspace_is_skipped_by_policy(
    infra: Infra, replicas: Replicas
) -> None:
    await replicas.set_default(100 * EVENT_MICROS, Enforcement.SOFT)
    [replica] = await replicas.start(1)
    user = new_user()
    month = period_of(PeriodKind.MONTH, datetime.now(UTC), replica.evaluator.tz)

    def total(workspace: str, micros: int) -> tuple[bytes, bytes, list[tuple[str, bytes]]]:
        msg = usage_pb2.UsageTotal(
            workspace_id=workspace, subject_kind=usage_pb2.SUBJECT_KIND_USER,
            subject_id=user, period_kind=usage_pb2.PERIOD_KIND_MONTH, period_key=month.key,
            period_start=timestamp(month.start), period_end=timestamp(month.end),
            used_micros=micros, event_count=1, updated_at=timestamp(datetime.now(UTC)),
        )  # fmt: skip
        key = f"user:{user}:{month.key}".encode()
        return key, msg.SerializeToString(), [(CONTENT_TYPE, PROTOBUF.encode())]

    # The foreign total comes last: applied, it would be the newest for this key.
    produce(infra.kafka_bootstrap, [total(replicas.workspace_id, 3 * EVENT_MICROS),
                                    total("acme-corp", 90 * EVENT_MICROS)],
            topic=Topic.USAGE_TOTALS.value)  # fmt: skip

    async def skipped() -> int:
        return replica.evaluator.totals.foreign.by_workspace.get("acme-corp", 0)

    await eventually(skipped, 1)  # the good total, before it on the partition, is in
    budget = await replicas.policy(replica).GetBudget(policy_pb2.GetBudgetRequest(user_id=user))
    assert budget.used_micros == 3 * EVENT_MICROS
