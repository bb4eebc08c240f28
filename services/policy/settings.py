"""policy's settings (plus the shared ones)."""

from __future__ import annotations

from dataclasses import dataclass

from quartermaster.config import CommonSettings
from quartermaster.credentials import parse_tokens, token_problems
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
    admin_tokens: str = setting(
        "QM_POLICY_ADMIN_TOKENS",
        "",
        "Admin credentials, name:token,... (tokens of 16+ characters; the name is the audit"
        " log's actor). Empty: every admin call is refused",
    )
    reservation_ttl_seconds: float = setting(
        "QM_POLICY_RESERVATION_TTL_SECONDS",
        600.0,
        "How long a reservation holds budget unless the request says; a committed one is"
        " kept this long for its usage to arrive",
    )
    thresholds: str = setting(
        "QM_POLICY_THRESHOLDS",
        "50,80,100",
        "Percentages of a budget whose crossing sends one notification per period",
    )

    @property
    def threshold_percents(self) -> tuple[int, ...]:
        return tuple(sorted({int(p) for p in self.thresholds.split(",") if p.strip()}))

    @property
    def admin_credentials(self) -> dict[str, str]:
        return parse_tokens(self.admin_tokens)

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
        out += token_problems(self.admin_tokens)
        if not 1 <= self.reservation_ttl_seconds <= 86_400:
            out.append(("reservation_ttl_seconds", "must be between 1 and 86400"))
        try:
            percents = self.threshold_percents
            if any(not 1 <= p <= 1000 for p in percents):
                out.append(("thresholds", "each must be between 1 and 1000"))
        except ValueError:
            out.append(
                ("thresholds", f"expected percentages like 50,80,100, got {self.thresholds!r}")
            )
        return out
