"""policy's settings (plus the shared ones)."""

from __future__ import annotations

from dataclasses import dataclass

from quartermaster.config import CommonSettings
from quartermaster.settings import host_port, setting


@dataclass(frozen=True)
class PolicySettings(CommonSettings):
    addr: str = setting("QM_POLICY_ADDR", "127.0.0.1:50051", "Where the policy gRPC server listens")
    refresh_seconds: float = setting(
        "QM_POLICY_REFRESH_SECONDS",
        1.0,
        "Limits are re-read at once on NOTIFY, and this often anyway",
    )
    warn_percent: int = setting(
        "QM_POLICY_WARN_PERCENT", 80, "Share of the limit from which Check answers WARN"
    )
    grace_seconds: float = setting(
        "QM_POLICY_GRACE_SECONDS", 5.0, "How long in-flight calls may finish on shutdown"
    )

    def problems(self) -> list[tuple[str, str]]:
        out = super().problems()
        if host_port(self.addr) is None:
            out.append(("addr", f"expected host:port, got {self.addr!r}"))
        if not 0.05 <= self.refresh_seconds <= 3600:
            out.append(("refresh_seconds", "must be between 0.05 and 3600"))
        if not 1 <= self.warn_percent <= 100:
            out.append(("warn_percent", "must be between 1 and 100"))
        if not 0 <= self.grace_seconds <= 300:
            out.append(("grace_seconds", "must be between 0 and 300"))
        return out
