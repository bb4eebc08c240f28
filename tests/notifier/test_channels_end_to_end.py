"""E-mail and webhooks through the running notifier (`python -m services.notifier`, a
real process with its metrics port): threshold intents on the topic → one e-mail each
at a local SMTP server (aiosmtpd) and one Slack message, and one signed POST per
webhook endpoint at a local receiver that verifies every request with the Standard
Webhooks reference verifier. The endpoints answer 200; 500 once then 200 (retried on
the webhook schedule, its first step 5 s, the same webhook-id); 410 (disabled: its
delivery failed naming why, and the next intent is not posted to it). The notifier's
Prometheus metrics show each outcome and the lag from intent to delivery.
"""

from __future__ import annotations

import base64
import email
import json
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from email.message import EmailMessage
from email.policy import default as default_policy
from typing import Any

import asyncpg
import pytest
from aiohttp import web
from aiosmtpd.controller import Controller
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from devtools.localinfra import free_port
from devtools.slack_standin import SlackStandin
from tests.conftest import Replicas
from tests.helpers import eventually, new_user, scrape
from tests.notifier.kit import add_people, notifier_env, process, produce_intents, threshold_intent

pytestmark = pytest.mark.infra
SECRET = "whsec_" + base64.b64encode(b"end-to-end-webhook-secret-0123456").decode()


@dataclass
class Mailbox:
    """aiosmtpd handler keeping every message it accepts."""

    mails: list[EmailMessage] = field(default_factory=list)

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        mail = email.message_from_bytes(envelope.content, policy=default_policy)
        assert isinstance(mail, EmailMessage)  # what the default policy makes
        self.mails.append(mail)
        return "250 Message accepted"


@dataclass
class Receiver:
    """Webhook endpoints at /<name>: each request verified, then answered by the
    endpoint's script (its last answer repeats)."""

    scripts: dict[str, list[int]]
    seen: list[tuple[str, str, bool, dict[str, Any]]] = field(default_factory=list)
    url: str = ""

    async def handle(self, request: web.Request) -> web.Response:
        name, body = request.match_info["name"], await request.read()
        try:
            Webhook(SECRET).verify(body, dict(request.headers))
            verified = True
        except WebhookVerificationError:
            verified = False
        self.seen.append((name, request.headers["webhook-id"], verified, json.loads(body)))
        script = self.scripts[name]
        status = script.pop(0) if len(script) > 1 else script[0]
        return web.Response(status=status, text="gone for good" if status == 410 else "")

    def of(self, name: str) -> list[tuple[str, bool, dict[str, Any]]]:
        return [(i, ok, body) for n, i, ok, body in self.seen if n == name]


@pytest.fixture
def mailbox() -> Iterator[tuple[Mailbox, int]]:
    box, port = Mailbox(), free_port()
    controller = Controller(box, hostname="127.0.0.1", port=port)
    controller.start()
    try:
        yield box, port
    finally:
        controller.stop()


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    rx = Receiver({"good": [200], "flaky": [500, 200], "gone": [410]})
    app = web.Application()
    app.router.add_post("/{name}", rx.handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    rx.url = f"http://127.0.0.1:{port}"
    try:
        yield rx
    finally:
        await runner.cleanup()


async def _failed(database_url: str, workspace_id: str) -> list[tuple[str, str]]:
    """(recipient, reason) of the workspace's failed webhook deliveries, oldest first."""
    conn = await asyncpg.connect(database_url)
    try:
        rows = await conn.fetch(
            "SELECT recipient, reason FROM notifier.deliveries WHERE workspace_id = $1"
            " AND channel = 'webhook' AND state = 'failed' ORDER BY id",
            workspace_id,
        )
    finally:
        await conn.close()
    return [(r["recipient"], r["reason"]) for r in rows]


async def test_email_and_webhooks_through_the_running_notifier(
    replicas: Replicas, mailbox: tuple[Mailbox, int], receiver: Receiver
) -> None:
    box, smtp_port = mailbox
    [policy] = await replicas.start(1)
    user = new_user()
    await add_people(replicas.admin(policy), [user])
    standin = SlackStandin("secret")
    await standin.start()
    hooks = ",".join(f"{n}={receiver.url}/{n}" for n in ("good", "flaky", "gone"))
    metrics_addr = f"127.0.0.1:{free_port()}"
    env = notifier_env(
        replicas.env, standin, policy.port,
        QM_NOTIFIER_DEFAULT_CHANNELS="both", QM_NOTIFIER_SMTP_HOST="127.0.0.1",
        QM_NOTIFIER_SMTP_PORT=str(smtp_port), QM_NOTIFIER_SMTP_SECURITY="none",
        QM_NOTIFIER_WEBHOOKS=hooks, QM_NOTIFIER_WEBHOOK_SECRETS=SECRET,
        QM_NOTIFIER_METRICS_ADDR=metrics_addr,
    )  # fmt: skip
    proc = process(f"notifier-channels-{uuid.uuid4().hex[:6]}", env)
    proc.start()
    try:
        produce_intents(replicas.env["QM_KAFKA_BOOTSTRAP"], [threshold_intent(
            replicas.workspace_id, user, 1)])  # fmt: skip

        async def arrived() -> tuple[int, int, int, int, int]:
            return (len(box.mails), len(standin.posted(f"DU{user}")), len(receiver.of("good")),
                    len(receiver.of("flaky")), len(receiver.of("gone")))  # fmt: skip

        # flaky's second attempt is due 5 s after its 500 (retries.STEPS[0])
        await eventually(arrived, (1, 1, 1, 2, 1), within=60)
        [mail] = box.mails
        assert mail["To"] == f"{user} <{user}@example.com>"
        assert mail["Subject"] == "You have used 80% of your monthly AI budget"
        text = mail.get_body(("plain",))
        assert text is not None
        assert "(80 %)" in text.get_content()
        assert mail.get_body(("html",)) is not None
        [(good_id, good_ok, good_body)] = receiver.of("good")
        assert good_ok
        assert good_body["type"] == "threshold_crossed"
        assert good_body["recipient_user_id"] == user
        (first, ok1, _), (again, ok2, _) = receiver.of("flaky")
        assert (ok1, ok2) == (True, True)
        assert first == again != good_id  # the same webhook-id on a retry
        assert receiver.of("gone")[0][1]

        # gone said 410: disabled; the next intent reaches the others only
        produce_intents(replicas.env["QM_KAFKA_BOOTSTRAP"], [threshold_intent(
            replicas.workspace_id, user, 2)])  # fmt: skip
        await eventually(arrived, (2, 2, 2, 3, 1), within=60)

        async def failed() -> list[tuple[str, str]]:
            return await _failed(replicas.database_url, replicas.workspace_id)

        # gone's delivery failed naming the 410; the second intent is planned without it,
        # or (when planned before the disabling was read, within DISABLED_TTL_S) its
        # delivery fails at the gate without a post: receiver.of("gone") stayed at one
        first_gone, *later = await failed()
        assert first_gone == ("gone", "endpoint disabled: HTTP 410 gone for good")
        assert all(f == ("gone", "endpoint gone is disabled: HTTP 410 gone for good")
                   for f in later)  # fmt: skip
        outcomes = Counter(
            (ch, out) for ch in ("slack", "email", "webhook")
            for out in ("delivered", "retry", "failed", "disabled")
            for _ in range(int(scrape(metrics_addr, "qm_notifier_deliveries_total",
                                      channel=ch, outcome=out) or 0))
        )  # fmt: skip
        assert outcomes == Counter({
            ("slack", "delivered"): 2, ("email", "delivered"): 2,
            ("webhook", "delivered"): 4, ("webhook", "retry"): 1,
            ("webhook", "disabled"): 1, **({("webhook", "failed"): len(later)} if later else {}),
        })  # fmt: skip
        lags = scrape(metrics_addr, "qm_notifier_delivery_lag_seconds_count", channel="webhook")
        assert lags == 4
    finally:
        proc.stop(timeout=10)
        await standin.stop()
