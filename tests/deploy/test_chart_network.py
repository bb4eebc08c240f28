"""The NetworkPolicies let through what the release needs, evaluated as Kubernetes does
(a connection needs the caller's egress and the callee's ingress): the release's own
calls between its gRPC services whatever `ingressFrom` says, and Prometheus (as
`networkPolicy.metricsFrom` names it) to every port a PodMonitor scrapes, while the
gateways' namespace reaches the API ports only."""

from __future__ import annotations

from typing import Any

import pytest
from helm_python import HelmValuesError

from tests.deploy.chart import (
    NAMESPACE,
    PRODUCTION,
    RELEASE,
    by_kind,
    load_values,
    manifests,
    render,
)

# Who calls whom inside the release (the addresses the ConfigMap gives them).
CALLS = [
    ("cost-api", "policy"),  # QM_DIRECTORY_ADDR
    ("requests", "policy"),  # QM_REQUESTS_POLICY_ADDR
    ("requests", "cost-api"),  # QM_REQUESTS_USAGE_API_ADDR
    ("notifier", "policy"),  # QM_DIRECTORY_ADDR
    ("notifier", "requests"),  # QM_NOTIFIER_REQUESTS_ADDR
    ("notifier", "cost-api"),  # QM_NOTIFIER_USAGE_API_ADDR
]
Pod = tuple[dict[str, str], dict[str, str]]  # (its labels, its namespace's labels)


def _selects(selector: dict[str, Any] | None, labels: dict[str, str]) -> bool:
    """matchLabels only (what the chart and its examples use); None selects all."""
    if selector is None:
        return True
    assert set(selector) <= {"matchLabels"}, selector
    wanted: dict[str, str] = selector.get("matchLabels", {})
    return wanted.items() <= labels.items()


def _peer_matches(peer: dict[str, Any], pod: Pod, own_namespace: dict[str, str]) -> bool:
    labels, namespace = pod
    if "ipBlock" in peer:
        return False  # pods are matched by selectors here
    if "namespaceSelector" not in peer and namespace != own_namespace:
        return False  # a podSelector alone: the policy's own namespace
    return _selects(peer.get("namespaceSelector"), namespace) and _selects(
        peer.get("podSelector"), labels
    )


def _admits(rules: list[dict[str, Any]], port: int, pod: Pod, own: dict[str, str]) -> bool:
    """Whether one of `rules` (ingress `from` or egress `to`) lets `pod` through on `port`."""
    for rule in rules:
        if not any(p["port"] == port for p in rule.get("ports", [])):
            continue
        peers = rule.get("from", rule.get("to"))
        if peers is None or any(_peer_matches(p, pod, own) for p in peers):
            return True
    return False


NS = {"kubernetes.io/metadata.name": NAMESPACE}
PROMETHEUS: Pod = (
    {"app.kubernetes.io/name": "prometheus"},
    {"kubernetes.io/metadata.name": "monitoring"},
)
GATEWAY: Pod = ({"app": "gateway"}, {"kubernetes.io/metadata.name": "gateway"})


def _name(component: str) -> str:
    return f"{RELEASE}-quartermaster-{component}"


def test_the_release_reaches_its_own_grpc_services_whatever_ingress_from_says() -> None:
    docs = manifests(render(load_values(PRODUCTION)))
    policies = by_kind(docs, "NetworkPolicy")
    deployments = by_kind(docs, "Deployment")
    for caller, callee in CALLS:
        caller_pod = (deployments[_name(caller)]["spec"]["template"]["metadata"]["labels"], NS)
        (container,) = deployments[_name(callee)]["spec"]["template"]["spec"]["containers"]
        grpc = next(p["containerPort"] for p in container["ports"] if p["name"] == "grpc")
        # the callee's ingress from the caller's pods, and the caller's egress to that port
        callee_pod = (deployments[_name(callee)]["spec"]["template"]["metadata"]["labels"], NS)
        ingress = policies[_name(callee)]["spec"]["ingress"]
        egress = policies[_name(caller)]["spec"]["egress"]
        assert _admits(ingress, grpc, caller_pod, NS), (caller, callee)
        assert _admits(egress, grpc, callee_pod, NS), (caller, callee)
    # the gateways reach the API ports, not the metrics ports; Prometheus the reverse
    for component in ("policy", "cost-api", "requests"):
        ingress = policies[_name(component)]["spec"]["ingress"]
        (container,) = deployments[_name(component)]["spec"]["template"]["spec"]["containers"]
        ports = {p["name"]: p["containerPort"] for p in container["ports"]}
        assert _admits(ingress, ports["grpc"], GATEWAY, NS), component
        assert not _admits(ingress, ports["metrics"], GATEWAY, NS), component
        assert not _admits(ingress, ports["grpc"], PROMETHEUS, NS), component


def test_prometheus_reaches_every_port_a_pod_monitor_scrapes() -> None:
    values = load_values(PRODUCTION)
    docs = manifests(render(values))
    policies = by_kind(docs, "NetworkPolicy")
    monitors = by_kind(docs, "PodMonitor")
    stranger: Pod = ({"app": "x"}, {"kubernetes.io/metadata.name": "elsewhere"})
    for name, deploy in by_kind(docs, "Deployment").items():
        (container,) = deploy["spec"]["template"]["spec"]["containers"]
        ports = {p["name"]: p["containerPort"] for p in container["ports"]}
        (endpoint,) = monitors[name]["spec"]["podMetricsEndpoints"]
        port = ports[endpoint["port"]]
        ingress = policies[name]["spec"]["ingress"]
        assert _admits(ingress, port, PROMETHEUS, NS), name
        assert not _admits(ingress, port, stranger, NS), name
    # The default: Prometheus in the namespace `monitoring`, whatever its pods' labels
    docs = manifests(render())
    anyone_there: Pod = ({}, {"kubernetes.io/metadata.name": "monitoring"})
    for name, policy in by_kind(docs, "NetworkPolicy").items():
        if name.endswith("-jobs"):
            continue
        rules = [r for r in policy["spec"]["ingress"] if "from" in r]
        assert any(_admits([r], r["ports"][0]["port"], anyone_there, NS) for r in rules), name


def test_metrics_from_takes_peers_only() -> None:
    refused = r"/networkPolicy/metricsFrom': got object, want array"
    with pytest.raises(HelmValuesError, match=refused):
        render({"networkPolicy": {"metricsFrom": {"namespaceSelector": {}}}})
