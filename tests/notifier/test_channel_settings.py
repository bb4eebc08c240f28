"""The channels' settings: every bad variable named, secrets never shown, and the
three classes combine into one (as the notifier's settings class can inherit them)."""

from __future__ import annotations

import base64

import pytest

from quartermaster.settings import SettingsError
from services.notifier.email import EmailSettings
from services.notifier.interactivity import InteractivitySettings
from services.notifier.webhooks import WebhookSettings

SECRET = "whsec_" + base64.b64encode(b"a-webhook-secret-of-32-bytes-long").decode()


def problems(cls: type[EmailSettings | WebhookSettings | InteractivitySettings], **env: str) -> str:
    with pytest.raises(SettingsError) as err:
        cls.from_env(env)
    return str(err.value)


def test_bad_values_are_named_by_their_variables() -> None:
    email = problems(
        EmailSettings,
        QM_NOTIFIER_SMTP_PORT="0",
        QM_NOTIFIER_SMTP_SECURITY="ssl",
        QM_NOTIFIER_SMTP_CA_FILE="/nonexistent/ca.pem",
    )
    for var in ("QM_NOTIFIER_SMTP_PORT", "QM_NOTIFIER_SMTP_SECURITY", "QM_NOTIFIER_SMTP_CA_FILE"):
        assert var in email
    hooks = problems(WebhookSettings, QM_NOTIFIER_WEBHOOK_SECRETS=f"{SECRET},whsec_%%leaked%%")
    assert "QM_NOTIFIER_WEBHOOK_SECRETS: secret 2 is not whsec_<base64 of 16+ bytes>" in hooks
    assert "leaked" not in hooks
    addr = problems(InteractivitySettings, QM_NOTIFIER_INTERACTIVITY_ADDR="nowhere")
    assert "QM_NOTIFIER_INTERACTIVITY_ADDR: expected host:port, got 'nowhere'" in addr
    socket = problems(InteractivitySettings, QM_NOTIFIER_SLACK_SOCKET_MODE="true")
    assert "QM_NOTIFIER_SLACK_APP_TOKEN is not an app-level token" in socket


def test_secrets_stay_out_of_repr_and_the_classes_combine() -> None:
    class Combined(EmailSettings, WebhookSettings, InteractivitySettings):
        pass

    settings = Combined.from_env(
        {
            "QM_NOTIFIER_SMTP_HOST": "mail.example.test",
            "QM_NOTIFIER_SMTP_PASSWORD": "smtp-password-123",
            "QM_NOTIFIER_WEBHOOK_SECRETS": SECRET,
            "QM_NOTIFIER_SLACK_SIGNING_SECRET": "slack-signing-secret-456",
            "QM_NOTIFIER_DELEGATE_TOKEN": "delegate-token-789",
        }
    )
    assert settings.smtp_host == "mail.example.test"
    assert settings.webhook_secrets.get_secret_value() == SECRET
    assert settings.slack_signing_secret.get_secret_value() == "slack-signing-secret-456"
    shown = repr(settings) + str(settings) + settings.model_dump_json()
    for secret in ("smtp-password-123", SECRET, "slack-signing-secret-456", "delegate-token-789"):
        assert secret not in shown
