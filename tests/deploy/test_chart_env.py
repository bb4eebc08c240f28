"""Each container's environment, as the chart renders it (the ConfigMap, its own
variables, its Secrets), loads as its service's settings: what the chart gives is what
the service accepts at start-up, values arrive as set, and with tls.enabled every
server and client is given the mounted TLS files (the files made here, in their place)."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest

from quartermaster.config import CommonSettings
from services.metering.settings import MeteringSettings
from services.notifier.settings import NotifierSettings
from services.policy.settings import PolicySettings
from services.requests.settings import RequestsSettings
from tests.deploy.chart import (
    CASES,
    RELEASE,
    by_kind,
    manifests,
    render,
    settings_configmap,
)
from tests.tlskit import make_pki

LOADERS: dict[str, type[CommonSettings]] = {
    "metering": MeteringSettings,
    "cost-api": MeteringSettings,
    "policy": PolicySettings,
    "requests": RequestsSettings,
    "ingest": MeteringSettings,
    "notifier": NotifierSettings,
}
SECRET = {  # what the Secrets would hold, in each credential's own form
    "QM_DATABASE_URL": "postgresql://qm:pw@db:5432/qm",
    "QM_TOKENS": "ops:admin+reader:" + "x" * 24,
    "QM_NOTIFIER_WEBHOOKS": "ops=https://hooks.example.com/qm",
    "QM_NOTIFIER_WEBHOOK_SECRETS": "whsec_" + "eHh4" * 8,
}
MOUNT = "/etc/quartermaster/tls"


def _tls_files(folder: Path) -> Path:
    """The tls Secret's files (keys tls.crt, tls.key, ca.crt) in `folder`."""
    pki = make_pki(folder / "pki")
    mounted = folder / "mounted"
    mounted.mkdir()
    for key, made in (("tls.crt", pki.server_cert), ("tls.key", pki.server_key),
                      ("ca.crt", pki.ca)):  # fmt: skip
        shutil.copy(made, mounted / key)
    return mounted


def _environment(docs: list[dict[str, Any]], process: str, mounted: Path) -> dict[str, str]:
    configmap = settings_configmap(docs)
    (container,) = by_kind(docs, "Deployment")[f"{RELEASE}-quartermaster-{process}"]["spec"][
        "template"
    ]["spec"]["containers"]
    env = dict(configmap["data"])
    for entry in container["env"]:
        if "value" in entry:
            env[entry["name"]] = entry["value"]
        else:
            env[entry["name"]] = SECRET.get(entry["name"], "x" * 24)
    # a file the pod reads from the tls mount, here from where it was made
    return {k: v.replace(MOUNT, str(mounted)) for k, v in env.items()}


@pytest.mark.parametrize("name", list(CASES))
def test_each_container_environment_loads_as_its_service_settings(
    name: str, tmp_path: Path
) -> None:
    docs = manifests(render(CASES[name]))
    mounted = _tls_files(tmp_path)
    tls = CASES[name].get("tls", {}).get("enabled", False)
    for process, cls in LOADERS.items():
        loaded = cls.from_env(_environment(docs, process, mounted))
        settings = CASES[name].get("settings", {})
        if "QM_WORKSPACE_TIMEZONE" in settings:
            assert loaded.workspace_timezone == settings["QM_WORKSPACE_TIMEZONE"]
        assert loaded.kafka_bootstrap == settings_configmap(docs)["data"]["QM_KAFKA_BOOTSTRAP"]
        # tls.enabled turns TLS on: servers serve the mounted pair, clients trust the CA
        assert (loaded.server_tls is not None, loaded.client_tls is not None) == (tls, tls), (
            name,
            process,
        )
