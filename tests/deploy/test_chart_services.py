"""The chart's notifier and HTTP ingest beyond what every service gets (test_chart.py):
what would leave one unable to work is refused at render, naming the value; the Slack
interactivity endpoint is a Service port of its own; the ingest over HTTPS is probed
and scraped over HTTPS; every service is scraped; and with TLS the gRPC services are
probed on their plaintext health port."""

from __future__ import annotations

from typing import Any

import kubernetes_validate
import pytest
from helm_python import HelmRenderError

from tests.deploy.chart import (
    KUBE_VERSIONS,
    PRODUCTION,
    RELEASE,
    by_kind,
    load_values,
    manifests,
    render,
)


def _containers(deploy: dict[str, Any]) -> list[dict[str, Any]]:
    containers: list[dict[str, Any]] = deploy["spec"]["template"]["spec"]["containers"]
    return containers


SLACK = {"env": "QM_NOTIFIER_SLACK_BOT_TOKEN", "secretKey": "slack-bot-token"}
SIGNING = {"env": "QM_NOTIFIER_SLACK_SIGNING_SECRET", "secretKey": "slack-signing-secret"}
CLICKS = {"enabled": True, "number": 8093, "env": "QM_NOTIFIER_INTERACTIVITY_ADDR"}
TLS = {"enabled": True, "existingSecret": "qm-tls"}
MUTUAL = {"QM_TLS_CLIENT_CA_FILE": "/etc/quartermaster/tls/ca.crt",
          "QM_TLS_CLIENT_CERT_FILE": "/etc/quartermaster/tls/tls.crt",
          "QM_TLS_CLIENT_KEY_FILE": "/etc/quartermaster/tls/tls.key"}  # fmt: skip


@pytest.mark.parametrize(
    ("values", "message"),
    [
        # it exits at start without one: refused here, not found in a crash loop
        ({"services": {"notifier": {"secretEnv": []}}},
         r"services\.notifier: the notifier can't start without QM_NOTIFIER_SLACK_BOT_TOKEN"),
        ({"services": {"notifier": {"interactivity": CLICKS}}},
         r"interactivity\.enabled: the endpoint exists only with QM_NOTIFIER_SLACK_SIGNING_SECRET"),
        ({"services": {"notifier": {"interactivity": CLICKS, "secretEnv": [SLACK, SIGNING]}},
          "settings": {"QM_NOTIFIER_SLACK_SOCKET_MODE": "true"}},
         r"interactivity\.enabled and settings\.QM_NOTIFIER_SLACK_SOCKET_MODE"),
        # a consumer of the notification and request topics, as metering is of usage
        ({"topics": {"partitions": 2}, "services": {"notifier": {"replicas": 3}}},
         r"services\.notifier\.replicas \(3\) is more than topics\.partitions \(2\)"),
        # the kubelet's probes have no client certificate
        ({"tls": TLS, "settings": MUTUAL},
         r"services\.ingest: with settings\.QM_TLS_CLIENT_CA_FILE"),
    ],
)  # fmt: skip
def test_a_notifier_or_ingest_that_could_not_work_is_refused(
    values: dict[str, Any], message: str
) -> None:
    with pytest.raises(HelmRenderError, match=message):
        render(values)


def test_a_notifier_on_a_stand_in_needs_no_bot_token() -> None:
    values = {
        "services": {"notifier": {"secretEnv": []}},
        "settings": {"QM_NOTIFIER_SLACK_BASE_URL": "http://slack-standin:8787/api/"},
    }
    assert f"{RELEASE}-quartermaster-notifier" in by_kind(manifests(render(values)), "Deployment")


def test_the_slack_interactivity_endpoint_is_a_service_port_of_its_own() -> None:
    name = f"{RELEASE}-quartermaster-notifier"
    # Off (the default): the notifier takes no connections but Prometheus'
    docs = manifests(render())
    assert name not in by_kind(docs, "Service")
    (ingress,) = by_kind(docs, "NetworkPolicy")[name]["spec"]["ingress"]
    assert ingress["ports"] == [{"port": 9467, "protocol": "TCP"}]
    # On (production.yaml): a Service for the ingress controller, ready once bound
    docs = manifests(render(load_values(PRODUCTION)))
    service = by_kind(docs, "Service")[name]
    assert service["spec"]["ports"] == [{"name": "interactivity", "port": 8093,
        "targetPort": "interactivity", "protocol": "TCP", "appProtocol": "http"}]  # fmt: skip
    (container,) = _containers(by_kind(docs, "Deployment")[name])
    assert {"name": "interactivity", "containerPort": 8093, "protocol": "TCP"} in container["ports"]
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["QM_NOTIFIER_INTERACTIVITY_ADDR"] == "0.0.0.0:8093"
    # Ready once started (the endpoint is bound before the loops start) and PostgreSQL answers
    assert container["readinessProbe"]["httpGet"] == {"path": "/healthz", "port": "metrics"}
    assert container["livenessProbe"]["httpGet"] == {"path": "/livez", "port": "metrics"}
    metrics, clicks = by_kind(docs, "NetworkPolicy")[name]["spec"]["ingress"]
    assert clicks["ports"] == [{"port": 8093, "protocol": "TCP"}]
    nginx = {"kubernetes.io/metadata.name": "ingress-nginx"}
    assert clicks["from"] == [{"namespaceSelector": {"matchLabels": nginx}}]
    assert metrics["from"] == load_values(PRODUCTION)["networkPolicy"]["metricsFrom"]


def test_the_ingest_over_https_is_probed_and_scraped_over_https() -> None:
    values = {"tls": TLS, "podMonitor": {"enabled": True, "tlsConfig": {"serverName": "x"}}}
    docs = manifests(render(values))
    name = f"{RELEASE}-quartermaster-ingest"
    (container,) = _containers(by_kind(docs, "Deployment")[name])
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        assert container[probe]["httpGet"]["scheme"] == "HTTPS", probe
    (endpoint,) = by_kind(docs, "PodMonitor")[name]["spec"]["podMetricsEndpoints"]
    assert (endpoint["scheme"], endpoint["tlsConfig"]) == ("https", {"serverName": "x"})
    assert by_kind(docs, "Service")[name]["spec"]["ports"][0]["appProtocol"] == "https"
    # Only the ingest's port speaks TLS: the worker's and the notifier's /metrics do not
    for other in ("metering", "notifier"):
        (c,) = _containers(by_kind(docs, "Deployment")[f"{RELEASE}-quartermaster-{other}"])
        assert "scheme" not in c["livenessProbe"]["httpGet"], other


def test_every_service_is_scraped_at_its_metrics_port() -> None:
    docs = manifests(render(load_values(PRODUCTION)))
    monitors = by_kind(docs, "PodMonitor")
    for name, deploy in by_kind(docs, "Deployment").items():
        (endpoint,) = monitors[name]["spec"]["podMetricsEndpoints"]
        assert endpoint["path"] == "/metrics", name
        assert endpoint["port"] in {p["name"] for p in _containers(deploy)[0]["ports"]}, name


@pytest.mark.suite  # kubernetes-validate: a few seconds
def test_with_tls_the_grpc_services_are_probed_in_plaintext_on_their_health_port() -> None:
    """The kubelet's gRPC probes speak no TLS: with TLS on (mutual too) every
    gRPC probe asks the plaintext health-only port, which only probesFrom opens beyond
    the node (the kubelet's traffic is always let through), and all of it is valid."""
    nodes = [{"ipBlock": {"cidr": "10.0.0.0/16"}}]
    values = {"tls": TLS, "settings": MUTUAL,
              "services": {"ingest": {"enabled": False}},  # refused with a client CA
              "networkPolicy": {"probesFrom": nodes}}  # fmt: skip
    docs = manifests(render(values))
    expected = {"policy": 9475, "requests": 9476, "cost-api": 9478}
    for component, port in expected.items():
        name = f"{RELEASE}-quartermaster-{component}"
        (container,) = _containers(by_kind(docs, "Deployment")[name])
        assert {"name": "health", "containerPort": port, "protocol": "TCP"} in container["ports"]
        for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
            assert container[probe]["grpc"]["port"] == port, (component, probe)
        ingress = by_kind(docs, "NetworkPolicy")[name]["spec"]["ingress"]
        (rule,) = [r for r in ingress if {"port": port, "protocol": "TCP"} in r["ports"]]
        assert rule == {"ports": [{"port": port, "protocol": "TCP"}], "from": nodes}
        # the Service carries the gRPC port only: nothing routes to the health port
        service = by_kind(docs, "Service")[name]["spec"]["ports"]
        assert [p["port"] for p in service] == [container["ports"][0]["containerPort"]]
    for doc in docs:
        if not doc["apiVersion"].startswith("monitoring.coreos.com/"):
            for kube in KUBE_VERSIONS:
                kubernetes_validate.validate(doc, kube, strict=True)
