"""The webhook channel against a real local receiver (an aiohttp server in the test)
that verifies every request with the Standard Webhooks reference verifier and answers
what the test scripts (500, 429 with Retry-After, 410, ...).

The delivery loop is the core's; `drive` below stands in for it as far as the
schedule goes: it sends, and on `retry` moves a controllable clock on by the delay
`next_delay` gives (no real waiting), until the delivery ends. The signature's
timestamp is real time, as the receiver's verifier checks it against its own clock.
"""

from __future__ import annotations

import asyncio
import base64
import json
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime

import pytest
from aiohttp import web
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from devtools.localinfra import free_port
from services.notifier.channel import Message, Outcome, Recipient
from services.notifier.retries import next_delay
from services.notifier.webhooks import (
    WebhookChannel,
    WebhookSettings,
    body_of,
    parse_secrets,
    sign,
)

OLD = "whsec_" + base64.b64encode(b"old-secret-of-32-bytes-0123456789").decode()
NEW = "whsec_" + base64.b64encode(b"new-secret-of-32-bytes-9876543210").decode()
OTHER = "whsec_" + base64.b64encode(b"a-secret-nobody-here-uses-0000000").decode()
MESSAGE = Message(
    dedupe_key="req:r-1:created",
    kind="request.created",
    subject="New credit request",
    text="Ann asks for 50 credits",
    payload={"type": "request.created", "data": {"request_id": "r-1", "credits": 50}},
)


@dataclass
class Receiver:
    """Verifies with `secret`, then answers the next scripted (status, headers)."""

    secret: str
    script: list[tuple[int, dict[str, str]]] = field(default_factory=list)
    seen: list[tuple[str, bool]] = field(default_factory=list)  # (webhook-id, verified)
    delay: float = 0.0
    url: str = ""

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        try:
            Webhook(self.secret).verify(body, dict(request.headers))
            verified = True
        except WebhookVerificationError:
            verified = False
        self.seen.append((request.headers.get("webhook-id", ""), verified))
        if self.delay:
            await asyncio.sleep(self.delay)
        if not verified:
            return web.Response(status=401, text="bad signature")
        status, headers = self.script.pop(0) if self.script else (200, {})
        return web.Response(status=status, headers=headers, text=f"answer {status}")


async def start(receiver: Receiver) -> web.AppRunner:
    app = web.Application()
    app.router.add_post("/hook", receiver.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    receiver.url = f"http://127.0.0.1:{port}/hook"
    return runner


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    r = Receiver(OLD)
    runner = await start(r)
    yield r
    await runner.cleanup()


def channel(*secrets: str, timeout: float = 10.0) -> WebhookChannel:
    return WebhookChannel(
        WebhookSettings.from_env(
            {
                "QM_NOTIFIER_WEBHOOK_SECRETS": ",".join(secrets),
                "QM_NOTIFIER_WEBHOOK_TIMEOUT_SECONDS": str(timeout),
            }
        )
    )


async def once(url: str, delivery_id: str, *secrets: str, limit_s: float = 10.0) -> Outcome:
    """One attempt by a channel of its own, closed after."""
    ch = channel(*secrets, timeout=limit_s)
    try:
        return await ch.send(Recipient("", url), MESSAGE, delivery_id)
    finally:
        await ch.close()


async def drive(ch: WebhookChannel, url: str, delivery_id: str) -> list[tuple[float, Outcome]]:
    """The loop's part that matters here: attempt, and on retry wait (on a clock of
    seconds since the first attempt) what the schedule says; (when, outcome) each."""
    clock, failed, attempts = 0.0, 0, []
    while True:
        outcome = await ch.send(Recipient("", url), MESSAGE, delivery_id)
        attempts.append((clock, outcome))
        if outcome.kind != "retry":
            return attempts
        failed += 1
        delay = next_delay(failed, outcome.retry_after_seconds)
        if delay is None:
            attempts.append((clock, Outcome("failed", reason=f"gave up: {outcome.reason}")))
            return attempts
        clock += delay


async def test_500_then_429_then_410_retries_on_schedule_then_disables(
    receiver: Receiver,
) -> None:
    receiver.script = [
        (500, {}),
        (429, {"Retry-After": "120"}),
        (503, {}),
        (500, {}),
        (410, {}),
    ]
    ch = channel(OLD)
    try:
        attempts = await drive(ch, receiver.url, "d-hook-1")
    finally:
        await ch.close()

    assert [(t, o.kind) for t, o in attempts] == [
        (0.0, "retry"),
        (5.0, "retry"),  # the first step
        (125.0, "retry"),  # Retry-After: 120 instead of the second step
        (1_925.0, "retry"),  # the third step, 30 min
        (9_125.0, "disabled"),  # 2 h later: 410 Gone, and no attempt after it
    ]
    assert attempts[1][1].retry_after_seconds == 120.0
    assert attempts[0][1].reason == "HTTP 500 answer 500"
    assert attempts[-1][1].reason == "HTTP 410 answer 410"
    # Every attempt signed and verified, one webhook-id across the retries.
    assert receiver.seen == [("d-hook-1", True)] * 5


async def test_a_receiver_failing_for_good_is_tried_eight_times_over_a_day_then_failed(
    receiver: Receiver,
) -> None:
    receiver.script = [(500, {})] * 8
    ch = channel(OLD)
    try:
        attempts = await drive(ch, receiver.url, "d-hook-2")
    finally:
        await ch.close()
    times = [t for t, o in attempts if o.kind == "retry"]
    assert times == [0.0, 5.0, 305.0, 2_105.0, 9_305.0, 27_305.0, 63_305.0, 99_305.0]
    assert attempts[-1][1].kind == "failed"
    assert attempts[-1][1].reason == "gave up: HTTP 500 answer 500"
    assert len(receiver.seen) == 8


async def test_during_a_rotation_old_and_new_secret_both_verify(receiver: Receiver) -> None:
    newer = Receiver(NEW)
    runner = await start(newer)
    ch = channel(NEW, OLD)
    try:
        to_old = await ch.send(Recipient("", receiver.url), MESSAGE, "d-rot")
        to_new = await ch.send(Recipient("", newer.url), MESSAGE, "d-rot")
        stranger = await once(receiver.url, "d-x", OTHER)
    finally:
        await ch.close()
        await runner.cleanup()
    assert (to_old.kind, to_new.kind) == ("delivered", "delivered")
    assert to_old.ref == "200"
    assert receiver.seen[0] == ("d-rot", True)
    assert newer.seen == [("d-rot", True)]
    # Signed with a secret the receiver does not hold: refused (401), a failure.
    assert (stranger.kind, stranger.reason) == ("failed", "HTTP 401 bad signature")
    assert receiver.seen[1] == ("d-x", False)


async def test_timeouts_and_refused_connections_retry(receiver: Receiver) -> None:
    receiver.delay = 1.0
    slow = await once(receiver.url, "d-t", OLD, limit_s=0.2)
    down = await once(f"http://127.0.0.1:{free_port()}/hook/t0ken-in-path", "d-d", OLD)
    assert slow.kind == "retry"
    assert "Timeout" in slow.reason
    assert down.kind == "retry"
    assert down.reason.startswith("http://127.0.0.1:")
    assert "t0ken-in-path" not in down.reason


async def test_other_4xx_and_redirects_fail_and_a_bad_url_fails(receiver: Receiver) -> None:
    receiver.script = [(400, {}), (301, {"Location": "http://elsewhere.test/"})]
    ch = channel(OLD)
    try:
        bad = await ch.send(Recipient("", receiver.url), MESSAGE, "d-4")
        moved = await ch.send(Recipient("", receiver.url), MESSAGE, "d-3")
        nonsense = await ch.send(Recipient("", "ftp://x.test/"), MESSAGE, "d-u")
    finally:
        await ch.close()
    assert (bad.kind, bad.reason) == ("failed", "HTTP 400 answer 400")
    assert moved.kind == "failed"
    assert "redirects are not followed: http://elsewhere.test/" in moved.reason
    assert nonsense.kind == "failed"
    assert "not an http(s) URL" in nonsense.reason


def test_the_body_is_the_payload_or_an_envelope_and_secrets_are_checked() -> None:
    when = datetime(2026, 11, 30, 12, tzinfo=UTC)
    assert json.loads(body_of(MESSAGE)) == MESSAGE.payload
    bare = Message("k", "anomaly", "Unusual spend", "5x the usual")
    assert json.loads(body_of(bare)) == {
        "type": "anomaly",
        "data": {"subject": "Unusual spend", "text": "5x the usual"},
    }
    assert parse_secrets(f" {NEW}, {OLD} ") == (NEW, OLD)
    both = sign((NEW, OLD), "d-1", when, "{}").split(" ")
    assert [s[:3] for s in both] == ["v1,", "v1,"]
    assert both[1] == Webhook(OLD).sign("d-1", when, "{}")
    with pytest.raises(ValueError, match=re.escape("secret 2 is not whsec_<base64 of 16+")) as err:
        parse_secrets(f"{NEW},whsec_%%%not-base64")
    assert "not-base64" not in str(err.value)
