"""make run's notifier side: the local Slack stand-in and SMTP server it starts when
no Slack token is set, and the demo's credit request (carol asks; alice, her manager,
approves it by clicking on the stand-in's page)."""

from __future__ import annotations

import secrets

from devtools import simulator
from devtools.mail_sink import MailSink
from devtools.slack_standin import SlackStandin


def slack_id(user_id: str) -> str:
    """A demo person's Slack user id at the stand-in (alice → UALICE)."""
    return f"U{user_id.upper()}"


async def start_standin(
    standin_port: int, smtp_port: int, clicks_url: str, env: dict[str, str], policy_addr: str
) -> tuple[SlackStandin | None, MailSink | None]:
    """Without a Slack bot token or base URL: the local Slack stand-in, started on
    standin_port in this process, knowing the demo people's e-mails, its
    buttons posting signed clicks to the notifier's interactivity endpoint, and (when
    no SMTP server is configured) the local SMTP server on smtp_port whose
    mails the stand-in's page shows; the notifier is pointed at both, telling people
    by Slack and e-mail unless QM_NOTIFIER_DEFAULT_CHANNELS says otherwise (`env` is
    changed). (None, None) when Slack is configured."""
    env.setdefault("QM_DIRECTORY_ADDR", policy_addr)
    if env.get("QM_NOTIFIER_SLACK_BOT_TOKEN") or env.get("QM_NOTIFIER_SLACK_BASE_URL"):
        return None, None
    secret = env.setdefault("QM_NOTIFIER_SLACK_SIGNING_SECRET", secrets.token_hex(16))
    clicks = env.setdefault("QM_NOTIFIER_INTERACTIVITY_ADDR", "127.0.0.1:8093")
    local = clicks.replace("0.0.0.0", "127.0.0.1")
    standin = SlackStandin(secret, clicks_url or f"http://{local}/slack/interactivity")
    for p in simulator.PERSONAS:
        standin.add_user(f"{p.user_id}@example.com", slack_id(p.user_id))
    await standin.start(port=standin_port)
    env["QM_NOTIFIER_SLACK_BASE_URL"] = standin.api_url
    sink = None
    if not env.get("QM_NOTIFIER_SMTP_HOST"):
        sink = MailSink(standin, smtp_port)
        sink.start()
        env.update(QM_NOTIFIER_SMTP_HOST="127.0.0.1", QM_NOTIFIER_SMTP_PORT=str(sink.port),
                   QM_NOTIFIER_SMTP_SECURITY="none")  # fmt: skip
        env.setdefault("QM_NOTIFIER_DEFAULT_CHANNELS", "both")
    return standin, sink
