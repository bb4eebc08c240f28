"""Settings every service shares: where Kafka and Postgres are, the workspace."""

from __future__ import annotations

from dataclasses import dataclass
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from quartermaster.settings import Settings, host_port, setting


@dataclass(frozen=True)
class CommonSettings(Settings):
    kafka_bootstrap: str = setting(
        "QM_KAFKA_BOOTSTRAP", "127.0.0.1:9092", "Kafka bootstrap servers (host:port[,host:port])"
    )
    database_url: str = setting(
        "QM_DATABASE_URL",
        "postgresql://qm@127.0.0.1:55432/quartermaster",
        "PostgreSQL URL; each service uses its own schema in it",
    )
    workspace_id: str = setting(
        "QM_WORKSPACE_ID", "default", "The workspace this deployment governs"
    )
    workspace_timezone: str = setting(
        "QM_WORKSPACE_TIMEZONE", "UTC", "IANA time zone whose calendar sets budget periods"
    )
    topic_partitions: int = setting(
        "QM_TOPIC_PARTITIONS", 3, "Partitions for topics this deployment creates"
    )
    log_level: str = setting("QM_LOG_LEVEL", "INFO", "DEBUG, INFO, WARNING or ERROR")

    def problems(self) -> list[tuple[str, str]]:
        out: list[tuple[str, str]] = []
        for server in self.kafka_bootstrap.split(","):
            if host_port(server.strip()) is None:
                out.append(("kafka_bootstrap", f"expected host:port, got {server!r}"))
        if not self.database_url.startswith(("postgresql://", "postgres://")):
            out.append(("database_url", "expected a postgresql:// URL"))
        try:
            ZoneInfo(self.workspace_timezone)
        except (ZoneInfoNotFoundError, ValueError):
            out.append(("workspace_timezone", f"unknown time zone {self.workspace_timezone!r}"))
        if not self.workspace_id.strip():
            out.append(("workspace_id", "must not be empty"))
        if self.topic_partitions < 1:
            out.append(("topic_partitions", "must be at least 1"))
        if self.log_level.upper() not in {"DEBUG", "INFO", "WARNING", "ERROR"}:
            out.append(("log_level", f"unknown level {self.log_level!r}"))
        return out

    @property
    def timezone(self) -> ZoneInfo:
        return ZoneInfo(self.workspace_timezone)
