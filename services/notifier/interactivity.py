"""Slack interactivity: approve/deny clicks become Decide calls made as the clicker.

    POST /slack/interactivity   (Slack's Request URL for interactivity)

Order matters, and is kept: (1) read the raw body; (2) check the headers' form (a
timestamp of at most 12 ASCII digits, a signature `v0=` and 64 hex digits), refuse a
`X-Slack-Request-Timestamp` more than 300 s from now and a body that is not UTF-8
(as Slack's always is), then verify `X-Slack-Signature` over the body with the signing
secret (slack_sdk's SignatureVerifier), all before anything is parsed (401, the
answer naming what was wrong; never a 500);
(3) refuse a request seen already (a replay: the same signature within the window,
409; slack_actions.ReplayGuard, bounded memory); (4) parse (400 naming the field);
(5) answer 200 at once, and act after, in a background task, since Slack wants the
answer within 3 s and the Decide call, the directory and Slack's API may be slower.
That task never ends in an exception: whatever goes wrong is logged and the clicker
is told nothing was decided (`act`).
The replay memory is per process: with several replicas a replay could reach another
one inside the window, where the requests service still refuses it: the button's
version is stale once the request was decided (DecideCreditRequest.version).

Acting: the Slack user is mapped to a directory person (`People`: by the directory's
Slack id, else by the e-mail Slack has for them); the requests service's Decide is
called with the notifier's `delegate` credential and `qm-on-behalf-of: <person>`, so
the requests service decides whether that person may (self-approval, a non-approver
and a stale version are refused there, not here). Whatever comes back is told to the
clicker alone (chat.postEphemeral): done, or the refusal's reason. A failure to post
that is logged (a WARNING) and dropped: the decision itself stands or fails on its own.

Socket Mode (`slack_socket_mode`, for deployments that can't expose an endpoint):
slack_sdk's aiohttp Socket Mode client connects out with the app-level token; each
interactive envelope is acknowledged at once, checked against replays by its
envelope id, and fed to the same `act`. There is no signature there: the WebSocket
itself is authenticated by the app token.

Settings (`InteractivitySettings`, variables QM_NOTIFIER_*): see each field.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import Callable, Mapping
from typing import Any, Protocol, Self

import grpc
from aiohttp import web
from pydantic import Field, SecretStr, model_validator
from pydantic_settings import SettingsConfigDict
from slack_sdk.errors import SlackApiError
from slack_sdk.signature import Clock, SignatureVerifier
from slack_sdk.socket_mode.aiohttp import SocketModeClient
from slack_sdk.socket_mode.request import SocketModeRequest
from slack_sdk.socket_mode.response import SocketModeResponse
from slack_sdk.web.async_client import AsyncWebClient

from quartermaster.grpcclient import bearer
from quartermaster.settings import HostPort, Settings
from quartermaster.v1 import requests_pb2, requests_pb2_grpc
from services.notifier.blocks import message_text
from services.notifier.slack_actions import (
    WINDOW_SECONDS,
    Click,
    PayloadError,
    ReplayGuard,
    click_of,
    form_payload,
)

log = logging.getLogger(__name__)
PATH = "/slack/interactivity"
ON_BEHALF_OF = "qm-on-behalf-of"
_VOTES = {"approve": requests_pb2.VOTE_APPROVE, "deny": requests_pb2.VOTE_DENY}
_DONE = {"approve": "approved", "deny": "denied"}
_STAMP = re.compile(r"[0-9]{1,12}")  # Unix seconds, ASCII digits only
_SIGNATURE = re.compile(r"v0=[0-9a-f]{64}")
# The requests service's refusals that are the clicker's to read; anything else is
# "could not reach", as its details may be about our deployment, not their click.
_TOLD = {
    grpc.StatusCode.PERMISSION_DENIED,
    grpc.StatusCode.FAILED_PRECONDITION,
    grpc.StatusCode.NOT_FOUND,
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.ABORTED,
}


class InteractivitySettings(Settings):
    """Slack interactivity: variables QM_NOTIFIER_<FIELD>."""

    model_config = SettingsConfigDict(env_prefix="QM_NOTIFIER_")

    slack_signing_secret: SecretStr = SecretStr("")
    """The Slack app's signing secret (Basic Information); empty: no endpoint"""
    interactivity_addr: HostPort = "0.0.0.0:8093"
    """host:port the HTTP endpoint POST /slack/interactivity listens on"""
    slack_socket_mode: bool = False
    """true: receive clicks over Socket Mode (an outbound WebSocket) instead of the
    HTTP endpoint, for deployments that can't expose one"""
    slack_app_token: SecretStr = SecretStr("")
    """App-level token (xapp-..., scope connections:write) for Socket Mode"""
    requests_addr: HostPort = "127.0.0.1:50053"
    """host:port of the requests service, whose Decide a click calls"""
    delegate_token: SecretStr = SecretStr("")
    """The notifier's credential at the requests service (role delegate)"""
    decide_timeout_seconds: float = Field(10.0, gt=0, le=60)
    """A Decide call gives up after this long (the clicker is told to try again)"""

    @model_validator(mode="after")
    def _socket_mode_has_its_token(self) -> Self:
        if self.slack_socket_mode and not self.slack_app_token.get_secret_value().startswith(
            "xapp-"
        ):
            raise ValueError(
                "QM_NOTIFIER_SLACK_SOCKET_MODE is true but QM_NOTIFIER_SLACK_APP_TOKEN is"
                " not an app-level token (xapp-...)"
            )
        return self


class People(Protocol):
    """The directory, as far as a click needs it: the person (directory user id) a
    Slack user is, or None."""

    async def by_slack_id(self, slack_user_id: str) -> str | None: ...

    async def by_email(self, email: str) -> str | None: ...


class _Clock(Clock):
    """slack_sdk's verifier clock, reading ours."""

    def __init__(self, now: Callable[[], float]) -> None:
        self._now = now

    def now(self) -> float:
        return self._now()


class _Acks(Protocol):
    async def send_socket_mode_response(self, response: SocketModeResponse) -> None: ...


class Interactivity:
    """The click handler behind both the HTTP endpoint (`app()`) and Socket Mode
    (`on_socket_request`). `clock` gives Unix seconds (tests move it)."""

    def __init__(
        self,
        *,
        signing_secret: str,
        people: People,
        requests: requests_pb2_grpc.RequestServiceAsyncStub,
        delegate_token: str,
        slack: AsyncWebClient,
        decide_timeout: float = 10.0,
        clock: Callable[[], float] = time.time,
        replays: ReplayGuard | None = None,
    ) -> None:
        """ValueError for an empty signing secret (an endpoint that can't verify must
        not exist)."""
        self._verifier = SignatureVerifier(signing_secret, clock=_Clock(clock))
        self._people = people
        self._requests = requests
        self._auth = bearer(delegate_token)
        self._slack = slack
        self._timeout = decide_timeout
        self._clock = clock
        self._replays = replays or ReplayGuard(window=WINDOW_SECONDS)
        self._tasks: set[asyncio.Task[None]] = set()

    def app(self) -> web.Application:
        """An aiohttp application serving POST /slack/interactivity."""
        app = web.Application(client_max_size=256 * 1024)
        app.router.add_post(PATH, self.handle_http)
        return app

    def refusal(self, body: bytes, stamp: str, signature: str) -> str | None:
        """Why a request is not Slack's (a 401's text), or None when it is signed by
        Slack within the last 300 s (module docstring, step 2). Never raises."""
        if not _STAMP.fullmatch(stamp):
            return "X-Slack-Request-Timestamp is not a Unix time (up to 12 digits)"
        if abs(self._clock() - int(stamp)) > WINDOW_SECONDS:
            return "X-Slack-Request-Timestamp is more than 300 s from now"
        if not _SIGNATURE.fullmatch(signature):
            return "X-Slack-Signature is not v0= and 64 hex digits"
        try:
            body.decode("utf-8")
        except UnicodeDecodeError:
            return "the body is not UTF-8"
        try:
            valid = self._verifier.is_valid(body, stamp, signature)
        except Exception as exc:  # slack_sdk's verifier; a refusal, never a 500
            log.warning("Slack signature check raised %s: refused", type(exc).__name__)
            valid = False
        return None if valid else "invalid signature"

    async def handle_http(self, request: web.Request) -> web.Response:
        """Verify, refuse replays, parse, acknowledge; act after (module docstring)."""
        body = await request.read()
        stamp = request.headers.get("X-Slack-Request-Timestamp", "")
        signature = request.headers.get("X-Slack-Signature", "")
        refused = self.refusal(body, stamp, signature)
        if refused is not None:
            log.warning("refused a Slack request: %s", refused)
            return web.Response(status=401, text=refused)
        admitted = self._replays.admit(signature, self._clock(), float(stamp))
        if admitted != "new":
            log.warning("refused a Slack request: %s", admitted)
            return web.Response(status=409 if admitted == "replay" else 503, text=admitted)
        try:
            click = click_of(form_payload(body))
        except PayloadError as exc:
            log.warning("refused a Slack click: %s", exc)
            return web.Response(status=400, text=str(exc))
        if click is not None:
            self._start(click)
        return web.Response(status=200)

    async def on_socket_request(self, client: _Acks, req: SocketModeRequest) -> None:
        """Socket Mode listener: acknowledge, refuse replays, then act as for HTTP."""
        if req.type != "interactive":
            return
        await client.send_socket_mode_response(SocketModeResponse(envelope_id=req.envelope_id))
        if self._replays.admit(f"envelope:{req.envelope_id}", self._clock()) != "new":
            log.warning("ignored a replayed Socket Mode envelope")
            return
        try:
            if not isinstance(req.payload, Mapping):
                raise PayloadError("payload is not a JSON object")
            click = click_of(req.payload)
        except PayloadError as exc:
            log.warning("ignored a Slack click: %s", exc)
            return
        if click is not None:
            self._start(click)

    def _start(self, click: Click) -> None:
        task = asyncio.create_task(self.act(click))
        self._tasks.add(task)  # held, so it is not collected mid-flight
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:  # act never raises; still
            log.error("acting on a Slack click raised", exc_info=task.exception())

    async def drain(self) -> None:
        """Wait for every click being acted on (shutdown, tests)."""
        while self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)

    async def act(self, click: Click) -> None:
        """Decide as the clicker, then tell them (only them) what came of it. Never
        raises: every failure ends in a message to the clicker or a log line."""
        try:
            await self._act(click)
        except Exception:
            log.exception("acting on a Slack click on request %r failed", click.request_id)
            await self._tell(
                click,
                f"Something went wrong on our side; request {click.request_id} may not"
                " have been decided. Look at it, or try again in a minute.",
            )

    async def _act(self, click: Click) -> None:
        try:
            person = await self._person(click.slack_user_id)
        except Exception:
            log.exception("directory lookup for a Slack click failed")
            await self._tell(click, "Could not look you up in the directory; try again.")
            return
        if person is None:
            await self._tell(
                click,
                "Your Slack account is not linked to a person in Quartermaster's"
                " directory, so nothing was decided. Ask an admin to add your Slack id.",
            )
            return
        await self._tell(click, await self._decide(click, person))

    async def _person(self, slack_user_id: str) -> str | None:
        person = await self._people.by_slack_id(slack_user_id)
        if person is not None:
            return person
        try:
            info: Mapping[str, Any] = (await self._slack.users_info(user=slack_user_id)).data  # type: ignore[assignment]
        except SlackApiError as exc:
            log.warning("users.info for a click failed: %s", exc.response.get("error"))
            return None
        email = info.get("user", {}).get("profile", {}).get("email")
        return await self._people.by_email(email) if isinstance(email, str) and email else None

    async def _decide(self, click: Click, person: str) -> str:
        """What the clicker is told: done, or why not."""
        request = requests_pb2.DecideCreditRequest(
            request_id=click.request_id, version=click.version, vote=_VOTES[click.decision]
        )
        try:
            await self._requests.Decide(
                request,
                metadata=(*self._auth, (ON_BEHALF_OF, person)),
                timeout=self._timeout,
            )
        except grpc.aio.AioRpcError as exc:
            if exc.code() in _TOLD:
                return (
                    f"Request {click.request_id} was not {_DONE[click.decision]}: {exc.details()}"
                )
            log.warning("Decide for a Slack click failed: %s", exc.code().name)
            return (
                f"Could not reach the requests service; request {click.request_id}"
                " was not decided. Try again in a minute."
            )
        return f"You {_DONE[click.decision]} request {click.request_id}."

    async def _tell(self, click: Click, text: str) -> None:
        """Post `text` (plain: escaped here for mrkdwn) to the clicker alone; a failure
        is logged, never raised."""
        try:
            await self._slack.chat_postEphemeral(
                channel=click.channel_id, user=click.slack_user_id, text=message_text(text)
            )
        except SlackApiError as exc:
            log.warning("chat.postEphemeral failed: %s", exc.response.get("error"))
        except Exception:
            log.exception("chat.postEphemeral failed")


async def serve_http(interactivity: Interactivity, host: str, port: int) -> web.AppRunner:
    """Listen on host:port (0: a free port) for Slack's POSTs; `await runner.cleanup()`
    stops. OSError when the address is taken."""
    runner = web.AppRunner(interactivity.app(), access_log=None)
    await runner.setup()
    await web.TCPSite(runner, host, port).start()
    return runner


async def connect_socket_mode(
    interactivity: Interactivity, app_token: str, slack: AsyncWebClient
) -> SocketModeClient:
    """Receive clicks over Socket Mode (slack_sdk's aiohttp client, which reconnects by
    itself); `await client.close()` stops. ValueError for a token that is not xapp-."""
    if not app_token.startswith("xapp-"):
        raise ValueError("QM_NOTIFIER_SLACK_APP_TOKEN must be an app-level token (xapp-...)")
    client = SocketModeClient(app_token=app_token, web_client=slack)
    client.socket_mode_request_listeners.append(interactivity.on_socket_request)
    await client.connect()  # type: ignore[no-untyped-call]  # slack_sdk leaves it untyped
    return client
