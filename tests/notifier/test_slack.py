"""The Slack channel with the real slack_sdk AsyncWebClient against the local Web API
stand-in (devtools/slack_standin.py): messages, lookups, pacing under 429, the edit of
every approver's copy after a decision, confirming a delivery, and the stand-in's
signed button clicks checked by slack_sdk's own SignatureVerifier.

Where each copy went is kept by a dict here instead of PostgreSQL (SlackCopies): this
tests the Slack layer alone; the store's SQL runs in the tests with infrastructure.
"""

from __future__ import annotations

import itertools
import json
import time
import urllib.parse
from collections.abc import AsyncIterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from aiohttp import web
from slack_sdk.errors import SlackApiError
from slack_sdk.signature import SignatureVerifier

from devtools.localinfra import free_port
from devtools.slack_standin import SlackStandin
from services.notifier.blocks import MESSAGE_TEXT_MAX
from services.notifier.channel import Message, Recipient
from services.notifier.render import button_value
from services.notifier.sender import core_schedule
from services.notifier.slack import SlackChannel, client
from services.notifier.stores.people import SlackCopy

SECRET = "standin-signing-secret"


def now() -> datetime:
    return datetime.now(UTC)


class DictCopies:
    def __init__(self) -> None:
        self.copies: dict[str, list[SlackCopy]] = {}

    async def save(self, request_id: str, copy: SlackCopy) -> None:
        if copy not in self.copies.setdefault(request_id, []):
            self.copies[request_id].append(copy)

    async def of(self, request_id: str) -> list[SlackCopy]:
        return list(self.copies.get(request_id, []))


@pytest.fixture
async def standin() -> AsyncIterator[SlackStandin]:
    s = SlackStandin(SECRET)
    await s.start()
    try:
        yield s
    finally:
        await s.stop()


def channel(standin: SlackStandin, pace: float = 0.0) -> SlackChannel:
    return SlackChannel(client("xoxb-test", standin.api_url), DictCopies(), pace)


def message(key: str = "k1", request_id: str = "", edit: bool = False) -> Message:
    blocks: tuple[dict[str, object], ...] = (
        {"type": "section", "text": {"type": "mrkdwn", "text": f"*{key}*"}},
    )
    if request_id and not edit:
        value = button_value(request_id, 3)
        blocks += ({"type": "actions", "block_id": f"decide:{request_id}", "elements": [
            {"type": "button", "action_id": "approve", "value": value,
             "text": {"type": "plain_text", "text": "Approve"}},
        ]},)  # fmt: skip
    return Message(key, "test", f"subject {key}", f"text {key}", blocks=blocks,
                   request_id=request_id, edit=edit)  # fmt: skip


async def test_a_message_reaches_the_person_by_slack_id_with_blocks_and_its_delivery_id(
    standin: SlackStandin,
) -> None:
    slack = channel(standin)
    out = await slack.send(Recipient("ann", "U-ANN"), message(), "41")
    [posted] = standin.posted()
    assert (out.kind, out.ref) == ("delivered", f"DU-ANN:{posted.ts}")
    assert (posted.channel, posted.text, posted.blocks) == (
        "DU-ANN", "text k1", [{"type": "section", "text": {"type": "mrkdwn", "text": "*k1*"}}],
    )  # fmt: skip
    assert posted.metadata == {"event_type": "qm_delivery", "event_payload": {"delivery_id": "41"}}


async def test_people_without_a_slack_id_are_looked_up_by_email_once(
    standin: SlackStandin,
) -> None:
    standin.add_user("bob@example.com", "U-BOB")
    slack = channel(standin)
    for key in ("k1", "k2"):
        out = await slack.send(Recipient("bob", "Bob@example.com"), message(key), key)
        assert out.kind == "delivered"
    assert [m.channel for m in standin.posted()] == ["DU-BOB", "DU-BOB"]
    lookups = [c for c in standin.state.calls if c.method == "users.lookupByEmail"]
    assert len(lookups) == 1  # cached


async def test_an_unknown_email_fails_naming_users_not_found(standin: SlackStandin) -> None:
    out = await channel(standin).send(Recipient("cy", "cy@example.com"), message(), "1")
    assert (out.kind, out.reason) == (
        "failed",
        "slack users.lookupByEmail / conversations.open: users_not_found",
    )
    out = await channel(standin).send(Recipient("dee", ""), message(), "2")
    assert (out.kind, out.reason) == ("failed", "no Slack id or e-mail known for dee")
    assert standin.posted() == []


async def test_a_429_is_waited_out_for_its_retry_after_and_the_message_arrives_once(
    standin: SlackStandin,
) -> None:
    standin.rate_limit("chat.postMessage", times=1, retry_after=1)
    out = await channel(standin).send(Recipient("ann", "U-ANN"), message(), "1")
    assert out.kind == "delivered"
    assert len(standin.posted()) == 1
    calls = [c for c in standin.state.calls if c.method == "chat.postMessage"]
    assert [c.status for c in calls] == [429, 200]
    assert calls[1].at - calls[0].at >= 1.0  # Retry-After honoured (a lower bound)


async def test_429s_beyond_the_sdk_retries_come_back_as_a_retry_after(
    standin: SlackStandin,
) -> None:
    standin.rate_limit("chat.postMessage", times=10, retry_after=0)
    slack = SlackChannel(client("xoxb-test", standin.api_url, retries=1), DictCopies(), 0)
    out = await slack.send(Recipient("ann", "U-ANN"), message(), "1")
    assert (out.kind, out.retry_after_seconds) == ("retry", 0.0)
    assert standin.posted() == []


async def test_posts_to_one_channel_are_paced(standin: SlackStandin) -> None:
    slack = channel(standin, pace=0.3)
    for key in ("k1", "k2", "k3"):
        await slack.send(Recipient("ann", "U-ANN"), message(key), key)
    posts = [c.at for c in standin.state.calls if c.method == "chat.postMessage"]
    assert len(posts) == 3
    assert all(b - a >= 0.3 for a, b in itertools.pairwise(posts))


async def test_after_a_decision_every_approver_copy_is_edited_buttons_gone(
    standin: SlackStandin,
) -> None:
    slack = channel(standin)
    for user in ("U-MO", "U-GUS", "U-GIA"):
        await slack.send(Recipient(user.lower(), user), message("ask", "r-1"), f"d-{user}")
    await slack.send(Recipient("ann", "U-ANN"), message("other"), "d-other")
    out = await slack.send(Recipient("*approvers*", ""), message("decided", "r-1", edit=True), "9")
    assert (out.kind, out.ref) == ("delivered", "3 of 3 copies edited")
    copies = [m for m in standin.posted() if m.channel != "DU-ANN"]
    assert [(m.edits, m.text) for m in copies] == [(1, "text decided")] * 3
    assert all(b["type"] != "actions" for m in copies for b in m.blocks)
    assert standin.posted("DU-ANN")[0].edits == 0


async def test_confirm_finds_a_delivered_message_by_its_delivery_id(standin: SlackStandin) -> None:
    slack = channel(standin)
    sent = await slack.send(Recipient("ann", "U-ANN"), message(), "77")
    found = await slack.confirm(Recipient("ann", "U-ANN"), message(), "77", since=now())
    assert found is not None
    assert (found.kind, found.ref) == ("delivered", sent.ref)
    assert await slack.confirm(Recipient("ann", "U-ANN"), message(), "78", since=now()) is None


class FrozenCopies(DictCopies):
    """Copies on a PostgreSQL that does not answer: every save times out."""

    async def save(self, request_id: str, copy: SlackCopy) -> None:
        raise TimeoutError


async def test_a_copy_postgresql_cannot_save_leaves_the_message_delivered_once(
    standin: SlackStandin, caplog: pytest.LogCaptureFixture
) -> None:
    # Posted, then the copy's save timed out: the error escaped as the channel's, the
    # delivery was retried and the approver got the message twice; and when confirming
    # an unsure delivery the database's timeout was reported as Slack's.
    slack = SlackChannel(client("xoxb-test", standin.api_url), FrozenCopies(), 0.0)
    ann = Recipient("ann", "U-ANN")
    sent = await slack.send(ann, message("ask", "r-1"), "d-1")
    assert sent.kind == "delivered"
    found = await slack.confirm(ann, message("ask", "r-1"), "d-1", since=now())
    assert found is not None
    assert (found.kind, found.ref) == ("delivered", sent.ref)
    assert len(standin.posted("DU-ANN")) == 1
    said = [r.getMessage() for r in caplog.records if r.name == "qm.notifier.slack"]
    assert len(said) == 2, said
    assert all("was not recorded" in m and "PostgreSQL did not answer" in m for m in said)


async def test_confirm_pages_back_past_hundreds_of_newer_messages_to_the_delivery_time(
    standin: SlackStandin,
) -> None:
    # breaker #3: only the newest 200 were read, so 301 newer ones made a duplicate
    slack, ann = channel(standin), Recipient("ann", "U-ANN")
    created = now()
    sent = await slack.send(ann, message(), "77")
    for n in range(301):
        await slack.send(ann, message(f"n{n}"), f"newer-{n}")
    found = await slack.confirm(ann, message(), "77", since=created)
    assert found is not None
    assert (found.kind, found.ref) == ("delivered", sent.ref)
    pages = [c for c in standin.state.calls if c.method == "conversations.history"]
    assert len(pages) == 2  # 200 newest, then the rest from the cursor
    standin.state.calls.clear()
    assert await slack.confirm(ann, message(), "78", since=created) is None  # read to the end
    assert len([c for c in standin.state.calls if c.method == "conversations.history"]) == 2
    # bounded by time: a delivery created an hour from now can't have a message yet
    later = created + timedelta(hours=1)
    assert await slack.confirm(ann, message(), "77", since=later) is None


async def test_the_standin_pages_history_as_slack_does(standin: SlackStandin) -> None:
    slack = channel(standin)
    for n in range(5):
        await slack.send(Recipient("ann", "U-ANN"), message(f"k{n}"), str(n))
    ts = [m.ts for m in standin.posted()]
    web = slack.web
    first = await web.conversations_history(channel="DU-ANN", limit=2, oldest=ts[0])
    assert [m["ts"] for m in first["messages"]] == [ts[4], ts[3]]
    assert first["has_more"] is True
    cursor = first["response_metadata"]["next_cursor"]
    second = await web.conversations_history(channel="DU-ANN", limit=2, oldest=ts[0],
                                             cursor=cursor)  # fmt: skip
    assert [m["ts"] for m in second["messages"]] == [ts[2], ts[1]]  # oldest excluded
    assert second["has_more"] is False
    both = await web.conversations_history(channel="DU-ANN", oldest=ts[1], latest=ts[3],
                                           inclusive=True)  # fmt: skip
    assert [m["ts"] for m in both["messages"]] == [ts[3], ts[2], ts[1]]
    with pytest.raises(SlackApiError, match="invalid_cursor"):
        await web.conversations_history(channel="DU-ANN", cursor="not base64!")


async def test_the_notification_text_is_escaped_and_within_slacks_length(
    standin: SlackStandin,
) -> None:
    text = "<!here> <https://evil.example|click> & " + "x" * 50_000
    await channel(standin).send(Recipient("ann", "U-ANN"), replace(message(), text=text), "1")
    [posted] = standin.posted()
    assert posted.text.startswith("&lt;!here&gt; &lt;https://evil.example|click&gt; &amp; x")
    assert len(posted.text) == MESSAGE_TEXT_MAX


@pytest.mark.parametrize(("header", "after"), [(10**12, 10**12), ("soon", None)])
async def test_a_long_or_broken_retry_after_is_not_slept_in_the_call_and_is_bounded_after(
    standin: SlackStandin, header: int | str, after: float | None
) -> None:
    # breaker #9: the SDK slept whatever Slack's Retry-After said (and failed on "soon")
    standin.rate_limit("chat.postMessage", times=1, retry_after=header)
    started = time.monotonic()
    out = await channel(standin).send(Recipient("ann", "U-ANN"), message(), "1")
    assert time.monotonic() - started < 5
    assert (out.kind, out.retry_after_seconds) == ("retry", after)
    assert out.reason == "slack chat.postMessage: ratelimited"
    assert core_schedule(5)(1, out.retry_after_seconds) == (36_000.0 if after else 5.0)


async def test_a_click_on_the_page_is_a_signed_interactivity_payload(standin: SlackStandin) -> None:
    got: list[tuple[bool, dict[str, Any]]] = []

    async def receive(request: web.Request) -> web.Response:
        body = await request.read()
        ok = SignatureVerifier(SECRET).is_valid_request(body, dict(request.headers))
        got.append((ok, json.loads(urllib.parse.parse_qs(body.decode())["payload"][0])))
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_post("/slack/interactivity", receive)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        standin.interactivity_url = f"http://127.0.0.1:{port}/slack/interactivity"
        await channel(standin).send(Recipient("mo", "U-MO"), message("ask", "r-1"), "1")
        status, _ = await standin.click(standin.posted()[0], "approve")
    finally:
        await runner.cleanup()
    assert status == 200
    [(valid, payload)] = got
    assert valid
    assert payload["type"] == "block_actions"
    assert payload["user"] == {"id": "U-MO", "username": "U-MO"}
    [action] = payload["actions"]
    assert json.loads(action["value"]) == {"request_id": "r-1", "version": 3}
