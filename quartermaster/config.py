"""Settings every service shares: where Kafka and Postgres are, the workspace."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, ClassVar
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import AfterValidator, Field

from quartermaster.settings import HostPorts, NonBlank, Settings
from quartermaster.tokens import Grant, TokenSpec, parse_tokens

_OLD_TOKENS = (
    "replaced by QM_TOKENS, one list for every service: name:role[+role]:token,... "
    "(an admin token of before is name:admin:token; one that loads prices, "
    "name:prices:token; see docs/security.md)"
)


def _time_zone(value: str) -> str:
    try:
        ZoneInfo(value)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(f"unknown time zone {value!r}") from None
    return value


def _postgres_url(value: str) -> str:
    if not value.startswith(("postgresql://", "postgres://")):
        raise ValueError("expected a postgresql:// URL")
    return value


def _log_level(value: str) -> str:
    if value.upper() not in {"DEBUG", "INFO", "WARNING", "ERROR"}:
        raise ValueError(f"unknown level {value!r}")
    return value.upper()


class CommonSettings(Settings):
    """Read by every service. Its variables are named in full (`validation_alias`), as
    services that extend it read their own under a prefix of their own."""

    kafka_bootstrap: HostPorts = Field("127.0.0.1:9092", validation_alias="QM_KAFKA_BOOTSTRAP")
    """Kafka bootstrap servers (host:port[,host:port])"""
    database_url: Annotated[str, AfterValidator(_postgres_url)] = Field(
        "postgresql://qm@127.0.0.1:55432/quartermaster", validation_alias="QM_DATABASE_URL"
    )
    """PostgreSQL URL; each service uses its own schema in it"""
    workspace_id: NonBlank = Field("default", validation_alias="QM_WORKSPACE_ID")
    """The workspace this deployment governs"""
    workspace_timezone: Annotated[str, AfterValidator(_time_zone)] = Field(
        "UTC", validation_alias="QM_WORKSPACE_TIMEZONE"
    )
    """IANA time zone whose calendar sets budget periods"""
    topic_partitions: int = Field(3, ge=1, validation_alias="QM_TOPIC_PARTITIONS")
    """Partitions for topics this deployment creates"""
    log_level: Annotated[str, AfterValidator(_log_level)] = Field(
        "INFO", validation_alias="QM_LOG_LEVEL"
    )
    """DEBUG, INFO, WARNING or ERROR"""

    tokens: TokenSpec = Field("", validation_alias="QM_TOKENS")
    """Credentials every gRPC server accepts, name:role[+role]:token,... (roles gateway,
    reader, admin, prices; tokens of 16+ characters; the name is the audit actor; see
    docs/security.md). Empty: every call but health is refused"""

    removed: ClassVar[Mapping[str, str]] = {
        "QM_POLICY_ADMIN_TOKENS": _OLD_TOKENS,
        "QM_METERING_ADMIN_TOKENS": _OLD_TOKENS,
    }

    @property
    def grants(self) -> dict[str, Grant]:
        """{token: Grant} from QM_TOKENS."""
        return parse_tokens(self.tokens)

    @property
    def timezone(self) -> ZoneInfo:
        """The workspace's time zone."""
        return ZoneInfo(self.workspace_timezone)
