"""End to end, a Slack click: a credit request → the approver's Slack message → a
correctly signed click on Approve at the notifier's interactivity endpoint → the
request approved at the requests service as the clicker → the requester told, the
approver's copy edited (who, when; buttons gone) → policy's Check ALLOWs. And the
requester clicking Approve on their own request: refused there, nothing decided,
told why (ephemerally, to them alone).

Real parts: a policy replica (directory, FindUser, overrides), the Cost API, the
requests service (gRPC server, outbox relay), the notifier built by its wiring with its
interactivity endpoint on a free port, the session's PostgreSQL and broker, the real
slack_sdk client against devtools/slack_standin, whose signed clicks are Slack's.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass

import pytest

from devtools.localinfra import free_port
from devtools.slack_standin import Posted, SlackStandin
from quartermaster.money import MICROS_PER_CREDIT as C
from quartermaster.v1 import policy_pb2, requests_pb2, requests_pb2_grpc
from services.metering import api
from services.metering.settings import MeteringSettings
from services.notifier import wiring
from services.notifier.settings import NotifierSettings
from services.policy.decide import Enforcement
from services.requests import wiring as requests_wiring
from services.requests.settings import RequestsSettings
from tests.conftest import Replicas
from tests.helpers import TOKENS, channel, eventually, metadata, new_user
from tests.notifier.kit import notifier_env

pytestmark = pytest.mark.infra
SECRET = "stand-in-signing-secret-0123456789"


@dataclass
class Rig:
    replicas: Replicas
    standin: SlackStandin
    requests: requests_pb2_grpc.RequestServiceAsyncStub
    notifier: wiring.RunningNotifier

    async def person(self, user: str, manager: str = "") -> None:
        """In policy's directory with Slack id U<user> (the stand-in's DM is DU<user>)."""
        admin = self.replicas.admin(self.replicas.running[0])
        user_msg = policy_pb2.User(user_id=user, email=f"{user}@example.com",
                                   slack_user_id=f"U{user}", manager_id=manager)  # fmt: skip
        await admin.UpsertUser(user_msg)

    async def ask(self, requester: str, credits: int) -> requests_pb2.CreditRequest:
        """A request made for `requester` (as the notifier or a console would: delegate)."""
        made = requests_pb2.CreateCreditRequest(
            amount_micros=credits * C, duration_seconds=3600, justification="launch eval run"
        )
        on_behalf = (*metadata("delegate"), ("qm-on-behalf-of", requester))
        return await self.requests.Create(made, metadata=on_behalf)

    async def get(self, request_id: str) -> requests_pb2.CreditRequest:
        ask = requests_pb2.GetCreditRequest(request_id=request_id)
        return await self.requests.Get(ask, metadata=metadata("reader"))

    async def check(self, user: str, credits: int) -> int:
        stub = self.replicas.policy(self.replicas.running[0])
        req = policy_pb2.CheckRequest(user_id=user, product="chat", model="gpt-5",
                                      estimated_micros=credits * C)  # fmt: skip
        return int((await stub.Check(req)).decision)

    async def asked(self, approver: str, request_id: str) -> Posted:
        """The approver's Slack message about `request_id`, once it is there."""

        async def find() -> bool:
            return any(request_id in str(m.blocks) for m in self.standin.posted(f"DU{approver}"))

        await eventually(find, True, within=60)
        return next(m for m in self.standin.posted(f"DU{approver}") if request_id in str(m.blocks))

    def told(self, slack_user: str) -> list[str]:
        """The ephemeral answers `slack_user` saw."""
        return [m.text for m in self.standin.state.messages if m.ephemeral and m.user == slack_user]


@pytest.fixture
async def rig(replicas: Replicas) -> AsyncIterator[Rig]:
    await replicas.set_default(10 * C, Enforcement.HARD)
    (policy,) = await replicas.start(1)
    usage = await api.start(MeteringSettings.from_env(replicas.env), addr="127.0.0.1:0")
    env = {
        **replicas.env,
        "QM_REQUESTS_POLICY_ADDR": f"127.0.0.1:{policy.port}",
        "QM_REQUESTS_USAGE_API_ADDR": f"127.0.0.1:{usage.served.port}",
        "QM_REQUESTS_CLIENT_TOKEN": TOKENS["reader"],
        "QM_REQUESTS_RULES": "manager:1:0",
        "QM_REQUESTS_RELAY_POLL_SECONDS": "0.05",
    }
    requests = await requests_wiring.start(RequestsSettings.from_env(env), addr="127.0.0.1:0")
    standin = SlackStandin(SECRET)
    await standin.start()
    settings = NotifierSettings.from_env(notifier_env(
        replicas.env, standin, policy.port,
        QM_NOTIFIER_SLACK_SIGNING_SECRET=SECRET,
        QM_NOTIFIER_INTERACTIVITY_ADDR=f"127.0.0.1:{free_port()}",
        QM_NOTIFIER_REQUESTS_ADDR=f"127.0.0.1:{requests.port}",
        QM_NOTIFIER_DELEGATE_TOKEN=TOKENS["delegate"],
    ))  # fmt: skip
    notifier = await wiring.start(settings)
    assert notifier.clicks is not None
    standin.interactivity_url = notifier.clicks.url
    ch = channel(f"127.0.0.1:{requests.port}")
    try:
        yield Rig(replicas, standin, requests_pb2_grpc.RequestServiceStub(ch), notifier)
    finally:
        await ch.close(None)
        await notifier.stop()
        await standin.stop()
        await requests.stop(1)
        await usage.stop(1)


async def test_click_approve_tells_the_requester_edits_the_copy_and_check_allows(rig: Rig) -> None:
    requester, approver = new_user(), f"mgr-{uuid.uuid4().hex[:8]}"
    await rig.person(approver)
    await rig.person(requester, manager=approver)
    assert await rig.check(requester, 15) == policy_pb2.DECISION_DENY
    made = await rig.ask(requester, 10)
    message = await rig.asked(approver, made.request_id)
    assert "Approve" in str(message.blocks)

    status, _ = await rig.standin.click(message, "approve")
    assert status == 200

    async def requester_told() -> list[str]:
        return [m.text.split("\n")[0] for m in rig.standin.posted(f"DU{requester}")]

    await eventually(requester_told, ["Your request for 10.00 credits: approved"], within=60)

    async def copy() -> tuple[int, bool]:
        return message.edits, any(b.get("type") == "actions" for b in message.blocks)

    await eventually(copy, (1, False), within=30)  # who and when, buttons gone
    assert f"Approved by {approver} at " in message.text
    await eventually(lambda: rig.check(requester, 15), policy_pb2.DECISION_ALLOW, within=30)
    got = await rig.get(made.request_id)
    assert got.state == requests_pb2.REQUEST_STATE_APPROVED
    assert got.timeline[-1].actor_user_id == approver
    assert got.timeline[-1].via == "tests-delegate"  # the notifier's credential
    assert rig.told(f"U{approver}") == [f"You approved request {made.request_id}."]


async def test_the_requester_clicking_approve_is_refused_and_told_why(rig: Rig) -> None:
    requester, approver = new_user(), f"mgr-{uuid.uuid4().hex[:8]}"
    await rig.person(approver)
    await rig.person(requester, manager=approver)
    made = await rig.ask(requester, 10)
    message = await rig.asked(approver, made.request_id)

    # The approver's message, clicked by the requester (forwarded, or a shared channel).
    status, _ = await rig.standin.click(message, "approve", as_user=f"U{requester}")
    assert status == 200  # acknowledged at once; decided (or not) after

    async def told() -> int:
        return len(rig.told(f"U{requester}"))

    await eventually(told, 1, within=30)
    [said] = rig.told(f"U{requester}")
    assert said == (
        f"Request {made.request_id} was not approved: {requester} asked for this request"
        " and can't decide it"
    )
    got = await rig.get(made.request_id)
    assert (got.state, got.version) == (requests_pb2.REQUEST_STATE_PENDING, made.version)
    assert message.edits == 0
    assert rig.standin.posted(f"DU{requester}") == []  # no decision to tell of
    assert await rig.check(requester, 15) == policy_pb2.DECISION_DENY
