"""The e-mail channel: one message to one address over SMTP (aiosmtplib).

Each `send` opens a connection, upgrades it with STARTTLS (or speaks TLS from the
start, or neither, per `smtp_security`), logs in when a user is set, sends one
multipart/alternative message (the plain text, and the HTML when the message has
one) and closes. A connection per message keeps a dead connection from failing the
next message; notifications are few, so the handshake's cost does not matter.

The Message-ID is derived from the delivery id (`<qm.{delivery_id}@{domain}>`), so a
retry of one delivery carries the same Message-ID and a mail system that dedupes on
it shows the message once. What an attempt comes to (services.notifier.channel):

- every recipient accepted: `delivered`, `ref` the Message-ID;
- an SMTP 4xx reply (greylisting, a full mailbox, a busy server), a refused or lost
  connection, a timeout: `retry`, the reason quoting the reply;
- an SMTP 5xx reply (unknown mailbox, refused sender, failed login): `failed`, the
  reason quoting the server's reply, so a person knows what to fix before replaying;
- a TLS handshake the server's certificate fails (QM_NOTIFIER_SMTP_CA_FILE), or a server
  that does not offer STARTTLS when it is required: `failed` (a setting is wrong;
  trying again will not help).

Settings (`EmailSettings`, variables QM_NOTIFIER_SMTP_*, QM_NOTIFIER_EMAIL_FROM): see
each field. The password never appears in a log line or a reason.
"""

from __future__ import annotations

import hashlib
import logging
import re
import ssl
from email.message import EmailMessage
from email.utils import formataddr, parseaddr
from typing import Literal

import aiosmtplib
from pydantic import Field, SecretStr
from pydantic_settings import SettingsConfigDict

from quartermaster.settings import ExistingFile, Settings
from services.notifier.channel import Message, Outcome, Recipient

log = logging.getLogger(__name__)
_SAFE_ID = re.compile(r"[A-Za-z0-9._-]{1,64}")
SUBJECT_MAX = 250  # characters; a longer subject is cut


class EmailSettings(Settings):
    """The SMTP server and sender: variables QM_NOTIFIER_<FIELD>."""

    model_config = SettingsConfigDict(env_prefix="QM_NOTIFIER_")

    smtp_host: str = ""
    """SMTP server's host name; empty: no e-mail channel"""
    smtp_port: int = Field(587, ge=1, le=65_535)
    """SMTP server's port (587 submission with STARTTLS, 465 with smtp_security=tls)"""
    smtp_security: Literal["starttls", "tls", "none"] = "starttls"
    """starttls: upgrade the connection, refusing a server that cannot; tls: TLS from
    the first byte (port 465); none: plaintext (a relay on the same host only)"""
    smtp_username: str = ""
    """User to log in as (AUTH); empty: send without logging in"""
    smtp_password: SecretStr = SecretStr("")
    """Password of QM_NOTIFIER_SMTP_USERNAME"""
    smtp_ca_file: ExistingFile | None = None
    """CA (PEM) the SMTP server's certificate is checked against; unset: the system's"""
    smtp_timeout_seconds: float = Field(30.0, gt=0, le=300)
    """Connecting, and each command's reply, time out after this long (then: retry)"""
    email_from: str = "Quartermaster <quartermaster@localhost>"
    """The From address of every message ("Name <address>" or an address)"""


def message_id(delivery_id: str, domain: str) -> str:
    """`<qm.{delivery_id}@{domain}>`, the same for every attempt of one delivery; a
    delivery id that is not a safe atom (letters, digits, . _ -, ≤ 64) is hashed."""
    local = delivery_id
    if not _SAFE_ID.fullmatch(delivery_id):
        local = hashlib.sha256(delivery_id.encode()).hexdigest()[:40]
    return f"<qm.{local}@{domain}>"


def _one_line(text: str) -> str:
    return " ".join(text.split())


def build_email(
    sender: str, recipient: Recipient, message: Message, delivery_id: str
) -> EmailMessage:
    """The MIME message: text/plain, plus text/html as the alternative when
    `message.html` is set; the subject on one line, at most SUBJECT_MAX characters.
    ValueError when the recipient's address is not one."""
    name, address = parseaddr(recipient.address)
    if "@" not in address or any(c.isspace() for c in address):
        raise ValueError(f"not an e-mail address: {recipient.address!r}")
    mail = EmailMessage()
    mail["From"] = sender
    # A header is one line: a name or a subject with a line break in it is flattened.
    mail["To"] = formataddr((_one_line(recipient.display_name or name), address))
    mail["Subject"] = _one_line(message.subject)[:SUBJECT_MAX]
    domain = parseaddr(sender)[1].rpartition("@")[2] or "localhost"
    mail["Message-ID"] = message_id(delivery_id, domain)
    # The intent, for receivers' filters ("all threshold mails to a folder").
    mail["X-Quartermaster-Kind"] = message.kind
    mail.set_content(message.text)
    if message.html:
        mail.add_alternative(message.html, subtype="html")
    return mail


def _reply(code: int, text: str) -> str:
    return f"SMTP {code} {' '.join(text.split())}"


def _outcome_of_reply(code: int, text: str) -> Outcome:
    """4xx: retry; 5xx (or anything else unexpected): failed; both quote the reply."""
    reason = _reply(code, text)
    return Outcome("retry", reason=reason) if 400 <= code < 500 else Outcome("failed", reason)


class EmailChannel:
    """`Channel` "email": `send` delivers one message to `recipient.address`."""

    name = "email"

    def __init__(self, settings: EmailSettings) -> None:
        """ValueError when no host is set or the CA file cannot be read."""
        if not settings.smtp_host:
            raise ValueError("QM_NOTIFIER_SMTP_HOST is empty: no SMTP server to send through")
        self._settings = settings
        self._tls = ssl.create_default_context(
            cafile=str(settings.smtp_ca_file) if settings.smtp_ca_file else None
        )

    async def send(self, recipient: Recipient, message: Message, delivery_id: str) -> Outcome:
        """One attempt (see the module docstring for what each failure comes to)."""
        try:
            mail = build_email(self._settings.email_from, recipient, message, delivery_id)
        except ValueError as exc:
            return Outcome("failed", reason=str(exc))
        try:
            await self._transmit(mail)
        except aiosmtplib.SMTPRecipientsRefused as exc:
            first = exc.recipients[0]
            return _outcome_of_reply(first.code, first.message)
        except aiosmtplib.SMTPResponseException as exc:
            return _outcome_of_reply(exc.code, exc.message)
        except ssl.SSLError as exc:
            return Outcome("failed", reason=f"TLS with the SMTP server failed: {exc}")
        except aiosmtplib.SMTPNotSupported as exc:
            return Outcome("failed", reason=f"the SMTP server refused: {exc}")
        except (aiosmtplib.SMTPException, OSError) as exc:
            # Refused, lost or timed-out connections: the server may be back soon.
            where = f"{self._settings.smtp_host}:{self._settings.smtp_port}"
            return Outcome("retry", reason=f"SMTP server {where}: {exc}")
        return Outcome("delivered", ref=str(mail["Message-ID"]))

    async def _transmit(self, mail: EmailMessage) -> None:
        s = self._settings
        await aiosmtplib.send(
            mail,
            hostname=s.smtp_host,
            port=s.smtp_port,
            username=s.smtp_username or None,
            password=s.smtp_password.get_secret_value() or None,
            use_tls=s.smtp_security == "tls",
            start_tls=s.smtp_security == "starttls",
            tls_context=self._tls if s.smtp_security != "none" else None,
            timeout=s.smtp_timeout_seconds,
        )
