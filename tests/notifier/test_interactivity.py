"""The Slack interactivity endpoint, for real over HTTP: requests signed as Slack signs
them, a real grpc.aio RequestService in process (a small stand-in that records every
Decide and refuses self-approval and stale versions as the requests service does), and
a local stand-in of Slack's Web API (chat.postEphemeral, users.info) that records what
the clicker is told. The endpoint's clock is the test's, so "301 s old" is exact.

Socket Mode runs slack_sdk's real client against the stand-in's apps.connections.open
and a WebSocket that speaks Slack's envelope protocol. What no test here can show
without Slack: that Slack's servers reach the endpoint or accept the app token, and how
Slack itself reconnects and redelivers.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlencode

import aiohttp
import grpc
import pytest
from aiohttp import web
from slack_sdk.signature import SignatureVerifier
from slack_sdk.socket_mode.request import SocketModeRequest
from slack_sdk.socket_mode.response import SocketModeResponse
from slack_sdk.web.async_client import AsyncWebClient

from devtools.localinfra import free_port
from quartermaster.v1 import requests_pb2, requests_pb2_grpc
from services.notifier.interactivity import PATH, Interactivity, connect_socket_mode, serve_http
from services.notifier.slack_actions import Click
from tests.helpers import TOKENS, eventually, in_process_server

SECRET = "8f742231b10e8888abcd99yyyzzz85a5"
NOW = 1_790_000_000.0
DELEGATE = TOKENS["admin"]  # Decide's role today; the requests service adds `delegate`


class Requests(requests_pb2_grpc.RequestServiceServicer):
    """RequestService stand-in: r-1 is Ann's, at version 3. Records each Decide as
    (request_id, version, vote, on-behalf-of), decided or refused."""

    def __init__(self) -> None:
        self.decided: list[tuple[str, int, int, str]] = []
        self.refused: list[tuple[str, int, int, str]] = []
        self.hold: asyncio.Event | None = None

    async def Decide(
        self, request: requests_pb2.DecideCreditRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> requests_pb2.CreditRequest:
        meta = dict(context.invocation_metadata() or ())
        call = (request.request_id, request.version, request.vote, str(meta.get("qm-on-behalf-of")))
        if self.hold is not None:
            await self.hold.wait()
        if call[3] == "ann":
            self.refused.append(call)
            await context.abort(grpc.StatusCode.PERMISSION_DENIED, "ann is the requester of r-1")
        if request.version != 3:
            self.refused.append(call)
            await context.abort(
                grpc.StatusCode.FAILED_PRECONDITION, f"version {request.version} is stale, now 3"
            )
        self.decided.append(call)
        return requests_pb2.CreditRequest(request_id=request.request_id, approver_user_id=call[3])


@dataclass
class People:
    slack: dict[str, str] = field(default_factory=lambda: {"U-BOB": "bob", "U-ANN": "ann"})
    email: dict[str, str] = field(default_factory=lambda: {"cat@example.test": "cat"})

    async def by_slack_id(self, slack_user_id: str) -> str | None:
        return self.slack.get(slack_user_id)

    async def by_email(self, email: str) -> str | None:
        return self.email.get(email)


@dataclass
class SlackApi:
    """Slack Web API stand-in: records chat.postEphemeral; users.info from `emails`."""

    told: list[tuple[str, str, str]] = field(default_factory=list)  # (channel, user, text)
    acks: list[str] = field(default_factory=list)  # Socket Mode envelope ids acknowledged
    socket_url: str = ""
    emails: dict[str, str] = field(default_factory=lambda: {"U-CAT": "cat@example.test"})

    async def post_ephemeral(self, request: web.Request) -> web.Response:
        body = await request.json()
        self.told.append((body["channel"], body["user"], body["text"]))
        return web.json_response({"ok": True, "message_ts": "1.2"})

    async def connections_open(self, request: web.Request) -> web.Response:
        return web.json_response({"ok": True, "url": self.socket_url})

    async def socket(self, request: web.Request) -> web.WebSocketResponse:
        """Slack's side of Socket Mode: hello, one interactive envelope, then the acks."""
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        await ws.send_json({"type": "hello", "num_connections": 1})
        await ws.send_json({"envelope_id": "env-ws", "type": "interactive", "payload": payload()})
        async for message in ws:
            if message.type == aiohttp.WSMsgType.TEXT:
                self.acks.append(json.loads(message.data)["envelope_id"])
        return ws

    async def users_info(self, request: web.Request) -> web.Response:
        form = dict(request.query) | dict(await request.post())
        user = str(form.get("user"))
        if user not in self.emails:
            return web.json_response({"ok": False, "error": "user_not_found"})
        return web.json_response(
            {"ok": True, "user": {"id": user, "profile": {"email": self.emails[user]}}}
        )


@dataclass
class Rig:
    url: str
    requests: Requests
    slack: SlackApi
    interactivity: Interactivity
    web_client: AsyncWebClient
    clock: list[float]
    http: aiohttp.ClientSession

    async def post(self, body: bytes, stamp: float | None = None, signature: str = "") -> int:
        ts = str(int(NOW if stamp is None else stamp))
        sig = signature or sign(body, ts)
        headers = {"X-Slack-Request-Timestamp": ts, "X-Slack-Signature": sig}
        async with self.http.post(self.url, data=body, headers=headers) as resp:
            return resp.status


def sign(body: bytes, ts: str) -> str:
    return SignatureVerifier(SECRET).generate_signature(timestamp=ts, body=body) or ""


def payload(user: str = "U-BOB", decision: str = "approve", version: int = 3) -> dict[str, Any]:
    return {
        "type": "block_actions",
        "user": {"id": user},
        "channel": {"id": "D-1"},
        "trigger_id": "t-1",
        "actions": [
            {
                "action_id": decision,
                # As services.notifier.render writes it: the decision is the action_id.
                "value": json.dumps({"request_id": "r-1", "version": version}),
                "type": "button",
            }
        ],
    }


def form(p: dict[str, Any]) -> bytes:
    return urlencode({"payload": json.dumps(p)}).encode()


@pytest.fixture
async def rig() -> AsyncIterator[Rig]:
    requests = Requests()  # type: ignore[abstract]  # serves Decide; the rest: UNIMPLEMENTED
    slack = SlackApi()
    api = web.Application()
    api.router.add_post("/api/chat.postEphemeral", slack.post_ephemeral)
    api.router.add_route("*", "/api/users.info", slack.users_info)
    api.router.add_post("/api/apps.connections.open", slack.connections_open)
    api.router.add_get("/socket", slack.socket)
    api_runner = web.AppRunner(api)
    await api_runner.setup()
    api_port = free_port()
    await web.TCPSite(api_runner, "127.0.0.1", api_port).start()
    slack.socket_url = f"ws://127.0.0.1:{api_port}/socket"
    clock = [NOW]
    web_client = AsyncWebClient(token="xoxb-test", base_url=f"http://127.0.0.1:{api_port}/api/")

    def add(server: grpc.aio.Server) -> None:
        requests_pb2_grpc.add_RequestServiceServicer_to_server(requests, server)

    async with in_process_server(add) as channel, aiohttp.ClientSession() as http:
        interactivity = Interactivity(
            signing_secret=SECRET,
            people=People(),
            requests=requests_pb2_grpc.RequestServiceStub(channel),
            delegate_token=DELEGATE,
            slack=web_client,
            clock=lambda: clock[0],
        )
        port = free_port()
        runner = await serve_http(interactivity, "127.0.0.1", port)
        try:
            yield Rig(
                f"http://127.0.0.1:{port}{PATH}",
                requests,
                slack,
                interactivity,
                web_client,
                clock,
                http,
            )
        finally:
            await interactivity.drain()
            await runner.cleanup()
            await api_runner.cleanup()


APPROVE = requests_pb2.VOTE_APPROVE


async def test_a_correct_request_is_acknowledged_first_then_decided_as_the_clicker(
    rig: Rig,
) -> None:
    rig.requests.hold = asyncio.Event()
    status = await rig.post(form(payload()))
    # Answered while the Decide call is still held: the acknowledgement comes first.
    assert status == 200
    assert rig.requests.decided == []
    rig.requests.hold.set()
    await rig.interactivity.drain()
    assert rig.requests.decided == [("r-1", 3, APPROVE, "bob")]
    assert rig.slack.told == [("D-1", "U-BOB", "You approved request r-1.")]


@pytest.mark.parametrize(
    "tamper",
    ["one byte of the body", "301 s old timestamp", "a replay", "no signature"],
)
async def test_a_forged_stale_or_replayed_request_is_refused_and_nothing_decided(
    rig: Rig, tamper: str
) -> None:
    body = form(payload())
    if tamper == "one byte of the body":
        forged = body.replace(b"r-1", b"r-2")  # another request, Bob's signature
        assert sum(a != b for a, b in zip(body, forged, strict=True)) == 1
        status = await rig.post(forged, signature=sign(body, str(int(NOW))))
        assert status == 401
    elif tamper == "301 s old timestamp":
        assert await rig.post(body, stamp=NOW - 301) == 401
    elif tamper == "a replay":
        assert await rig.post(body) == 200
        await rig.interactivity.drain()
        rig.requests.decided.clear()
        rig.slack.told.clear()
        rig.clock[0] = NOW + 299  # still inside the window: the signature is still valid
        assert await rig.post(body) == 409
    else:
        assert await rig.post(body, signature="v0=") == 401
    await rig.interactivity.drain()
    assert rig.requests.decided == []
    assert rig.requests.refused == []
    assert rig.slack.told == []


async def test_a_request_stamped_ahead_is_refused_again_until_its_stamp_expires(
    rig: Rig,
) -> None:
    body = form(payload())
    assert await rig.post(body, stamp=NOW + 300) == 200
    rig.clock[0] = NOW + 599  # 599 s after it was first accepted, still valid
    assert await rig.post(body, stamp=NOW + 300) == 409
    await rig.interactivity.drain()
    assert rig.requests.decided == [("r-1", 3, APPROVE, "bob")]


async def test_300_s_old_is_still_inside_the_window(rig: Rig) -> None:
    assert await rig.post(form(payload()), stamp=NOW - 300) == 200
    await rig.interactivity.drain()
    assert rig.requests.decided == [("r-1", 3, APPROVE, "bob")]


async def test_a_click_by_the_requester_is_refused_there_and_they_are_told_why(
    rig: Rig,
) -> None:
    assert await rig.post(form(payload(user="U-ANN"))) == 200
    await rig.interactivity.drain()
    assert rig.requests.decided == []
    assert rig.requests.refused == [("r-1", 3, APPROVE, "ann")]
    assert rig.slack.told == [
        ("D-1", "U-ANN", "Request r-1 was not approved: ann is the requester of r-1")
    ]


async def test_a_stale_version_is_refused_and_the_clicker_told(rig: Rig) -> None:
    assert await rig.post(form(payload(decision="deny", version=2))) == 200
    await rig.interactivity.drain()
    assert rig.requests.decided == []
    assert rig.slack.told == [
        ("D-1", "U-BOB", "Request r-1 was not denied: version 2 is stale, now 3")
    ]


async def test_a_slack_user_is_found_by_email_else_told_they_are_not_linked(rig: Rig) -> None:
    assert await rig.post(form(payload(user="U-CAT"))) == 200
    assert await rig.post(form(payload(user="U-NOBODY")), stamp=NOW - 1) == 200
    await rig.interactivity.drain()
    assert rig.requests.decided == [("r-1", 3, APPROVE, "cat")]
    told = dict(((u, t) for _c, u, t in rig.slack.told))
    assert told["U-CAT"] == "You approved request r-1."
    assert told["U-NOBODY"].startswith("Your Slack account is not linked")


async def test_a_signed_but_malformed_click_is_a_400_naming_the_field(rig: Rig) -> None:
    bad = payload()
    bad["actions"][0]["value"] = json.dumps({"request_id": "r-1", "version": 3, "decision": "deny"})
    assert await rig.post(form(bad)) == 400
    assert await rig.post(b"not a form at all", stamp=NOW - 2) == 400
    assert await rig.post(form({"type": "view_submission"}), stamp=NOW - 3) == 200
    await rig.interactivity.drain()
    assert rig.requests.decided == rig.requests.refused == []


@dataclass
class Acks:
    sent: list[str] = field(default_factory=list)

    async def send_socket_mode_response(self, response: SocketModeResponse) -> None:
        self.sent.append(response.envelope_id)


async def test_socket_mode_envelopes_are_acknowledged_decided_and_not_replayed(
    rig: Rig,
) -> None:
    acks = Acks()
    click = SocketModeRequest(type="interactive", envelope_id="env-1", payload=payload())
    await rig.interactivity.on_socket_request(acks, click)
    await rig.interactivity.on_socket_request(acks, click)  # Slack re-sent the envelope
    await rig.interactivity.drain()
    assert acks.sent == ["env-1", "env-1"]
    assert rig.requests.decided == [("r-1", 3, APPROVE, "bob")]
    assert rig.slack.told == [("D-1", "U-BOB", "You approved request r-1.")]


async def test_socket_mode_over_a_websocket_acknowledges_and_decides(rig: Rig) -> None:
    client = await connect_socket_mode(rig.interactivity, "xapp-1-test", rig.web_client)
    try:

        async def seen() -> tuple[list[str], list[tuple[str, int, int, str]]]:
            await rig.interactivity.drain()
            return rig.slack.acks, rig.requests.decided

        await eventually(seen, (["env-ws"], [("r-1", 3, APPROVE, "bob")]))
    finally:
        await client.close()  # type: ignore[no-untyped-call]  # slack_sdk leaves it untyped
    assert rig.slack.told == [("D-1", "U-BOB", "You approved request r-1.")]
    with pytest.raises(ValueError, match="xapp-"):
        await connect_socket_mode(rig.interactivity, "xoxb-not-an-app-token", rig.web_client)


async def test_an_unreachable_requests_service_tells_the_clicker_to_try_again(rig: Rig) -> None:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{free_port()}") as dead:
        interactivity = Interactivity(
            signing_secret=SECRET,
            people=People(),
            requests=requests_pb2_grpc.RequestServiceStub(dead),
            delegate_token=DELEGATE,
            slack=rig.web_client,
            decide_timeout=5.0,
        )
        await interactivity.act(Click("r-1", 3, "approve", "U-BOB", "D-1"))
    assert rig.slack.told == [
        (
            "D-1",
            "U-BOB",
            "Could not reach the requests service; request r-1 was not decided."
            " Try again in a minute.",
        )
    ]


async def test_numbers_python_cannot_take_are_a_400_not_a_500(rig: Rig) -> None:
    """Issue 14: an integer of 5001 digits (json.loads raises a bare ValueError) and
    NaN / Infinity / 1e999 as the version are refused as malformed, nothing decided."""
    huge = form(payload()).replace(b"%22t-1%22", b"1" + b"0" * 5000)  # trigger_id
    assert huge != form(payload())
    assert await rig.post(huge) == 400
    for i, number in enumerate(("NaN", "Infinity", "1e999", "1" + "0" * 1900)):
        bad = payload()
        bad["actions"][0]["value"] = f'{{"request_id": "r-1", "version": {number}}}'
        assert await rig.post(form(bad), stamp=NOW - 1 - i) == 400, number
    await rig.interactivity.drain()
    assert rig.requests.decided == rig.requests.refused == []
