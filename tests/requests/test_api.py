"""RequestService end to end on real infrastructure: the requests service (its gRPC
server, relay and reconciler, in process) over the session's PostgreSQL and broker, a
real policy replica for the directory, budgets and overrides, and the real Cost API.

- 20 concurrent Decide calls over gRPC by 20 approvers: one transition, one override
  in policy, 19 FAILED_PRECONDITION naming who decided;
- self-approval refused over gRPC for a member, a delegate acting for the requester
  and an admin who is the requester, and through the CLI;
- request → approve → Check flips DENY → ALLOW with the exact new limit → the grant
  ends → DENY;
- keyset paging through 250 requests with requests made and decided between pages.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import grpc
import pytest

from quartermaster.money import MICROS_PER_CREDIT as C
from quartermaster.v1 import policy_pb2, requests_pb2, requests_pb2_grpc
from quartermaster.wire import from_timestamp
from services.metering import api
from services.metering.settings import MeteringSettings
from services.policy.decide import Enforcement
from services.requests import machine, wiring
from services.requests.confirm import Confirmer
from services.requests.machine import Request
from services.requests.routing import PlannedStep
from services.requests.settings import RequestsSettings
from services.requests.stores.requests import RequestStore
from tests.conftest import ROOT, Replicas
from tests.helpers import TOKENS, TOKENS_SPEC, eventually, new_user, refusal

pytestmark = pytest.mark.infra


def token(name: str) -> str:
    return f"{name}-token-0123456789abcdef"


def md(name: str, on_behalf_of: str = "") -> tuple[tuple[str, str], ...]:
    out = (("authorization", f"Bearer {token(name)}"),)
    return (*out, ("qm-on-behalf-of", on_behalf_of)) if on_behalf_of else out


class Stack:
    """A requests service of the replicas' workspace, its address and a stub to it."""

    def __init__(
        self,
        running: wiring.RunningRequests,
        stub: requests_pb2_grpc.RequestServiceAsyncStub,
        replicas: Replicas,
    ) -> None:
        self.running = running
        self.stub = stub
        self.replicas = replicas
        self.addr = f"127.0.0.1:{running.port}"

    async def person(self, user_id: str, manager: str = "", group: str = "") -> None:
        admin = self.replicas.admin(self.replicas.running[0])
        await admin.UpsertUser(policy_pb2.User(user_id=user_id, manager_id=manager))
        if group:
            await admin.SetMemberships(
                policy_pb2.SetMembershipsRequest(user_id=user_id, group_ids=[group])
            )

    async def check(self, user: str, credits: int) -> policy_pb2.CheckResponse:
        return await self.replicas.policy(self.replicas.running[0]).Check(
            policy_pb2.CheckRequest(
                user_id=user, product="chat", model="gpt-5", estimated_micros=credits * C
            )
        )


PEOPLE = ["ann", "ben", "wes", *(f"adm-{i:02d}" for i in range(20))]


@pytest.fixture
async def stack(replicas: Replicas) -> AsyncIterator[Stack]:
    await replicas.set_default(10 * C, Enforcement.HARD)
    (policy,) = await replicas.start(1)
    usage = await api.start(MeteringSettings.from_env(replicas.env), addr="127.0.0.1:0")
    people = ",".join(f"{p}:member:{token(p)}" for p in PEOPLE)
    env = {
        **replicas.env,
        "QM_TOKENS": f"{TOKENS_SPEC},{people},ops:admin:{token('ops')},"
        f"notifier:delegate:{token('notifier')}",
        "QM_REQUESTS_POLICY_ADDR": f"127.0.0.1:{policy.port}",
        "QM_REQUESTS_USAGE_API_ADDR": f"127.0.0.1:{usage.served.port}",
        "QM_REQUESTS_CLIENT_TOKEN": TOKENS["reader"],
        "QM_REQUESTS_RULES": "manager:1:0,group_admins:1:100",
        "QM_REQUESTS_RECONCILE_SECONDS": "0.2",
        "QM_REQUESTS_RELAY_POLL_SECONDS": "0.05",
    }
    running = await wiring.start(RequestsSettings.from_env(env), addr="127.0.0.1:0")
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{running.port}") as ch:
            yield Stack(running, requests_pb2_grpc.RequestServiceStub(ch), replicas)
    finally:
        await running.stop(1)
        await usage.stop(1)


def ask(credits: int, seconds: int = 3600) -> requests_pb2.CreateCreditRequest:
    return requests_pb2.CreateCreditRequest(
        amount_micros=credits * C, duration_seconds=seconds, justification="eval run for the launch"
    )


async def test_request_approve_allow_with_the_exact_limit_then_the_grant_ends(stack: Stack) -> None:
    user = new_user()
    await stack.person("ben")
    await stack.person(user, manager="ben")
    assert (await stack.check(user, 15)).decision == policy_pb2.DECISION_DENY
    made = await stack.stub.Create(ask(10, seconds=4), metadata=md("notifier", on_behalf_of=user))
    assert made.requester_user_id == user
    assert made.timeline[0].via == "notifier"
    assert [list(s.approver_user_ids) for s in made.steps] == [["ben"]]
    assert made.standing.limit_micros == 10 * C
    assert made.standing.unavailable == ""
    assert made.standing.period == "month"
    done = await stack.stub.Decide(
        requests_pb2.DecideCreditRequest(
            request_id=made.request_id,
            version=made.version,
            vote=requests_pb2.VOTE_APPROVE,
            reason="launch week",
        ),
        metadata=md("ben"),
    )
    assert done.state == requests_pb2.REQUEST_STATE_APPROVED

    async def decision() -> tuple[int, int]:
        c = await stack.check(user, 15)
        return c.decision, c.limit_micros

    await eventually(decision, (policy_pb2.DECISION_ALLOW, 20 * C))
    # the grant's 4 s pass: the reconciler ends it and policy drops the override
    await eventually(decision, (policy_pb2.DECISION_DENY, 10 * C), within=30)

    async def state() -> tuple[int, str]:
        got = await stack.stub.Get(
            requests_pb2.GetCreditRequest(request_id=made.request_id), metadata=md("ops")
        )
        return got.state, got.override_status

    # ended, and policy confirmed the override gone
    await eventually(state, (requests_pb2.REQUEST_STATE_ENDED, "removed"), within=30)


async def test_20_concurrent_decides_one_transition_one_override_19_refusals(stack: Stack) -> None:
    admin = stack.replicas.admin(stack.replicas.running[0])
    admins = [f"adm-{i:02d}" for i in range(20)]
    await admin.UpsertGroup(policy_pb2.Group(group_id="launch", admin_user_ids=admins))
    await stack.person("ben")
    await stack.person("ann", manager="ben", group="launch")
    # 150 credits: the manager step, then the group admins' step
    made = await stack.stub.Create(ask(150), metadata=md("ann"))
    assert [s.name for s in made.steps] == ["manager", "group_admins"]
    voted = await stack.stub.Decide(
        requests_pb2.DecideCreditRequest(
            request_id=made.request_id, version=1, vote=requests_pb2.VOTE_APPROVE
        ),
        metadata=md("ben"),
    )
    assert voted.current_step == 1
    assert sorted(voted.steps[1].approver_user_ids) == admins

    async def awaiting(who: str) -> list[str]:
        page = await stack.stub.ListAwaitingMe(requests_pb2.ListCreditRequests(), metadata=md(who))
        return [r.request_id for r in page.requests]

    assert await awaiting("ben") == []  # voted: the request moved on to the group admins
    assert await awaiting("adm-03") == [made.request_id]

    async def decide(who: str) -> tuple[grpc.StatusCode, str]:
        call = stack.stub.Decide(
            requests_pb2.DecideCreditRequest(
                request_id=made.request_id, version=voted.version, vote=requests_pb2.VOTE_APPROVE
            ),
            metadata=md(who),
        )
        try:
            await call
        except grpc.aio.AioRpcError as exc:
            return exc.code(), exc.details() or ""
        return grpc.StatusCode.OK, who

    results = await asyncio.gather(*(decide(a) for a in admins))
    won = [w for code, w in results if code == grpc.StatusCode.OK]
    refused = [said for code, said in results if code == grpc.StatusCode.FAILED_PRECONDITION]
    assert len(won) == 1, results
    assert len(refused) == 19, results
    assert all(s.startswith(f"the request was already approved by {won[0]} at") for s in refused)
    got = await stack.stub.Get(
        requests_pb2.GetCreditRequest(request_id=made.request_id), metadata=md("ann")
    )
    assert [e.action for e in got.timeline] == ["created", "voted", "approved"]
    assert await awaiting("adm-03") == []

    async def limit() -> int:
        return (await stack.check("ann", 0)).limit_micros

    await eventually(limit, 160 * C)
    assert stack.replicas.running[0].approvals.installed == 1

    async def status() -> str:
        got = await stack.stub.Get(
            requests_pb2.GetCreditRequest(request_id=made.request_id), metadata=md("ann")
        )
        return got.override_status

    await eventually(status, "installed")  # policy confirmed it (ListLimits)


class NothingGranted:
    """Policy as a confirmer sees it when an event never arrived."""

    async def granted(self) -> set[str]:
        return set()


async def test_an_unconfirmed_grant_has_its_event_sent_again_until_policy_confirms(
    stack: Stack,
) -> None:
    # the service's own confirmer stops, so this test alone decides what is confirmed
    stack.running.confirmer.stopping = True
    await asyncio.wait_for(stack.running.tasks[-1], 30)
    await stack.person("ben")
    await stack.person("ann", manager="ben")
    made = await stack.stub.Create(ask(5), metadata=md("ann"))
    done = await stack.stub.Decide(
        requests_pb2.DecideCreditRequest(
            request_id=made.request_id, version=1, vote=requests_pb2.VOTE_APPROVE
        ),
        metadata=md("ben"),
    )
    assert done.override_status == "installing"
    store = stack.running.store
    approved_at = from_timestamp(done.approved_at)
    blind = Confirmer(store, NothingGranted(), retry_after=timedelta(seconds=60),
                      clock=lambda: approved_at + timedelta(seconds=61))  # fmt: skip
    await eventually(lambda: _sent(store, made.request_id), True)
    assert await blind.pass_once() == 0
    assert blind.resent == 1  # marked unsent: the relay publishes it again
    await eventually(lambda: _sent(store, made.request_id), True)
    assert await blind.pass_once() == 0
    assert blind.resent == 1  # not again before another minute

    seeing = Confirmer(store, stack.running.overrides)

    async def status() -> str:
        await seeing.pass_once()
        got = await store.get(made.request_id)
        return got.override_status if got else ""

    await eventually(status, "installed")


async def _sent(store: RequestStore, request_id: str) -> bool:
    event = f"{request_id}:2:request.approved"
    async with store._pool.acquire() as conn:
        at = await conn.fetchval("SELECT sent_at FROM requests.outbox WHERE event_id = $1", event)
    return at is not None


async def test_self_approval_is_refused_on_every_path(stack: Stack) -> None:
    await stack.person("ben")
    await stack.person("ops", manager="ben")
    await stack.person("wes", manager="ops")
    for who, via in (("wes", ""), ("ops", ""), ("wes", "notifier")):
        asker = md("notifier", on_behalf_of=who) if via else md(who)
        made = await stack.stub.Create(ask(5), metadata=asker)
        decide = requests_pb2.DecideCreditRequest(
            request_id=made.request_id, version=1, vote=requests_pb2.VOTE_APPROVE
        )
        for path in (md(who), md("notifier", on_behalf_of=who)):
            code, said = await refusal(stack.stub.Decide(decide, metadata=path))
            assert (code, said) == (
                grpc.StatusCode.PERMISSION_DENIED,
                f"{who} asked for this request and can't decide it",
            )
    # and through the CLI, with wes's own token
    cli = await asyncio.to_thread(
        subprocess.run,
        [
            sys.executable,
            "-m",
            "services.requests.cli",
            "--addr",
            stack.addr,
            "decide",
            made.request_id,
            "approve",
            "--version",
            "1",
        ],
        env={**os.environ, "QM_TOKEN": token("wes")},
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
        check=False,
    )
    assert cli.returncode == 1, cli.stderr
    assert "PERMISSION_DENIED: wes asked for this request and can't decide it" in cli.stderr


async def _seed_pending(
    stack: Stack, requester: str, approver: str, count: int, now: datetime
) -> list[Request]:
    """`count` pending requests by `requester` awaiting `approver`, stored as the
    service stores them, five at a time sharing one created_at (ties: request_id)."""
    made = []
    for i in range(count):
        out = machine.create(
            request_id=f"cr-{uuid.uuid4().hex[:12]}", workspace_id=stack.running.store.workspace_id,
            requester=requester, amount_micros=C, duration_seconds=60, justification="paging",
            steps=[PlannedStep("manager", (approver,), 1, ())],
            now=now + timedelta(milliseconds=i // 5), pending_for=timedelta(days=1),
        )  # fmt: skip
        req, _ = await stack.running.store.create(out)
        made.append(req)
    return made


async def test_paging_through_250_requests_with_inserts_between_pages(stack: Stack) -> None:
    """Every request there when paging began is listed once, in the list's order, though
    requests are made (and one decided) between pages: offsets would show some twice."""
    asker, lead = new_user(), new_user()
    started = datetime.now(UTC) - timedelta(minutes=5)
    first = await _seed_pending(stack, asker, lead, 250, started)
    key = [(r.created_at, r.request_id) for r in first]
    newest_first = [rid for _, rid in sorted(key, reverse=True)]
    oldest_first = [rid for _, rid in sorted(key)]

    async def page_all(call: Any, who: str, between: Any) -> list[str]:
        seen: list[str] = []
        token = ""
        while True:
            page = await call(requests_pb2.ListCreditRequests(limit=23, page_token=token),
                              metadata=md("notifier", on_behalf_of=who))  # fmt: skip
            seen += [r.request_id for r in page.requests]
            if not page.next_page_token:
                return seen
            token = page.next_page_token
            await between(seen)

    async def ask_more(_seen: list[str]) -> None:
        await _seed_pending(stack, asker, new_user(), 3, datetime.now(UTC))

    mine = await page_all(stack.stub.ListMine, asker, ask_more)
    assert mine == newest_first  # the newer ones sort before the pages already read

    later: list[Request] = []
    decided: list[str] = []

    async def ask_and_decide(seen: list[str]) -> None:
        later.extend(await _seed_pending(stack, asker, lead, 3, datetime.now(UTC)))
        if not decided:  # one not yet listed leaves the list: nothing after it is skipped
            rid = next(r for r in oldest_first if r not in seen)
            decided.append(rid)
            await stack.stub.Decide(requests_pb2.DecideCreditRequest(
                request_id=rid, version=1, vote=requests_pb2.VOTE_DENY, reason="no"),
                metadata=md("notifier", on_behalf_of=lead))  # fmt: skip

    awaiting = await page_all(stack.stub.ListAwaitingMe, lead, ask_and_decide)
    assert len(awaiting) == len(set(awaiting))
    expected = [r for r in oldest_first if r not in decided]
    assert awaiting[: len(expected)] == expected
    # requests made while paging are newer than every earlier one: they come last, in order
    assert awaiting[len(expected) :] == [r.request_id for r in sorted(later, key=_key)]


def _key(r: Request) -> tuple[datetime, str]:
    return r.created_at, r.request_id
