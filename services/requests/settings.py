"""requests' settings (plus the shared ones): variables QM_REQUESTS_<FIELD>."""

from __future__ import annotations

from datetime import timedelta
from typing import Annotated, Literal

from pydantic import AfterValidator, Field, model_validator
from pydantic_settings import SettingsConfigDict

from quartermaster.config import CommonSettings
from quartermaster.settings import HostPort, HostPortOrEmpty
from services.requests.routing import StepRule, parse_rules
from services.requests.timing import Timing


def _valid_rules(spec: str) -> str:
    parse_rules(spec)  # ValueError names the bad part
    return spec


class RequestsSettings(CommonSettings):
    model_config = SettingsConfigDict(env_prefix="QM_REQUESTS_")

    addr: HostPort = "127.0.0.1:50053"
    """Where RequestService listens (gRPC, with health and reflection)"""
    metrics_addr: HostPortOrEmpty = ""
    """Where it serves its Prometheus metrics (/metrics), e.g. 0.0.0.0:9466 (the
    chart's); empty: none"""
    health_addr: HostPortOrEmpty = ""
    """Where a replica serves the gRPC health service alone, in plaintext (the kubelet's
    gRPC probes can't speak TLS), e.g. 0.0.0.0:9476 (the chart's); empty: none"""
    grace_seconds: float = Field(5.0, ge=0, le=300)
    """How long calls in flight may finish at shutdown"""
    policy_addr: HostPort = "127.0.0.1:50051"
    """policy's gRPC address: its DirectoryService routes requests, GetBudget gives the
    requester's standing, ListLimits confirms a grant's override"""
    usage_api_addr: HostPort = "127.0.0.1:50052"
    """metering's Cost API: the requester's spend by product and model, and the last 7 days'"""
    client_token: str = ""
    """The bearer token this service presents to policy and metering (role reader; one of
    their QM_TOKENS)"""
    inputs_deadline_seconds: float = Field(2.0, gt=0, le=60)
    """How long a create waits for each directory, budget and Cost API answer"""
    workspace_admins: str = ""
    """Comma-separated user ids who approve the workspace_admins step (empty: only the
    fallback approver, else such requests are refused)"""
    rules: Annotated[str, AfterValidator(_valid_rules)] = (
        "manager:1:0,group_admins:1:50,workspace_admins:1:500"
    )
    """Approval steps by amount, source:required:above_credits,... (sources: manager,
    group_admins, workspace_admins); a step applies to requests above its credits"""
    fallback_approver: str = ""
    """Who approves a step nobody else eligible can (never the requester); empty: such a
    request is refused"""
    remind_after_seconds: float = Field(86_400.0, gt=0, le=30 * 86_400)
    """A step's approvers are reminded this long after it started"""
    escalate_after_seconds: float = Field(172_800.0, gt=0, le=30 * 86_400)
    """A step escalates up its chain this long after it started (or last escalated)"""
    pending_seconds: float = Field(604_800.0, gt=0, le=366 * 86_400)
    """A request nobody decided expires this long after it was made"""
    relay_batch: int = Field(100, ge=1, le=10_000)
    """Outbox events the relay publishes at once"""
    relay_poll_seconds: float = Field(0.2, ge=0.01, le=60)
    """How often the relay looks for new outbox events when it found none"""
    reconcile_seconds: float = Field(5.0, ge=0.05, le=3600)
    """How often the reconciler looks for reminders, escalations, expiries and ends due"""
    confirm_retry_seconds: float = Field(60.0, ge=1, le=86_400)
    """A grant policy has not confirmed installed (or removed) this long after its change
    has its event published again, and again after as long, until policy confirms"""
    relay_hold: Literal["", "after_read", "after_publish"] = ""
    """Testing only: the relay stops for good after reading (or after publishing) its
    first batch, so a kill test can SIGKILL it in that window"""

    @model_validator(mode="after")
    def _remind_before_escalating(self) -> RequestsSettings:
        if self.remind_after_seconds > self.escalate_after_seconds:
            raise ValueError(
                "QM_REQUESTS_REMIND_AFTER_SECONDS must not be above"
                " QM_REQUESTS_ESCALATE_AFTER_SECONDS"
            )
        return self

    @property
    def workspace_admin_ids(self) -> tuple[str, ...]:
        """`workspace_admins` as user ids."""
        return tuple(a.strip() for a in self.workspace_admins.split(",") if a.strip())

    @property
    def step_rules(self) -> tuple[StepRule, ...]:
        """`rules` parsed, ordered by amount."""
        return parse_rules(self.rules)

    @property
    def timing(self) -> Timing:
        """The reminder, escalation and expiry delays."""
        return Timing(
            timedelta(seconds=self.remind_after_seconds),
            timedelta(seconds=self.escalate_after_seconds),
            timedelta(seconds=self.pending_seconds),
        )
