"""What the requests integration tests share: a relay process of the session, a request
made and approved through the real store, and policy's view of a user's limit."""

from __future__ import annotations

import os
import sys
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path

from devtools.localinfra.process import ChildProcess
from quartermaster.money import MICROS_PER_CREDIT as C
from quartermaster.v1 import policy_pb2
from services.requests import machine
from services.requests.machine import Request
from services.requests.routing import PlannedStep
from services.requests.stores.requests import RequestStore
from services.requests.timing import Timing
from tests.conftest import ROOT, Replicas

TIMING = Timing(timedelta(hours=4), timedelta(hours=8), timedelta(days=3))


def relay_process(env: dict[str, str], tag: str, **settings: str) -> ChildProcess:
    """`python -m services.requests` with these QM_REQUESTS_* settings (not started)."""
    log = ROOT / ".run" / f"test-{os.getpid()}-logs" / f"requests-{tag}.log"
    extra = {f"QM_REQUESTS_{k.upper()}": v for k, v in settings.items()}
    return ChildProcess("requests", [sys.executable, "-m", "services.requests"], log,
                        env={**env, "QM_REQUESTS_RECONCILE_SECONDS": "3600", **extra},
                        cwd=ROOT)  # fmt: skip


def log_text(path: Path) -> str:
    try:
        return path.read_text(errors="replace")
    except FileNotFoundError:
        return ""


async def approved(
    store: RequestStore, user: str, credits: int, approvers: Sequence[str] = ("lead",),
    seconds: int = 3600, granted_credits: int = 0,
) -> Request:  # fmt: skip
    """A request of `credits` for `seconds` by `user`, created and approved now by
    approvers[0] (granting `granted_credits` when set, else as asked)."""
    now = datetime.now(UTC)
    made = machine_create(store.workspace_id, user, credits, approvers, seconds)
    req, _ = await store.create(made)
    granted = granted_credits * C

    def approve(r: Request) -> machine.Outcome:
        return machine.decide(r, approvers[0], True, r.version, now, "go", granted_micros=granted)

    done = await store.apply(req.request_id, approve)
    assert done is not None
    return done.request


async def limit_of(replicas: Replicas, user: str) -> int:
    """The user's limit as the first policy replica answers Check."""
    check = await replicas.policy(replicas.running[0]).Check(
        policy_pb2.CheckRequest(user_id=user, product="chat", model="gpt-5")
    )
    return int(check.limit_micros)


def machine_create(
    workspace_id: str, user: str, credits: int, approvers: Sequence[str], seconds: int = 3600
) -> machine.Outcome:
    """A new one-step request of `credits` by `user` asking any one of `approvers`."""
    return machine.create(
        request_id=f"cr-{uuid.uuid4().hex[:10]}", workspace_id=workspace_id, requester=user,
        amount_micros=credits * C, duration_seconds=seconds, justification="eval run",
        steps=[PlannedStep("admins", tuple(approvers), 1, ())], now=datetime.now(UTC),
        pending_for=TIMING.pending_for,
    )  # fmt: skip
