"""Every port `make run` and its services will listen on, checked before anything
starts: a port taken (another `make run`, another program) had ended the run in a
traceback from pg_ctl ("could not start server / Examine the log output") that named
neither the port nor the setting that moves it.
"""

from __future__ import annotations

import errno
import socket
from collections.abc import Mapping

from services.metering.settings import MeteringSettings
from services.notifier.settings import NotifierSettings
from services.policy.settings import PolicySettings
from services.requests.settings import RequestsSettings


def listening(env: Mapping[str, str], local: Mapping[str, int]) -> dict[str, str]:
    """{setting: host:port} of every address the services will listen on, as `env`
    (the children's environment) says, and the `local` ports of what `make run` starts
    itself ({setting: port}, on 127.0.0.1). Empty settings (not served) are left out."""
    m, p = MeteringSettings.from_env(env), PolicySettings.from_env(env)
    r, n = RequestsSettings.from_env(env), NotifierSettings.from_env(env)
    addrs = {
        "QM_POLICY_ADDR": p.addr, "QM_POLICY_METRICS_ADDR": p.metrics_addr,
        "QM_POLICY_HEALTH_ADDR": p.health_addr,
        "QM_USAGE_API_ADDR": m.api_addr, "QM_USAGE_API_METRICS_ADDR": m.api_metrics_addr,
        "QM_USAGE_API_HEALTH_ADDR": m.api_health_addr,
        "QM_METERING_METRICS_ADDR": m.metrics_addr, "QM_METERING_INGEST_ADDR": m.ingest_addr,
        "QM_REQUESTS_ADDR": r.addr, "QM_REQUESTS_METRICS_ADDR": r.metrics_addr,
        "QM_REQUESTS_HEALTH_ADDR": r.health_addr,
        "QM_NOTIFIER_METRICS_ADDR": n.metrics_addr,
        "QM_NOTIFIER_INTERACTIVITY_ADDR": n.interactivity_addr,
    }  # fmt: skip
    addrs |= {name: f"127.0.0.1:{port}" for name, port in local.items()}
    return {name: addr for name, addr in addrs.items() if addr}


def in_use(addr: str) -> bool:
    """Whether host:port can't be bound now because something listens there."""
    host, _, port = addr.rpartition(":")
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the servers do
        try:
            s.bind((host.strip("[]"), int(port)))
        except OSError as exc:
            return exc.errno == errno.EADDRINUSE
    return False


def taken(addrs: Mapping[str, str]) -> str:
    """What to tell the person when some of `addrs` are in use ("" when none is)."""
    busy = [f"{addr} ({name})" for name, addr in addrs.items() if in_use(addr)]
    if not busy:
        return ""
    first = next(name for name, addr in addrs.items() if in_use(addr))
    return (
        f"make run: in use already (another `make run`, or another program): "
        f"{', '.join(busy)}. Stop it, or move each with its setting, e.g. "
        f"`{first}=<another> make run` (every port and its setting: docs/make-run.md)."
    )
