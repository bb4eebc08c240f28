"""Whatever reaches the Slack interactivity endpoint, nobody's click is lost and no
request ends in a 500 or a traceback (breaker #8): malformed headers and bodies are
refused before anything is parsed, every field of a signed payload is bounded, and
the task that acts after the acknowledgement never dies unobserved: the clicker is
told. The rig (real HTTP, a real grpc.aio RequestService stand-in, a Slack Web API
stand-in) is test_interactivity's."""

from __future__ import annotations

import json
import logging
from typing import Any

import pytest
from slack_sdk.socket_mode.request import SocketModeRequest

from devtools.slack_standin import sign as standin_sign
from services.notifier.slack_actions import MAX_VERSION, Click
from tests.notifier.test_interactivity import (
    NOW,
    SECRET,
    Acks,
    Rig,
    form,
    payload,
    rig,
    sign,
)

__all__ = ["rig"]  # the fixture, shared with test_interactivity


async def post_raw(rig: Rig, body: bytes, stamp: str, signature: str) -> tuple[int, str]:
    headers = {"X-Slack-Request-Timestamp": stamp, "X-Slack-Signature": signature}
    async with rig.http.post(rig.url, data=body, headers=headers) as resp:
        return resp.status, await resp.text()


@pytest.mark.parametrize(
    ("stamp", "body", "signature", "said"),
    [
        ("9" * 400, None, None, "X-Slack-Request-Timestamp is not a Unix time"),
        ("١٢٣٤", None, None, "X-Slack-Request-Timestamp is not a Unix time"),
        (f"+{int(NOW)}", None, None, "X-Slack-Request-Timestamp is not a Unix time"),
        ("0", None, None, "more than 300 s from now"),
        (None, b"payload=\xff\xfe", None, "the body is not UTF-8"),
        (None, None, "v0=é" + "0" * 63, "X-Slack-Signature is not v0= and 64 hex digits"),
        (None, None, "v0=" + "0" * 64, "invalid signature"),
    ],
)
async def test_malformed_headers_and_bodies_are_a_401_naming_the_problem(
    rig: Rig,
    caplog: pytest.LogCaptureFixture,
    stamp: str | None,
    body: bytes | None,
    signature: str | None,
    said: str,
) -> None:
    body = body if body is not None else form(payload())
    stamp = stamp if stamp is not None else str(int(NOW))
    # signed as Slack would sign them where that can be computed
    signature = signature or standin_sign(SECRET, stamp, body)
    with caplog.at_level(logging.WARNING):
        status, text = await post_raw(rig, body, stamp, signature)
    assert (status, said in text) == (401, True), text
    assert not [r for r in caplog.records if r.exc_info or r.levelno >= logging.ERROR]
    assert [r.getMessage() for r in caplog.records if "refused" in r.getMessage()] == [
        f"refused a Slack request: {text}"
    ]
    await rig.interactivity.drain()
    assert rig.requests.decided == rig.requests.refused == []


def value(**v: Any) -> dict[str, Any]:
    p = payload()
    p["actions"][0]["value"] = json.dumps({"request_id": "r-1", "version": 3} | v)
    return p


@pytest.mark.parametrize(
    ("bad", "said"),
    [
        (value(version=2**70), "version is not a whole number from 1 to 2**63 - 1"),
        (value(version=MAX_VERSION + 1), "version is not a whole number from 1 to 2**63 - 1"),
        (value(version=3.0), "version is not a whole number"),
        (value(request_id="x" * 257), "request_id is longer than 256 characters"),
        (value(request_id="a\x00b"), "request_id must not contain NUL"),
        (value(pad="x" * 2000), "actions[0].value is longer than 2000 characters"),
        (payload(user="U" * 65), "user.id is missing or not a Slack id"),
        (payload(user="<!here>"), "user.id is missing or not a Slack id"),
        ({**payload(), "channel": {"id": ["D-1"]}}, "channel.id is missing or not a Slack id"),
    ],
)
async def test_every_field_of_a_signed_click_is_bounded_a_400_naming_it(
    rig: Rig, bad: dict[str, Any], said: str
) -> None:
    body = form(bad)
    status, text = await post_raw(rig, body, str(int(NOW)), sign(body, str(int(NOW))))
    assert (status, said in text) == (400, True), text
    await rig.interactivity.drain()
    assert rig.requests.decided == rig.requests.refused == []


async def test_a_deeply_nested_payload_is_a_400_not_a_500(rig: Rig) -> None:
    body = b"payload=" + b"%5B" * 60_000  # within the 256 KiB a body may have
    status, text = await post_raw(rig, body, str(int(NOW)), sign(body, str(int(NOW))))
    assert (status, text.startswith("body is not a form with a JSON payload")) == (400, True)


async def test_the_largest_version_is_decided_and_a_good_click_after_bad_ones_too(
    rig: Rig,
) -> None:
    for n, bad in enumerate((value(version=2**70), payload(user="x" * 100))):
        body = form(bad)
        stamp = str(int(NOW) - n - 1)
        assert (await post_raw(rig, body, stamp, sign(body, stamp)))[0] == 400
    assert await rig.post(form(value(version=MAX_VERSION))) == 200
    await rig.interactivity.drain()
    assert rig.slack.told == [
        ("D-1", "U-BOB", f"Request r-1 was not approved: version {MAX_VERSION} is stale, now 3")
    ]


async def test_a_failure_while_acting_is_logged_and_the_clicker_told_never_lost(
    rig: Rig, caplog: pytest.LogCaptureFixture
) -> None:
    # what breaker #8's 2**70 did inside the task, now for any bug: nothing unobserved
    with caplog.at_level(logging.ERROR):
        await rig.interactivity.act(Click("r-<1>", 2**70, "approve", "U-BOB", "D-1"))
    assert [r.getMessage() for r in caplog.records] == [
        "acting on a Slack click on request 'r-<1>' failed"
    ]
    assert rig.slack.told == [
        ("D-1", "U-BOB", "Something went wrong on our side; request r-&lt;1&gt; may not have"
         " been decided. Look at it, or try again in a minute."),
    ]  # fmt: skip


async def test_a_malformed_socket_mode_payload_is_acknowledged_and_ignored(rig: Rig) -> None:
    acks = Acks()
    odd: tuple[str | dict[str, Any], ...] = (
        "text",
        value(version=2**70),
        {"type": "block_actions", "actions": "x"},
    )
    for n, p in enumerate(odd):
        req = SocketModeRequest(type="interactive", envelope_id=f"e-{n}", payload=p)
        await rig.interactivity.on_socket_request(acks, req)
    await rig.interactivity.drain()
    assert acks.sent == ["e-0", "e-1", "e-2"]
    assert rig.requests.decided == []
    assert rig.slack.told == []
