"""notifier's settings (plus the shared ones): variables QM_NOTIFIER_<FIELD>. The
channels' own classes (e-mail, webhooks, Slack interactivity) are combined in, so one
object is read and checked at start."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, SecretStr
from pydantic_settings import SettingsConfigDict

from quartermaster.config import CommonSettings
from quartermaster.settings import HostPort, HostPortOrEmpty
from services.notifier.email import EmailSettings
from services.notifier.interactivity import InteractivitySettings
from services.notifier.webhooks import WebhookSettings


class NotifierSettings(CommonSettings, EmailSettings, WebhookSettings, InteractivitySettings):
    model_config = SettingsConfigDict(env_prefix="QM_NOTIFIER_")

    slack_bot_token: SecretStr = SecretStr("")
    """Slack bot token (xoxb-...). Empty: messages go to the local Slack stand-in at
    QM_NOTIFIER_SLACK_BASE_URL (`make run` starts one), never to Slack"""
    slack_base_url: str = ""
    """Slack Web API base URL; empty: https://slack.com/api/ (with a bot token). The
    local stand-in's URL, e.g. http://127.0.0.1:8787/api/, for development and tests"""
    slack_signing_secret: SecretStr = SecretStr("")
    """Slack app signing secret, which button clicks are checked against (the stand-in
    signs its clicks with the same one); empty: no interactivity endpoint (unless Socket
    Mode is on)"""
    slack_pace_seconds: float = Field(1.0, ge=0, le=60)
    """Least time between two chat.postMessage calls to one Slack channel (Slack allows
    about one a second per channel); a 429 is waited out besides"""
    default_channels: Literal["slack", "email", "both"] = "slack"
    """The workspace default: how a person without a preference of their own is told
    (slack, email or both; `python -m services.notifier.cli preferences` sets one's own)"""
    metrics_addr: HostPortOrEmpty = ""
    """Where the notifier serves its Prometheus metrics (/metrics) and its probes'
    /livez and /healthz, e.g. 0.0.0.0:9467 (`make run`'s port); empty: none"""
    digest_hour: int = Field(8, ge=0, le=23)
    """Hour (workspace time zone) of managers' daily digest, for those who chose one"""
    directory_addr: HostPort = Field("127.0.0.1:50051", validation_alias="QM_DIRECTORY_ADDR")
    """policy's DirectoryService, where people's Slack ids, e-mails and managers are"""
    directory_token: str = Field("", validation_alias="QM_DIRECTORY_TOKEN")
    """Bearer token sent to policy's DirectoryService (role reader)"""
    usage_api_addr: HostPortOrEmpty = ""
    """The Cost API (metering's UsageService), asked what drove a person's spend for
    their threshold messages (top product and model; with QM_DIRECTORY_TOKEN, role
    reader); empty: those messages give the numbers only"""
    group_id: str = "qm-notifier"
    """Kafka consumer group the replicas share the intents and request events in"""
    session_timeout_seconds: int = Field(10, ge=2, le=300)
    """Kafka group session timeout: a replica that stopped answering loses its
    partitions to the others this long after"""
    senders: int = Field(4, ge=1, le=256)
    """Deliveries one replica sends at once"""
    claim_seconds: float = Field(30.0, ge=0.5, le=3600)
    """How long a claimed delivery is a sender's; past it the reconciler hands it on"""
    poll_seconds: float = Field(0.2, ge=0.01, le=60)
    """How often an idle sender looks for due deliveries"""
    reconcile_seconds: float = Field(5.0, ge=0.05, le=3600)
    """How often expired claims are handed back"""
    max_attempts: int = Field(8, ge=1, le=100)
    """Attempts before a delivery that keeps failing transiently is marked failed"""
    ask_url: str = ""
    """Link in messages where a person asks for more credits (empty: the message names the
    requests CLI command that asks)"""
    hold_after_send: bool = False
    """Testing only: a sender stops for good after the receiver accepted its first
    message and before recording it, so a kill test can SIGKILL it in that window"""
