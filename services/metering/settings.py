"""metering's settings (plus the shared ones)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from quartermaster.config import CommonSettings
from quartermaster.settings import setting

DEFAULT_PRICES = Path(__file__).resolve().parent / "prices.yaml"


@dataclass(frozen=True)
class MeteringSettings(CommonSettings):
    app_id: str = setting(
        "QM_METERING_APP_ID", "qm-metering", "Consumer group and changelog-topic prefix"
    )
    prices_file: Path = setting("QM_METERING_PRICES", DEFAULT_PRICES, "Price catalog YAML file")
    session_timeout: float = setting(
        "QM_METERING_SESSION_TIMEOUT",
        10.0,
        "Kafka consumer session timeout in seconds (a group join takes ~half of it on tansu)",
    )
    producer_max_batch_size: int = setting(
        "QM_METERING_PRODUCER_MAX_BATCH_SIZE",
        1,
        "Bytes per producer batch; 1 = one record per batch, which tansu needs for exact "
        "table recovery (use 16384 on real Kafka)",
    )

    fetch_max_wait_ms: int = setting(
        "QM_METERING_FETCH_MAX_WAIT_MS",
        20,
        "Longest a consumer fetch waits for data; tansu holds every fetch this long "
        "(real Kafka answers early, so 500 is fine there)",
    )

    def problems(self) -> list[tuple[str, str]]:
        out = super().problems()
        if not self.prices_file.is_file():
            out.append(("prices_file", f"no such file: {self.prices_file}"))
        if not 1.0 <= self.session_timeout <= 300.0:
            out.append(("session_timeout", "must be between 1 and 300 seconds"))
        if self.producer_max_batch_size < 1:
            out.append(("producer_max_batch_size", "must be at least 1"))
        if not 1 <= self.fetch_max_wait_ms <= 30_000:
            out.append(("fetch_max_wait_ms", "must be between 1 and 30000"))
        if not self.app_id.strip():
            out.append(("app_id", "must not be empty"))
        return out
