"""The e-mail channel against a real SMTP server: aiosmtpd in this process on a free
port, requiring STARTTLS (a trustme certificate) and a login, as a submission server
does. Accepts, 4xx and 5xx replies come from the server's own handler."""

from __future__ import annotations

import email
import ssl
from collections.abc import Iterator
from dataclasses import dataclass, field
from email.message import Message as MimeMessage
from email.policy import default as default_policy
from pathlib import Path
from typing import Any

import pytest
import trustme
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword

from devtools.localinfra import free_port
from services.notifier.channel import Message, Recipient
from services.notifier.email import EmailChannel, EmailSettings, message_id

USER, PASSWORD = "qm-notifier", "smtp-pass-0123"
MESSAGE = Message(
    dedupe_key="th:ann:2026-11:80",
    kind="threshold_crossed",
    subject="You have used 80% of your monthly budget",
    text="Ann, you have used 80 of your 100 credits this month.",
    html="<p>Ann, you have used <b>80</b> of your 100 credits this month.</p>",
)


@dataclass
class Mailbox:
    """aiosmtpd handler: keeps what it accepts; refuses some recipients."""

    received: list[tuple[str, list[str], bytes]] = field(default_factory=list)
    logins: list[str] = field(default_factory=list)

    async def handle_RCPT(
        self, server: Any, session: Any, envelope: Any, address: str, options: list[str]
    ) -> str:
        if address.startswith("busy@"):
            return "451 4.3.2 Try again later"
        if address.startswith("nobody@"):
            return "550 5.1.1 No such user here"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.received.append((envelope.mail_from, list(envelope.rcpt_tos), envelope.content))
        return "250 Message accepted"

    def authenticate(
        self, server: Any, session: Any, envelope: Any, mechanism: str, data: Any
    ) -> AuthResult:
        ok = isinstance(data, LoginPassword) and (
            data.login.decode(),
            data.password.decode(),
        ) == (USER, PASSWORD)
        if ok:
            self.logins.append(USER)
        # handled=False: aiosmtpd answers the refusal (535) itself
        return AuthResult(success=ok, handled=False)


@dataclass
class SmtpServer:
    port: int
    ca_file: Path
    mailbox: Mailbox


@pytest.fixture(scope="module")
def smtp(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SmtpServer]:
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1", "localhost")
    server_tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    cert.configure_cert(server_tls)
    ca_file = tmp_path_factory.mktemp("smtp") / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    mailbox = Mailbox()
    port = free_port()
    controller = Controller(
        mailbox,
        hostname="127.0.0.1",
        port=port,
        tls_context=server_tls,
        require_starttls=True,
        authenticator=mailbox.authenticate,
        auth_required=True,
        auth_require_tls=True,
    )
    controller.start()
    try:
        yield SmtpServer(port, ca_file, mailbox)
    finally:
        controller.stop()


def settings(smtp: SmtpServer, **overrides: object) -> EmailSettings:
    env = {
        "QM_NOTIFIER_SMTP_HOST": "127.0.0.1",
        "QM_NOTIFIER_SMTP_PORT": str(smtp.port),
        "QM_NOTIFIER_SMTP_USERNAME": USER,
        "QM_NOTIFIER_SMTP_PASSWORD": PASSWORD,
        "QM_NOTIFIER_SMTP_CA_FILE": str(smtp.ca_file),
        "QM_NOTIFIER_SMTP_TIMEOUT_SECONDS": "5",
        "QM_NOTIFIER_EMAIL_FROM": "Quartermaster <qm@example.test>",
    }
    env |= {f"QM_NOTIFIER_{k.upper()}": str(v) for k, v in overrides.items()}
    return EmailSettings.from_env(env)


def parsed(raw: bytes) -> MimeMessage:
    return email.message_from_bytes(raw, policy=default_policy)


async def test_a_message_goes_over_starttls_with_login_as_text_and_html(
    smtp: SmtpServer,
) -> None:
    before = len(smtp.mailbox.received)
    channel = EmailChannel(settings(smtp))
    ann = Recipient("ann", "ann@example.test", "Ann Example")

    outcome = await channel.send(ann, MESSAGE, "d-1234")

    assert outcome.kind == "delivered", outcome
    assert outcome.ref == "<qm.d-1234@example.test>"
    mail_from, rcpt_tos, raw = smtp.mailbox.received[before]
    assert (mail_from, rcpt_tos) == ("qm@example.test", ["ann@example.test"])
    assert USER in smtp.mailbox.logins
    mail = parsed(raw)
    assert mail["Message-ID"] == "<qm.d-1234@example.test>"
    assert mail["Subject"] == MESSAGE.subject
    assert mail["To"] == "Ann Example <ann@example.test>"
    assert mail.get_content_type() == "multipart/alternative"
    parts = {p.get_content_type(): p.get_content().strip() for p in mail.iter_parts()}  # type: ignore[attr-defined]
    assert parts == {"text/plain": MESSAGE.text, "text/html": MESSAGE.html}


async def test_a_retry_of_one_delivery_carries_the_same_message_id(smtp: SmtpServer) -> None:
    channel = EmailChannel(settings(smtp))
    ann = Recipient("ann", "ann@example.test")
    first = await channel.send(ann, MESSAGE, "d-same")
    second = await channel.send(ann, MESSAGE, "d-same")
    assert first.ref == second.ref == "<qm.d-same@example.test>"
    assert message_id("a b/c", "x.test") == message_id("a b/c", "x.test")
    assert message_id("a b/c", "x.test").startswith("<qm.")
    assert " " not in message_id("a b/c", "x.test")


async def test_text_only_message_is_plain_text(smtp: SmtpServer) -> None:
    before = len(smtp.mailbox.received)
    plain = Message("k", "anomaly", "Unusual spend", "Spend is 5x the usual.")
    outcome = await EmailChannel(settings(smtp)).send(Recipient("b", "bob@x.test"), plain, "d-2")
    assert outcome.kind == "delivered"
    mail = parsed(smtp.mailbox.received[before][2])
    assert mail.get_content_type() == "text/plain"
    assert mail.get_content().strip() == plain.text  # type: ignore[attr-defined]


async def test_smtp_4xx_is_a_retry_and_5xx_a_failure_quoting_the_reply(
    smtp: SmtpServer,
) -> None:
    channel = EmailChannel(settings(smtp))
    busy = await channel.send(Recipient("c", "busy@example.test"), MESSAGE, "d-3")
    gone = await channel.send(Recipient("d", "nobody@example.test"), MESSAGE, "d-4")
    assert busy.kind == "retry"
    assert busy.reason == "SMTP 451 4.3.2 Try again later"
    assert gone.kind == "failed"
    assert gone.reason == "SMTP 550 5.1.1 No such user here"


async def test_a_wrong_password_fails_without_showing_it(smtp: SmtpServer) -> None:
    outcome = await EmailChannel(settings(smtp, smtp_password="wrong-pass-99")).send(
        Recipient("a", "ann@example.test"), MESSAGE, "d-5"
    )
    assert outcome.kind == "failed", outcome
    assert outcome.reason.startswith("SMTP 535")
    assert "wrong-pass-99" not in outcome.reason
    assert "wrong-pass-99" not in repr(settings(smtp, smtp_password="wrong-pass-99"))


async def test_an_untrusted_certificate_fails_and_an_unreachable_server_retries(
    smtp: SmtpServer, tmp_path: Path
) -> None:
    other = tmp_path / "other-ca.pem"
    trustme.CA().cert_pem.write_to_path(str(other))
    untrusted = await EmailChannel(settings(smtp, smtp_ca_file=other)).send(
        Recipient("a", "ann@example.test"), MESSAGE, "d-6"
    )
    assert untrusted.kind == "failed"
    assert "TLS" in untrusted.reason

    down = await EmailChannel(settings(smtp, smtp_port=free_port())).send(
        Recipient("a", "ann@example.test"), MESSAGE, "d-7"
    )
    assert down.kind == "retry"
    assert "SMTP server 127.0.0.1:" in down.reason


async def test_a_bad_address_fails_and_no_host_is_a_clear_error(smtp: SmtpServer) -> None:
    outcome = await EmailChannel(settings(smtp)).send(
        Recipient("a", "not an address"), MESSAGE, "d"
    )
    assert outcome.kind == "failed", outcome
    assert "not an e-mail address" in outcome.reason
    with pytest.raises(ValueError, match="QM_NOTIFIER_SMTP_HOST"):
        EmailChannel(EmailSettings.from_env({}))
