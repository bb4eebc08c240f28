"""A local stand-in for the Slack Web API calls the notifier makes, for `make run` and
the tests: the same slack_sdk client talks to it as to Slack.

Web API (at `<url>/api/`, JSON or form bodies, any bearer token):
auth.test, chat.postMessage (with message metadata), chat.update, chat.postEphemeral,
users.lookupByEmail (`users_not_found` for an unknown address), users.info (the e-mail
of a user added with `add_user`), conversations.open, conversations.history
(include_all_metadata; oldest, latest, inclusive, limit and cursor paging as Slack's).

For tests: `rate_limit(method, times, retry_after)` makes the next `times` calls of a
method answer HTTP 429 with Retry-After; `calls` records every call (method, arrival
on the monotonic clock, status); `messages` holds what was posted, edits applied.

For people (`<url>/`): a page listing the messages received, newest first, with their
buttons; a click POSTs a correctly signed interactivity payload (form field `payload`,
X-Slack-Signature v0 = HMAC-SHA256 of `v0:<timestamp>:<body>` with the signing secret,
X-Slack-Request-Timestamp) to the configured interactivity URL, as Slack does, acting
as the person the message went to. E-mails given to `add_mail` (make run's local SMTP
sink, devtools/mail_sink.py) show on the page too.

    python -m devtools.slack_standin --port 8787 --signing-secret s3cret \\
        --interactivity-url http://127.0.0.1:8790/slack/interactivity
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import hmac
import html
import itertools
import json
import logging
import time
import urllib.parse
from dataclasses import dataclass, field
from typing import Any

from aiohttp import ClientSession, web

from devtools.localinfra import free_port
from devtools.slack_history import history_page, next_cursor

log = logging.getLogger("qm.slack_standin")
Json = dict[str, Any]


def sign(secret: str, timestamp: str, body: bytes) -> str:
    """Slack's request signature: "v0=" + hex HMAC-SHA256 of v0:timestamp:body."""
    base = b"v0:" + timestamp.encode() + b":" + body
    return "v0=" + hmac.new(secret.encode(), base, hashlib.sha256).hexdigest()


@dataclass
class Posted:
    """One message as the stand-in holds it (`edits`: how often chat.update changed it)."""

    channel: str
    ts: str
    text: str
    blocks: list[Json]
    metadata: Json
    user: str
    edits: int = 0
    ephemeral: bool = False


@dataclass
class Mail:
    """One e-mail as the local SMTP sink received it (`text`: its plain-text part)."""

    sender: str
    recipients: list[str]
    subject: str
    text: str


@dataclass
class Call:
    method: str
    at: float
    status: int


@dataclass
class _Limit:
    times: int
    retry_after: int | str


@dataclass
class StandinState:
    """Everything the stand-in knows; tests read it directly."""

    users: dict[str, str] = field(default_factory=dict)  # e-mail → user id
    messages: list[Posted] = field(default_factory=list)
    calls: list[Call] = field(default_factory=list)
    limits: dict[str, _Limit] = field(default_factory=dict)
    mails: list[Mail] = field(default_factory=list)


class SlackStandin:
    """The stand-in's aiohttp app on `host:port` (0: a free port)."""

    def __init__(self, signing_secret: str = "", interactivity_url: str = "") -> None:
        self.signing_secret = signing_secret
        self.interactivity_url = interactivity_url
        self.state = StandinState()
        self._ts = itertools.count(1)
        self._runner: web.AppRunner | None = None
        self.url = ""
        app = web.Application()
        app.router.add_route("*", "/api/{method}", self._api)
        app.router.add_get("/", self._page)
        app.router.add_post("/click", self._click)
        self.app = app

    @property
    def api_url(self) -> str:
        return f"{self.url}/api/"

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> None:
        port = port or free_port()
        self._runner = web.AppRunner(self.app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, host, port).start()
        self.url = f"http://{host}:{port}"

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    # -- for tests ---------------------------------------------------------------------

    def add_user(self, email: str, user_id: str) -> None:
        self.state.users[email.lower()] = user_id

    def add_mail(self, mail: Mail) -> None:
        """Show an e-mail on the page (the local SMTP sink calls this)."""
        self.state.mails.append(mail)

    def rate_limit(self, method: str, times: int, retry_after: int | str) -> None:
        """The next `times` calls of `method` answer 429 with Retry-After seconds (a
        string: that header as it is, to test what a broken one does)."""
        self.state.limits[method] = _Limit(times, retry_after)

    def posted(self, channel: str | None = None) -> list[Posted]:
        return [m for m in self.state.messages
                if not m.ephemeral and (channel is None or m.channel == channel)]  # fmt: skip

    # -- the Web API -------------------------------------------------------------------

    async def _args(self, request: web.Request) -> Json:
        args: Json = dict(request.query)
        if request.method == "POST":
            if request.content_type == "application/json":
                args.update(await request.json())
            else:
                args.update(await request.post())
        return args

    async def _api(self, request: web.Request) -> web.Response:
        method = request.match_info["method"]
        now = time.monotonic()
        limit = self.state.limits.get(method)
        if limit is not None and limit.times > 0:
            limit.times -= 1
            self.state.calls.append(Call(method, now, 429))
            return web.json_response({"ok": False, "error": "ratelimited"}, status=429,
                                     headers={"Retry-After": str(limit.retry_after)})  # fmt: skip
        handler = getattr(self, "_" + method.replace(".", "_"), None)
        if handler is None:
            answer: Json = {"ok": False, "error": "unknown_method"}
        elif not request.headers.get("Authorization", "").startswith("Bearer "):
            answer = {"ok": False, "error": "not_authed"}
        else:
            answer = handler(await self._args(request))
        self.state.calls.append(Call(method, now, 200))
        return web.json_response(answer)

    def _auth_test(self, _: Json) -> Json:
        return {"ok": True, "team": "local", "user": "quartermaster", "bot_id": "B-LOCAL"}

    def _users_lookupByEmail(self, args: Json) -> Json:
        user = self.state.users.get(str(args.get("email", "")).lower())
        if user is None:
            return {"ok": False, "error": "users_not_found"}
        return {"ok": True, "user": {"id": user, "profile": {"email": args["email"]}}}

    def _users_info(self, args: Json) -> Json:
        user = str(args.get("user", ""))
        email = next((e for e, u in self.state.users.items() if u == user), None)
        if email is None:
            return {"ok": False, "error": "user_not_found"}
        return {"ok": True, "user": {"id": user, "profile": {"email": email}}}

    def _conversations_open(self, args: Json) -> Json:
        users = str(args.get("users", ""))
        if not users or "," in users:
            return {"ok": False, "error": "invalid_arguments"}
        return {"ok": True, "channel": {"id": f"D{users}", "is_im": True}}

    def _post(self, args: Json, ephemeral: bool) -> Json:
        channel = str(args.get("channel", ""))
        if not channel:
            return {"ok": False, "error": "channel_not_found"}
        blocks = args.get("blocks") or []
        if isinstance(blocks, str):
            blocks = json.loads(blocks)
        if not args.get("text") and not blocks:
            return {"ok": False, "error": "no_text"}
        meta = args.get("metadata") or {}
        if isinstance(meta, str):
            meta = json.loads(meta)
        ts = f"{int(time.time())}.{next(self._ts):06d}"
        # An ephemeral message is seen by its `user` alone; a DM's person is its channel's.
        dm = channel[1:] if channel.startswith("D") and not ephemeral else ""
        user = dm or str(args.get("user", ""))
        self.state.messages.append(Posted(channel, ts, str(args.get("text", "")), list(blocks),
                                          dict(meta), user, ephemeral=ephemeral))  # fmt: skip
        if ephemeral:
            return {"ok": True, "message_ts": ts}
        return {"ok": True, "channel": channel, "ts": ts, "message": {"text": args.get("text")}}

    def _chat_postMessage(self, args: Json) -> Json:
        return self._post(args, ephemeral=False)

    def _chat_postEphemeral(self, args: Json) -> Json:
        return self._post(args, ephemeral=True)

    def _chat_update(self, args: Json) -> Json:
        for m in self.state.messages:
            if m.channel == args.get("channel") and m.ts == args.get("ts"):
                blocks = args.get("blocks") or []
                m.blocks = json.loads(blocks) if isinstance(blocks, str) else list(blocks)
                m.text = str(args.get("text", m.text))
                m.edits += 1
                return {"ok": True, "channel": m.channel, "ts": m.ts}
        return {"ok": False, "error": "message_not_found"}

    def _conversations_history(self, args: Json) -> Json:
        """As Slack answers it: newest first, only messages after `oldest` and before
        `latest` (seconds, "1790000000.000100"; each end included with `inclusive`),
        at most `limit` (default 100, at most 999) a page; `has_more` and, when there
        are more, `response_metadata.next_cursor` for the next page's `cursor`."""
        try:
            page = history_page(self.posted(str(args.get("channel"))), args)
        except ValueError as exc:
            return {"ok": False, "error": str(exc)}
        found, more = page
        with_meta = str(args.get("include_all_metadata", "")).lower() in ("1", "true")
        answer: Json = {"ok": True, "messages": [
            {"type": "message", "ts": m.ts, "text": m.text,
             **({"metadata": m.metadata} if with_meta and m.metadata else {})}
            for m in found
        ], "has_more": more is not None}  # fmt: skip
        if more is not None:
            answer["response_metadata"] = {"next_cursor": next_cursor(more)}
        return answer

    # -- the page and its buttons -------------------------------------------------------

    async def _page(self, _: web.Request) -> web.Response:
        rows = []
        for i, m in reversed(list(enumerate(self.state.messages))):
            buttons = "".join(
                f'<form method="post" action="/click" style="display:inline">'
                f'<input type="hidden" name="message" value="{i}">'
                f'<input type="hidden" name="action" value="{html.escape(e["action_id"])}">'
                f'<button>{html.escape(e["text"]["text"])}</button></form>'
                for b in m.blocks if b.get("type") == "actions" for e in b.get("elements", [])
            )  # fmt: skip
            edited = f" (edited {m.edits}x)" if m.edits else ""
            rows.append(f"<li><b>to {html.escape(m.user or m.channel)}</b> {m.ts}{edited}"
                        f"<pre>{html.escape(_as_shown(m.text))}</pre>{buttons}</li>")  # fmt: skip
        body = "".join(rows) or "<li>No messages yet.</li>"
        mails = "".join(
            f"<li><b>to {html.escape(', '.join(m.recipients))}</b>: {html.escape(m.subject)}"
            f"<pre>{html.escape(m.text)}</pre></li>" for m in reversed(self.state.mails)
        ) or "<li>No e-mails yet.</li>"  # fmt: skip
        page = f"<html><head><title>Slack stand-in</title></head><body><h1>Messages" \
               f" received</h1><ul>{body}</ul><h1>E-mails received</h1><ul>{mails}</ul>" \
               "</body></html>"  # fmt: skip
        return web.Response(text=page, content_type="text/html")

    def payload(self, message: Posted, action_id: str, as_user: str = "") -> Json:
        """The block_actions payload Slack sends when the message's person (or
        `as_user`, a Slack user id) clicks."""
        block, element = next(
            (b, e) for b in message.blocks if b.get("type") == "actions"
            for e in b.get("elements", []) if e.get("action_id") == action_id
        )  # fmt: skip
        return {
            "type": "block_actions", "team": {"id": "T-LOCAL", "domain": "local"},
            "user": {"id": as_user or message.user, "username": as_user or message.user},
            "channel": {"id": message.channel},
            "container": {"type": "message", "message_ts": message.ts,
                          "channel_id": message.channel},
            "message": {"ts": message.ts, "text": message.text, "blocks": message.blocks},
            "trigger_id": f"trigger-{next(self._ts)}", "response_url": f"{self.url}/respond",
            "actions": [{"type": "button", "action_id": action_id,
                         "block_id": block.get("block_id", ""), "value": element.get("value"),
                         "action_ts": f"{time.time():.6f}"}],
        }  # fmt: skip

    async def click(self, message: Posted, action_id: str, as_user: str = "") -> tuple[int, str]:
        """POST the signed click (by the message's person, or `as_user`) to the
        interactivity URL; its (status, body)."""
        payload = self.payload(message, action_id, as_user)
        body = urllib.parse.urlencode({"payload": json.dumps(payload)})
        raw = body.encode()
        stamp = str(int(time.time()))
        headers = {
            "Content-Type": "application/x-www-form-urlencoded",
            "X-Slack-Request-Timestamp": stamp,
            "X-Slack-Signature": sign(self.signing_secret, stamp, raw),
        }
        async with ClientSession() as session, session.post(
            self.interactivity_url, data=raw, headers=headers
        ) as resp:  # fmt: skip
            return resp.status, await resp.text()

    async def _click(self, request: web.Request) -> web.Response:
        """The page's button: a form of `message` (its index on the page) and `action`.
        What Slack would not let happen is answered with why: a message that is not
        there, or a button it does not have (any more: a decided request's copies are
        edited and lose their buttons)."""
        form = await request.post()
        index, action = str(form.get("message", "")), str(form.get("action", ""))
        if not index.isdigit() or int(index) >= len(self.state.messages):
            return web.Response(text=f"no message {index!r} on this page", status=404)
        message = self.state.messages[int(index)]
        actions = {e.get("action_id") for b in message.blocks if b.get("type") == "actions"
                   for e in b.get("elements", [])}  # fmt: skip
        if action not in actions:
            has = ", ".join(sorted(str(a) for a in actions)) or "none (decided already?)"
            return web.Response(
                text=f"message {index} has no {action!r} button; its buttons: {has}", status=409
            )
        if not self.interactivity_url:
            return web.Response(text="no interactivity URL configured", status=400)
        status, text = await self.click(message, action)
        return web.Response(text=f"{self.interactivity_url} answered {status}: {text}")


def _as_shown(text: str) -> str:
    """mrkdwn text as Slack shows it: its escapes undone (`&lt;` is "<")."""
    return text.replace("&lt;", "<").replace("&gt;", ">").replace("&amp;", "&")


async def _serve(args: argparse.Namespace) -> None:
    standin = SlackStandin(args.signing_secret, args.interactivity_url)
    await standin.start(args.host, args.port)
    print(f"Slack stand-in: {standin.url}/ (Web API at {standin.api_url})", flush=True)  # noqa: T201
    await asyncio.Event().wait()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8787)
    parser.add_argument("--signing-secret", default="")
    parser.add_argument("--interactivity-url", default="")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO)
    asyncio.run(_serve(args))


if __name__ == "__main__":
    main()
