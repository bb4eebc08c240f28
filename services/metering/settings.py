"""metering's settings (plus the shared ones)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from quartermaster.config import CommonSettings
from quartermaster.credentials import parse_tokens, token_problems
from quartermaster.settings import host_port, setting

DEFAULT_PRICES = Path(__file__).resolve().parent / "prices.yaml"


@dataclass(frozen=True)
class MeteringSettings(CommonSettings):
    app_id: str = setting(
        "QM_METERING_APP_ID", "qm-metering", "Consumer group; also names its offsets in Postgres"
    )
    prices_file: Path = setting(
        "QM_METERING_PRICES",
        DEFAULT_PRICES,
        "Price catalog (YAML or CSV) that seeds an empty catalog; after that, load prices with"
        " the CLI's `prices load`",
    )
    prices_poll_seconds: float = setting(
        "QM_METERING_PRICES_POLL_SECONDS",
        2.0,
        "How often a worker looks for a new price catalog revision",
    )
    metrics_addr: str = setting(
        "QM_METERING_METRICS_ADDR",
        "127.0.0.1:9464",
        "Where a worker serves its Prometheus metrics (/metrics); empty: none",
    )
    admin_tokens: str = setting(
        "QM_METERING_ADMIN_TOKENS",
        "",
        "Credentials that may load prices, name:token,... (tokens of 16+ characters; the name"
        " is kept with the revision). Empty: every load is refused",
    )
    data_dir: Path = setting(
        "QM_METERING_DATA_DIR",
        Path(".run/faust"),
        "Where faust keeps its small local files (under <dir>/<app id>); state is in Postgres",
    )
    session_timeout: float = setting(
        "QM_METERING_SESSION_TIMEOUT",
        10.0,
        "Kafka consumer session timeout in seconds (a group join takes ~half of it on tansu)",
    )
    batch_max: int = setting(
        "QM_METERING_BATCH_MAX", 5000, "Most records counted in one Postgres transaction"
    )
    batch_within: float = setting(
        "QM_METERING_BATCH_WITHIN", 0.05, "Longest wait (s) to fill a batch before counting it"
    )
    dedupe_hours: int = setting(
        "QM_METERING_DEDUPE_HOURS", 24, "An event_id seen again within this many hours counts once"
    )
    max_event_age_days: int = setting(
        "QM_METERING_MAX_EVENT_AGE_DAYS",
        35,
        "Events older than this go to the DLQ (late events younger count in their period)",
    )
    dlq_window: int = setting(
        "QM_METERING_DLQ_WINDOW", 1000, "Recent records the DLQ limit looks at"
    )
    dlq_max_ratio: float = setting(
        "QM_METERING_DLQ_MAX_RATIO",
        0.5,
        "Share of invalid recent records above which metering pauses instead of DLQ-ing",
    )
    dlq_min_invalid: int = setting(
        "QM_METERING_DLQ_MIN_INVALID", 100, "Invalid records needed before the limit can trip"
    )
    dlq_pause_seconds: float = setting(
        "QM_METERING_DLQ_PAUSE_SECONDS", 30.0, "How often a paused worker looks again"
    )

    fetch_max_wait_ms: int = setting(
        "QM_METERING_FETCH_MAX_WAIT_MS",
        20,
        "Longest a consumer fetch waits for data; tansu holds every fetch this long "
        "(real Kafka answers early, so 500 is fine there)",
    )

    api_addr: str = setting(
        "QM_USAGE_API_ADDR", "127.0.0.1:50052", "Where the Cost API (UsageService) listens"
    )

    burn_window_minutes: int = setting(
        "QM_METERING_BURN_WINDOW_MINUTES", 10, "Minutes over which a user's burn rate is taken"
    )
    burn_multiple: float = setting(
        "QM_METERING_BURN_MULTIPLE", 5.0, "Alert when a user spends this many times their usual"
    )
    burn_min_credits_per_hour: int = setting(
        "QM_METERING_BURN_MIN_CREDITS_PER_HOUR", 5, "...and at least this many credits an hour"
    )
    burn_absolute_credits_per_hour: int = setting(
        "QM_METERING_BURN_ABSOLUTE_CREDITS_PER_HOUR",
        50,
        "Alert whenever a user spends this many credits an hour",
    )
    burn_half_life_minutes: float = setting(
        "QM_METERING_BURN_HALF_LIFE_MINUTES", 360.0, "How fast a user's usual rate forgets"
    )
    directory_addr: str = setting(
        "QM_DIRECTORY_ADDR",
        "127.0.0.1:50051",
        "policy's DirectoryService, which the Cost API asks for group members",
    )
    compact_seconds: float = setting(
        "QM_USAGE_COMPACT_SECONDS",
        60.0,
        "How often the Cost API recomputes daily rollups from hourly ones",
    )

    @property
    def admin_credentials(self) -> dict[str, str]:
        return parse_tokens(self.admin_tokens)

    def problems(self) -> list[tuple[str, str]]:
        out = super().problems()
        if not self.prices_file.is_file():
            out.append(("prices_file", f"no such file: {self.prices_file}"))
        if self.metrics_addr and host_port(self.metrics_addr) is None:
            out.append(("metrics_addr", f"expected host:port or empty, got {self.metrics_addr!r}"))
        if not 0.1 <= self.prices_poll_seconds <= 3600:
            out.append(("prices_poll_seconds", "must be between 0.1 and 3600"))
        out += token_problems(self.admin_tokens)
        if not 1.0 <= self.session_timeout <= 300.0:
            out.append(("session_timeout", "must be between 1 and 300 seconds"))
        if not 1 <= self.batch_max <= 100_000:
            out.append(("batch_max", "must be between 1 and 100000"))
        if not 0.001 <= self.batch_within <= 10:
            out.append(("batch_within", "must be between 0.001 and 10 seconds"))
        if not 1 <= self.dedupe_hours <= 24 * 14:
            out.append(("dedupe_hours", "must be between 1 and 336"))
        if not 1 <= self.max_event_age_days <= 400:
            out.append(("max_event_age_days", "must be between 1 and 400"))
        if self.dlq_window < 1:
            out.append(("dlq_window", "must be at least 1"))
        if not 0 < self.dlq_max_ratio <= 1:
            out.append(("dlq_max_ratio", "must be above 0 and at most 1"))
        if self.dlq_min_invalid < 1:
            out.append(("dlq_min_invalid", "must be at least 1"))
        if not 0.1 <= self.dlq_pause_seconds <= 3600:
            out.append(("dlq_pause_seconds", "must be between 0.1 and 3600"))
        if not 1 <= self.fetch_max_wait_ms <= 30_000:
            out.append(("fetch_max_wait_ms", "must be between 1 and 30000"))
        if not 1 <= self.burn_window_minutes <= 1440:
            out.append(("burn_window_minutes", "must be between 1 and 1440"))
        if self.burn_multiple <= 1:
            out.append(("burn_multiple", "must be above 1"))
        if self.burn_min_credits_per_hour < 0 or self.burn_absolute_credits_per_hour < 1:
            out.append(("burn_absolute_credits_per_hour", "must be at least 1 (min at least 0)"))
        if self.burn_half_life_minutes < 1:
            out.append(("burn_half_life_minutes", "must be at least 1"))
        if not 1 <= self.compact_seconds <= 86_400:
            out.append(("compact_seconds", "must be between 1 and 86400"))
        if host_port(self.directory_addr) is None:
            out.append(("directory_addr", f"expected host:port, got {self.directory_addr!r}"))
        if host_port(self.api_addr) is None:
            out.append(("api_addr", f"expected host:port, got {self.api_addr!r}"))
        if not self.app_id.strip():
            out.append(("app_id", "must not be empty"))
        return out
