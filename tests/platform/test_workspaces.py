"""ForeignRecords: another workspace's records told apart, counted, said once each;
and the consumers that use it skip them (issue 14, breaker #11). Pure."""

from __future__ import annotations

import logging
from types import SimpleNamespace
from typing import Any

import pytest

from quartermaster.v1 import notifications_pb2, requests_pb2, usage_pb2
from quartermaster.workspaces import ForeignRecords
from services.notifier.intake import Intake
from services.policy.totals import TotalsIndex

log = logging.getLogger("tests.workspaces")


def test_this_workspace_and_an_empty_one_pass_another_is_counted_and_said_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    records = ForeignRecords("ws-here", "qm.x.v1 (tests)", log)
    with caplog.at_level(logging.WARNING, logger="tests.workspaces"):
        seen = [records.foreign(ws) for ws in ("ws-here", "", "acme", "acme", "globex")]
    assert seen == [False, False, True, True, True]
    assert (records.count, records.by_workspace) == (3, {"acme": 2, "globex": 1})
    said = [r.getMessage() for r in caplog.records]
    assert len(said) == 2, "once per workspace, not once per record"
    assert said[0].startswith(
        "qm.x.v1 (tests): skipping records of workspace 'acme'; this deployment serves "
        "workspace 'ws-here' (QM_WORKSPACE_ID)"
    )


def test_without_a_workspace_of_its_own_nothing_is_foreign() -> None:
    assert ForeignRecords("", "qm.x.v1", log).foreign("acme") is False


def test_where_empty_is_not_this_workspace_it_is_skipped() -> None:
    records = ForeignRecords("ws-here", "qm.notifications.v1", log, empty_is_here=False)
    assert records.foreign("") is True
    assert records.foreign("ws-here") is False


def test_a_total_of_another_workspace_is_not_applied() -> None:
    index = TotalsIndex("ws-here")

    def total(ws: str, micros: int) -> bytes:
        return usage_pb2.UsageTotal(
            workspace_id=ws, subject_kind=usage_pb2.SUBJECT_KIND_USER, subject_id="ann",
            period_key="2026-12", used_micros=micros,
        ).SerializeToString()  # fmt: skip

    assert index.apply(total("ws-here", 5)) is not None
    assert index.apply(total("acme", 900)) is None
    assert index.apply(total("", 7)) is not None  # none named: this workspace's
    assert index.used("ann", "2026-12") == 7
    assert index.foreign.by_workspace == {"acme": 1}


async def test_the_notifier_plans_nothing_for_another_workspace() -> None:
    # Nothing else is reached for a foreign record: no store, directory or sender.
    store: Any = SimpleNamespace(workspace_id="ws-here")
    intake = Intake(store, None, None, None, [], None)  # type: ignore[arg-type]
    note = notifications_pb2.Notification(dedupe_key="k", workspace_id="acme",
                                          recipient_user_id="ann")  # fmt: skip
    plan = await intake.plan("qm.notifications.v1", note.SerializeToString())
    assert (plan.deliveries, plan.digest) == ([], [])
    event = requests_pb2.RequestEvent(request=requests_pb2.CreditRequest(workspace_id="acme"))
    plan = await intake.plan("qm.requests.v1", event.SerializeToString())
    assert (plan.deliveries, plan.digest) == ([], [])
    assert intake.foreign_notes.by_workspace == {"acme": 1}
    assert intake.foreign_requests.by_workspace == {"acme": 1}
