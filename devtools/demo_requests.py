"""`make run`'s credit request (issue 15): when carol's runaway agent is denied, she
asks RequestService for more with a reason, as herself (a `member` credential named
carol); the notifier asks her manager alice (Approve and Deny buttons on the Slack
stand-in's page); when alice has not decided within a while, make run approves it as
her (QM_DEMO_AUTO_APPROVE=0: the console prints the CLI command that does, and waits);
the console follows the request until its grant ends: asked, awaiting whom, approved
by whom, the override in policy, ended.

Once per run: after the grant ends carol stays denied, which is the end of the story.
A failure here is told on the console and ends only the demo's request, never the
traffic or the run (the requests service's own log says more).
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
import time
import uuid
from dataclasses import dataclass
from typing import TextIO

import grpc

from quartermaster import roles
from quartermaster.grpcclient import bearer, open_channel
from quartermaster.money import MICROS_PER_CREDIT, credits
from quartermaster.tls import ClientTls
from quartermaster.tokens import parse_tokens
from quartermaster.v1 import requests_pb2, requests_pb2_grpc
from quartermaster.wire import from_timestamp

ASKER, MANAGER = "carol", "alice"
WHY = "my agent loop hit the monthly limit mid-run; credits to finish tonight's eval"
FOLLOW_EVERY_S = 1.0
_FINAL = {
    requests_pb2.REQUEST_STATE_DENIED: "denied",
    requests_pb2.REQUEST_STATE_CANCELLED: "cancelled",
    requests_pb2.REQUEST_STATE_EXPIRED: "expired: nobody decided in time",
    requests_pb2.REQUEST_STATE_ENDED: "ended: the grant's time ran out",
    requests_pb2.REQUEST_STATE_REVOKED: "revoked",
}


@dataclass(frozen=True)
class DemoAsk:
    """How the demo asks: RequestService at `addr` (`tls`: None for plaintext), the
    asker's and the manager's tokens (role member), `credits` for `grant_seconds`, and
    the manager approving `approve_after_s` after the request shows (None: the
    console prints the command for a person to run instead)."""

    addr: str
    tls: ClientTls | None
    asker_token: str
    manager_token: str
    credits: int
    grant_seconds: int
    approve_after_s: float | None


def approve_command(addr: str, manager_token: str, request_id: str, version: int) -> str:
    """The shell command that approves `request_id` at `version` as the manager."""
    return (
        f"QM_TOKEN={manager_token} .venv/bin/python -m services.requests.cli --addr {addr} "
        f"decide {request_id} approve --version {version}"
    )


class CreditDemo:
    """Asks once, on the asker's first DENY (`denied`, called by the simulator), then
    follows the request on a task of its own; `close` ends that task. Writes to `out`
    with the seconds since `started` (time.monotonic), as the simulator does."""

    def __init__(self, ask: DemoAsk, out: TextIO, started: float) -> None:
        self._ask = ask
        self._out = out
        self._started = started
        self._task: asyncio.Task[None] | None = None
        self._said: tuple[int, str] = (requests_pb2.REQUEST_STATE_UNSPECIFIED, "")

    def denied(self, user_id: str) -> None:
        """A user's decision flipped to DENY; the asker's first starts the request."""
        if user_id == ASKER and self._task is None:
            self._task = asyncio.ensure_future(self._play())

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    def _say(self, text: str) -> None:
        self._out.write(f"{time.monotonic() - self._started:6.1f}s  {text}\n")
        self._out.flush()

    async def _play(self) -> None:
        try:
            async with open_channel(self._ask.addr, self._ask.tls) as channel:
                await self._story(requests_pb2_grpc.RequestServiceStub(channel))
        except grpc.aio.AioRpcError as exc:
            self._say(f">>> the demo's credit request stopped: {exc.code().name}: "
                      f"{exc.details()} (see .run/logs/requests.log)")  # fmt: skip

    async def _story(self, stub: requests_pb2_grpc.RequestServiceAsyncStub) -> None:
        a = self._ask
        made = await stub.Create(
            requests_pb2.CreateCreditRequest(
                request_id=f"demo-{uuid.uuid4().hex[:8]}", justification=WHY,
                amount_micros=a.credits * MICROS_PER_CREDIT, duration_seconds=a.grant_seconds,
                project="eval-run", product="agents",
            ),
            metadata=bearer(a.asker_token), timeout=30,
        )  # fmt: skip
        step = made.steps[made.current_step]
        self._say(f'>>> {ASKER} asks for {a.credits} credits for {a.grant_seconds} s '
                  f'(request {made.request_id}): "{WHY}"')  # fmt: skip
        s = made.standing
        self._say(f"    awaiting {', '.join(step.approver_user_ids)} (step {step.name}); "
                  f"standing: {credits(s.used_micros)} of {credits(s.limit_micros)} credits "
                  f"this {s.period}")  # fmt: skip
        if a.approve_after_s is None:
            self._say(f"    {MANAGER} decides on the Slack stand-in's page, or with the CLI:")
            self._say("    " + approve_command(a.addr, a.manager_token, made.request_id,
                                               made.version))  # fmt: skip
            await self._follow(stub, made)
            return
        self._say(f"    {MANAGER} decides on the Slack stand-in's page; if she has not in "
                  f"{a.approve_after_s:g} s, make run approves it as her")  # fmt: skip
        follow = asyncio.ensure_future(self._follow(stub, made))
        try:
            # A click decides it first: then the follower tells it and no one approves.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(follow), a.approve_after_s)
            if self._said[0] == requests_pb2.REQUEST_STATE_PENDING:
                decided = await stub.Decide(
                    requests_pb2.DecideCreditRequest(
                        request_id=made.request_id, version=made.version,
                        vote=requests_pb2.VOTE_APPROVE,
                        reason="finish the eval; then fix the loop",
                    ),
                    metadata=bearer(a.manager_token), timeout=30,
                )  # fmt: skip
                self._tell(decided)  # at once, not at the next look
            await follow
        finally:
            follow.cancel()

    async def _follow(
        self, stub: requests_pb2_grpc.RequestServiceAsyncStub, made: requests_pb2.CreditRequest
    ) -> None:
        """Say each change of the request (as the asker sees it) until it is final."""
        self._said = (made.state, made.override_status)
        get = requests_pb2.GetCreditRequest(request_id=made.request_id)
        while self._said[0] not in _FINAL:
            await asyncio.sleep(FOLLOW_EVERY_S)
            self._tell(await stub.Get(get, metadata=bearer(self._ask.asker_token), timeout=10))

    def _tell(self, r: requests_pb2.CreditRequest) -> None:
        """Say what changed since the last time the request was seen."""
        said = self._said
        if r.state == requests_pb2.REQUEST_STATE_APPROVED and said[0] != r.state:
            until = from_timestamp(r.ends_at).strftime("%H:%M:%S UTC")
            self._say(f">>> {r.request_id} approved by {r.approver_user_id}: "
                      f"{credits(r.granted_micros)} credits for "
                      f"{r.granted_duration_seconds} s, until {until}")  # fmt: skip
        if r.override_status == "installed" and said[1] != "installed":
            self._say(f"    policy has the grant: {ASKER}'s limit is "
                      f"{credits(r.standing.limit_micros + r.granted_micros)} credits "
                      "until it ends")  # fmt: skip
        if r.state in _FINAL and said[0] != r.state:
            self._say(f">>> {r.request_id} {_FINAL[r.state]}")
        self._said = (r.state, r.override_status)


def member_token(spec: str, user_id: str) -> str:
    """The token of `spec` (QM_TOKENS) that is `user_id` as a member; "" when none is."""
    return next((t for t, g in parse_tokens(spec).items()
                 if g.name == user_id and roles.MEMBER in g.roles), "")  # fmt: skip


def credit_demo(
    tokens: str, addr: str, tls: ClientTls | None, ask_credits: int, grant_seconds: int,
    approve_after_s: float | None,
) -> tuple[CreditDemo | None, str]:  # fmt: skip
    """make run's demo over RequestService at `addr`, with the asker's and manager's
    member tokens from `tokens` (QM_TOKENS), and the line that tells the console what
    will happen; (None, why not) without those tokens."""
    asker, manager = member_token(tokens, ASKER), member_token(tokens, MANAGER)
    if not asker or not manager:
        return None, (f"  no credit request demo: QM_TOKENS has no member token named {ASKER} "
                      f"and one named {MANAGER}")  # fmt: skip
    who = ("decides on the Slack stand-in's page (or make run approves it for her)"
           if approve_after_s is not None else "decides: the CLI command follows")  # fmt: skip
    said = (f"  when {ASKER} is denied she asks for {ask_credits} credits for {grant_seconds} s;"
            f" {MANAGER}, her manager, {who}")  # fmt: skip
    ask = DemoAsk(addr, tls, asker, manager, ask_credits, grant_seconds, approve_after_s)
    return CreditDemo(ask, sys.stdout, time.monotonic()), said
