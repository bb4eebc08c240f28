"""tls.enabled turns TLS on, not only mounts the Secret: the chart points every
server's QM_TLS_CERT_FILE and QM_TLS_KEY_FILE and every client's QM_TLS_CA_FILE at the
mounted files, and refuses TLS settings that could not work (files that are not
mounted, a client certificate without its key, mutual TLS the release's own clients
can't pass) naming the value to change. test_chart_env.py loads what it renders."""

from __future__ import annotations

from typing import Any

import pytest
from helm_python import HelmRenderError, HelmValuesError

from tests.deploy.chart import manifests, render, settings_configmap

TLS = {"enabled": True, "existingSecret": "qm-tls"}
OWNED = ("QM_TLS_CERT_FILE", "QM_TLS_KEY_FILE", "QM_TLS_CA_FILE")


def _settings(values: dict[str, Any]) -> dict[str, str]:
    data: dict[str, str] = settings_configmap(manifests(render(values)))["data"]
    return data


def test_tls_enabled_points_every_server_and_client_at_the_mounted_files() -> None:
    data = _settings({"tls": TLS})
    assert {k: data[k] for k in OWNED} == {
        "QM_TLS_CERT_FILE": "/etc/quartermaster/tls/tls.crt",
        "QM_TLS_KEY_FILE": "/etc/quartermaster/tls/tls.key",
        "QM_TLS_CA_FILE": "/etc/quartermaster/tls/ca.crt",
    }
    # another Secret layout and mount point
    custom = {**TLS, "mountPath": "/tls/", "certKey": "cert.pem", "keyKey": "key.pem",
              "caKey": "ca.pem"}  # fmt: skip
    data = _settings({"tls": custom})
    assert [data[k] for k in OWNED] == ["/tls/cert.pem", "/tls/key.pem", "/tls/ca.pem"]
    # off: plaintext, as the services' default (a WARNING at their start)
    assert [_settings({})[k] for k in OWNED] == ["", "", ""]


@pytest.mark.parametrize(
    ("values", "message"),
    [
        # the chart's to set: a path of one's own would disagree with the mount
        ({"tls": TLS, "settings": {"QM_TLS_CERT_FILE": "/etc/quartermaster/tls/tls.crt"}},
         r"settings\.QM_TLS_CERT_FILE: the chart sets it from tls"),
        ({"settings": {"QM_TLS_CA_FILE": "/etc/ssl/ca.pem"}},
         r"settings\.QM_TLS_CA_FILE: the chart sets it from tls"),
        # nothing is mounted without tls.enabled
        ({"settings": {"QM_TLS_CLIENT_CA_FILE": "/etc/quartermaster/tls/ca.crt"}},
         r"settings\.QM_TLS_CLIENT_CA_FILE: TLS settings work only with tls\.enabled: true"),
        ({"settings": {"QM_TLS_SERVER_NAME": "qm.internal"}},
         r"settings\.QM_TLS_SERVER_NAME: TLS settings work only with tls\.enabled"),
        # only the tls Secret is mounted
        ({"tls": TLS, "settings": {"QM_TLS_CLIENT_CERT_FILE": "/etc/client.pem",
                                   "QM_TLS_CLIENT_KEY_FILE": "/etc/quartermaster/tls/tls.key"}},
         r"settings\.QM_TLS_CLIENT_CERT_FILE: /etc/client\.pem is not under tls\.mountPath"),
        ({"tls": TLS, "settings": {"QM_TLS_CLIENT_CERT_FILE": "/etc/quartermaster/tls/tls.crt"}},
         r"QM_TLS_CLIENT_CERT_FILE and QM_TLS_CLIENT_KEY_FILE: set both"),
        # mutual TLS refuses the release's own clients unless they have a certificate
        ({"tls": TLS, "services": {"ingest": {"enabled": False}},
          "settings": {"QM_TLS_CLIENT_CA_FILE": "/etc/quartermaster/tls/ca.crt"}},
         r"settings\.QM_TLS_CLIENT_CA_FILE: with mutual TLS every server refuses clients"),
        ({"tls": {"enabled": True}}, r"tls\.existingSecret is required when tls\.enabled"),
    ],
)  # fmt: skip
def test_tls_settings_that_could_not_work_are_refused(values: dict[str, Any], message: str) -> None:
    with pytest.raises(HelmRenderError, match=message):
        render(values)


def test_mutual_tls_is_global_with_the_clients_certificates() -> None:
    mutual = {"QM_TLS_CLIENT_CA_FILE": "/etc/quartermaster/tls/ca.crt",
              "QM_TLS_CLIENT_CERT_FILE": "/etc/quartermaster/tls/tls.crt",
              "QM_TLS_CLIENT_KEY_FILE": "/etc/quartermaster/tls/tls.key"}  # fmt: skip
    values = {"tls": TLS, "settings": mutual, "services": {"ingest": {"enabled": False}}}
    data = _settings(values)
    assert {k: data[k] for k in mutual} == mutual
    assert data["QM_TLS_CERT_FILE"] == "/etc/quartermaster/tls/tls.crt"


def test_the_secret_keys_are_file_names() -> None:
    with pytest.raises(HelmValuesError, match=r"/tls/certKey': '\.\./tls\.crt' does not match"):
        render({"tls": {**TLS, "certKey": "../tls.crt"}})
