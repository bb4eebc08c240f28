"""policy's settings (plus the shared ones): variables QM_POLICY_<FIELD>."""

from __future__ import annotations

from typing import Annotated

from pydantic import AfterValidator, Field
from pydantic_settings import SettingsConfigDict

from quartermaster.config import CommonSettings
from quartermaster.settings import HostPort, HostPortOrEmpty


def _percents(spec: str) -> tuple[int, ...]:
    return tuple(sorted({int(p) for p in spec.split(",") if p.strip()}))


def _valid_percents(spec: str) -> str:
    try:
        percents = _percents(spec)
    except ValueError:
        raise ValueError(f"expected percentages like 50,80,100, got {spec!r}") from None
    if any(not 1 <= p <= 1000 for p in percents):
        raise ValueError("each must be between 1 and 1000")
    return spec


class PolicySettings(CommonSettings):
    model_config = SettingsConfigDict(env_prefix="QM_POLICY_")

    addr: HostPort = "127.0.0.1:50051"
    """Where the policy gRPC server listens"""
    metrics_addr: HostPortOrEmpty = ""
    """Where a replica serves its Prometheus metrics (/metrics), e.g. 0.0.0.0:9465 (the
    chart's); empty: none (so replicas side by side on one host don't collide)"""
    health_addr: HostPortOrEmpty = ""
    """Where a replica serves the gRPC health service alone, in plaintext (the kubelet's
    gRPC probes can't speak TLS), e.g. 0.0.0.0:9475 (the chart's); empty: none"""
    refresh_seconds: float = Field(1.0, ge=0.05, le=3600)
    """Limits are re-read at once on NOTIFY, and this often anyway"""
    warn_percent: int = Field(80, ge=1, le=100)
    """Share of the limit from which Check answers WARN"""
    grace_seconds: float = Field(5.0, ge=0, le=300)
    """How long in-flight calls may finish on shutdown"""
    reservation_ttl_seconds: float = Field(600.0, ge=1, le=86_400)
    """How long a reservation holds budget unless the request says; a committed one is
    kept this long for its usage to arrive"""
    max_open_reservations: int = Field(1_000, ge=1, le=1_000_000)
    """Open reservations one user may have; a Reserve past them is refused
    (RESOURCE_EXHAUSTED naming the user and the count), so one caller cannot make a
    user's Reserves, nor their pools', read an unbounded number of holds"""
    totals_check_seconds: float = Field(5.0, ge=0.1, le=3600)
    """How often the totals topic is checked for having been recreated (partitions
    changed, end offsets gone back); when it was, the replica stops answering
    (docs/operations.md, "Readiness")"""
    thresholds: Annotated[str, AfterValidator(_valid_percents)] = "50,80,100"
    """Percentages of a budget whose crossing sends one notification per period"""

    @property
    def threshold_percents(self) -> tuple[int, ...]:
        """`thresholds` as sorted distinct whole percentages."""
        return _percents(self.thresholds)
