"""`make run`'s readiness probe (issue 12, item 6: "ready means ready"): the system is
up when a usage event produced now is counted by metering and seen in policy's budget,
not when the processes answer their health checks. One event of the probe user
`PROBE_USER` (1,000 input tokens of gpt-5: 0.00125 credits, visible in the Cost API
under that name) is reported through the broker as a gateway would, and policy's
`GetBudget` is asked until the user's total includes it.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from datetime import UTC, datetime

import grpc

from quartermaster.grpcclient import bearer, open_channel
from quartermaster.reporter import UsageReporter
from quartermaster.tls import ClientTls
from quartermaster.v1 import policy_pb2, policy_pb2_grpc, usage_pb2

PROBE_USER = "qm-ready-probe"


class NotReady(Exception):
    """The probe event was not counted in time: `str()` says where it stopped."""


async def probe_counted(
    bootstrap: str, policy_addr: str, tls: ClientTls | None, token: str, within_s: float
) -> float:
    """Seconds from producing one probe event to policy's budget of PROBE_USER having
    grown by it; NotReady after `within_s` seconds, naming what was seen last. `token`:
    role reader or gateway (GetBudget)."""
    deadline = time.monotonic() + within_s
    async with open_channel(policy_addr, tls) as channel:
        stub = policy_pb2_grpc.PolicyServiceStub(channel)
        request = policy_pb2.GetBudgetRequest(user_id=PROBE_USER)
        before = await _used(stub, request, token, deadline)
        event = usage_pb2.UsageEvent(
            event_id=f"ready-{uuid.uuid4()}", user_id=PROBE_USER, product="qm-ready-probe",
            model="gpt-5", input_tokens=1000, source="make-run",
        )  # fmt: skip
        event.occurred_at.FromDatetime(datetime.now(UTC))
        began = time.monotonic()
        reporter = await asyncio.to_thread(UsageReporter, bootstrap)
        try:
            reporter.report(event)
            if await asyncio.to_thread(reporter.flush, within_s) != 0:
                raise NotReady(f"the broker at {bootstrap} did not take the probe event: "
                               f"{'; '.join(reporter.errors) or 'no answer'}")  # fmt: skip
        finally:
            await asyncio.to_thread(reporter.close)
        seen = before
        while time.monotonic() < deadline:
            seen = await _used(stub, request, token, deadline)
            if seen > before:
                return time.monotonic() - began
            await asyncio.sleep(0.05)
    raise NotReady(f"the probe event was not in policy's budget of {PROBE_USER} within "
                   f"{within_s:g} s (used {seen} micros): see .run/logs/metering.log")  # fmt: skip


# Policy answers these while it is still reading its totals or limits at start.
_NOT_YET = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.FAILED_PRECONDITION,
            grpc.StatusCode.DEADLINE_EXCEEDED)  # fmt: skip


async def _used(
    stub: policy_pb2_grpc.PolicyServiceAsyncStub, request: policy_pb2.GetBudgetRequest, token: str,
    deadline: float,
) -> int:  # fmt: skip
    """PROBE_USER's used micros, asked again while policy is not ready yet, until
    `deadline` (time.monotonic); NotReady then, or at once for any other refusal."""
    while True:
        try:
            wait = min(5.0, max(0.1, deadline - time.monotonic()))
            budget = await stub.GetBudget(request, metadata=bearer(token), timeout=wait)
            return int(budget.used_micros)
        except grpc.aio.AioRpcError as exc:
            if exc.code() not in _NOT_YET or time.monotonic() > deadline:
                raise NotReady(f"policy's GetBudget: {exc.code().name}: {exc.details()}") from None
        await asyncio.sleep(0.1)
