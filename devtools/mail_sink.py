"""make run's local SMTP server (aiosmtpd): accepts every message the notifier's e-mail
channel sends and hands it to the Slack stand-in, whose page shows it under "E-mails
received". Nothing is relayed anywhere. Plain SMTP on 127.0.0.1 (the notifier is told
QM_NOTIFIER_SMTP_SECURITY=none for it), for this machine only."""

from __future__ import annotations

import email
from email.message import EmailMessage
from email.policy import default as default_policy
from typing import Any

from aiosmtpd.controller import Controller

from devtools.slack_standin import Mail, SlackStandin


class _Handler:
    def __init__(self, standin: SlackStandin) -> None:
        self._standin = standin

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        mail = email.message_from_bytes(envelope.content, policy=default_policy)
        text = ""
        if isinstance(mail, EmailMessage):
            body = mail.get_body(("plain",))
            text = body.get_content() if isinstance(body, EmailMessage) else ""
        # Appended from the sink's thread: the page only reads the list.
        self._standin.add_mail(Mail(str(envelope.mail_from), list(envelope.rcpt_tos),
                                    str(mail["Subject"] or ""), text))  # fmt: skip
        return "250 Message accepted"


class MailSink:
    """An SMTP server on 127.0.0.1:`port` (its own thread) whose mails show on
    `standin`'s page. `start` raises OSError when the port is taken."""

    def __init__(self, standin: SlackStandin, port: int) -> None:
        self.port = port
        self._controller = Controller(_Handler(standin), hostname="127.0.0.1", port=port)

    def start(self) -> None:
        self._controller.start()

    def stop(self) -> None:
        self._controller.stop()
