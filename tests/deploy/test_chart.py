"""The Helm chart, rendered by Helm's Go SDK: lint --strict, every manifest valid for
Kubernetes 1.28 and 1.31, and what an SRE checks first (probes, securityContext, hooks,
NetworkPolicy, PDB, secrets, every setting reaching its container)."""

from __future__ import annotations

from typing import Any

import kubernetes_validate
import pytest
from helm_python import HelmRenderError, HelmValuesError, lint

from quartermaster.grpcserver import LIVENESS_SERVICE
from tests.deploy.chart import (
    CASES,
    CHART,
    CHART_OWNED,
    KUBE_VERSIONS,
    NOT_GIVEN,
    PROCESSES,
    PRODUCTION,
    RELEASE,
    ROOT,
    VALUES,
    by_kind,
    is_credential,
    load_values,
    manifests,
    metric_names,
    monitoring,
    render,
    service_settings,
    settings_configmap,
)


@pytest.fixture(scope="module", params=list(CASES))
def case(request: pytest.FixtureRequest) -> tuple[str, list[dict[str, Any]]]:
    return request.param, manifests(render(CASES[request.param]))


def _containers(deploy: dict[str, Any]) -> list[dict[str, Any]]:
    containers: list[dict[str, Any]] = deploy["spec"]["template"]["spec"]["containers"]
    return containers


def test_lint_strict() -> None:
    for kube in KUBE_VERSIONS:
        result = lint(str(CHART), strict=True, kube_version=f"v{kube}")
        assert result["errors"] == []
        # Helm's severities: 1 info (e.g. "icon is recommended"), 2 warning, 3 error.
        assert [m for m in result["messages"] if m["severity"] > 1] == [], result["messages"]


@pytest.mark.suite  # ~20 s of schema validation: `make test` runs it, test-unit doesn't
@pytest.mark.parametrize("kube", KUBE_VERSIONS)
def test_every_manifest_is_valid_kubernetes(
    case: tuple[str, list[dict[str, Any]]], kube: str
) -> None:
    name, docs = case
    kinds = {d["kind"] for d in docs}
    assert {"Deployment", "Service", "ConfigMap", "Job", "NetworkPolicy"} <= kinds, name
    for doc in docs:
        if doc["apiVersion"].startswith("monitoring.coreos.com/"):
            continue  # a CRD: no schema in Kubernetes' own OpenAPI
        kubernetes_validate.validate(doc, kube, strict=True)


def test_a_deployment_per_service_with_probes_and_hardening(
    case: tuple[str, list[dict[str, Any]]],
) -> None:
    _, docs = case
    deployments = by_kind(docs, "Deployment")
    assert set(deployments) == {
        f"{RELEASE}-quartermaster-{c}"
        for c in ("metering", "cost-api", "policy", "requests", "ingest", "notifier")
    }
    for name, deploy in deployments.items():
        pod = deploy["spec"]["template"]["spec"]
        assert pod["automountServiceAccountToken"] is False, name
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
        assert "checksum/config" in deploy["spec"]["template"]["metadata"]["annotations"]
        (container,) = _containers(deploy)
        sc = container["securityContext"]
        assert sc["readOnlyRootFilesystem"] is True
        assert sc["allowPrivilegeEscalation"] is False
        assert sc["capabilities"] == {"drop": ["ALL"]}
        assert "memory" in container["resources"]["limits"]
        # /tmp is the only writable directory; the metering worker too has none of its
        # own (faust, which it had, kept local files in one).
        writable = {m["mountPath"] for m in container["volumeMounts"] if not m.get("readOnly")}
        assert writable == {"/tmp"}, name
        # gRPC services: probed on the plaintext health port, whatever the TLS settings
        ports = {p["name"]: p["containerPort"] for p in container["ports"]}
        port = ports.get("health")
        for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
            spec = container[probe]
            if name.endswith("ingest") and probe == "readinessProbe":  # 503 without broker
                get = {k: v for k, v in spec["httpGet"].items() if k != "scheme"}
                assert get == {"path": "/healthz", "port": "http"}, name
            elif name.endswith("notifier"):  # services.notifier.health
                path = "/healthz" if probe == "readinessProbe" else "/livez"
                assert spec["httpGet"] == {"path": path, "port": "metrics"}, (name, probe)
            elif name.endswith("metering") and probe != "readinessProbe":
                # quartermaster.liveness: a stuck loop fails it (/metrics's thread would not)
                assert spec["httpGet"] == {"path": "/livez", "port": "metrics"}, (name, probe)
            elif name.endswith(("metering", "ingest")):  # HTTP /metrics
                assert spec["httpGet"]["path"] == "/metrics", (name, probe)
            elif probe != "readinessProbe":  # alive, ready or not (grpcserver.LIVENESS_SERVICE):
                # a failed startup probe restarts the pod, so it must not ask "ready"
                assert spec["grpc"] == {"port": port, "service": LIVENESS_SERVICE}, name
            else:  # the standard gRPC health service, overall: ready
                assert spec["grpc"] == {"port": port}, (name, probe)
        if "grpc" in ports:
            env = {e["name"]: e.get("value") for e in container["env"]}
            assert port, name
            assert port not in (ports["grpc"], ports["metrics"]), name
            assert f"0.0.0.0:{port}" in env.values(), name
        startup = container["startupProbe"]
        # A slow consumer-group join or database must not get the pod killed.
        assert startup["periodSeconds"] * startup["failureThreshold"] >= 120, name


def _timing(probe: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in probe.items() if k.endswith(("Seconds", "Threshold"))}


def test_pdb_and_network_policy_per_service(case: tuple[str, list[dict[str, Any]]]) -> None:
    name, docs = case
    deployments = by_kind(docs, "Deployment")
    pdbs = by_kind(docs, "PodDisruptionBudget")
    policies = by_kind(docs, "NetworkPolicy")
    egress = load_values(CHART / "values.yaml")["networkPolicy"]["egress"]
    egress |= CASES[name].get("networkPolicy", {}).get("egress", {})
    notifications = {p for rule in egress["notifications"] for p in rule["ports"]}
    for name, deploy in deployments.items():
        labels = deploy["spec"]["selector"]["matchLabels"]
        assert pdbs[name]["spec"]["selector"]["matchLabels"] == labels
        assert pdbs[name]["spec"]["maxUnavailable"] == 1
        policy = policies[name]
        assert policy["spec"]["podSelector"]["matchLabels"] == labels
        assert policy["spec"]["policyTypes"] == ["Ingress", "Egress"]
        # Ingress to the container's ports (the service's, and a gRPC service's metrics
        # port; the notifier's interactivity endpoint in a rule of its own) and nothing
        # else: not the health port, which only the kubelet on the node asks (always let
        # through; networkPolicy.probesFrom adds others: test_chart_services.py).
        ports = [p["containerPort"] for p in _containers(deploy)[0]["ports"]
                 if p["name"] != "health"]  # fmt: skip
        taken = {p["port"] for rule in policy["spec"]["ingress"] for p in rule["ports"]}
        assert taken == set(ports), name  # who, on each: test_chart_network.py
        assert all(p["protocol"] == "TCP" for r in policy["spec"]["ingress"] for p in r["ports"])
        egress_ports = {p["port"] for rule in policy["spec"]["egress"] for p in rule["ports"]}
        if name.endswith("ingest"):  # only the broker: no PostgreSQL, no other service
            assert {53, 9092} <= egress_ports, name
            assert not {5432, 50051} & egress_ports, name
        else:
            assert {53, 9092, 5432} <= egress_ports, name
        # Slack, SMTP and webhooks: the notifier's alone.
        assert (notifications <= egress_ports) == name.endswith("notifier"), name
        assert all(rule.get("to") for rule in policy["spec"]["egress"]), "egress to anywhere"


def test_hooks_migrate_then_create_topics_before_any_pod(
    case: tuple[str, list[dict[str, Any]]],
) -> None:
    _, docs = case
    jobs = by_kind(docs, "Job")
    migrate, topics = (
        jobs[f"{RELEASE}-quartermaster-migrate"],
        jobs[f"{RELEASE}-quartermaster-topics"],
    )
    for job in (migrate, topics):
        notes = job["metadata"]["annotations"]
        assert notes["helm.sh/hook"] == "pre-install,pre-upgrade"
        assert notes["helm.sh/hook-delete-policy"] == "before-hook-creation"
        pod = job["spec"]["template"]["spec"]
        (container,) = pod["containers"]
        assert container["securityContext"]["readOnlyRootFilesystem"] is True
        # Hooks run before the release's objects exist on install: none may be needed.
        assert "serviceAccountName" not in pod
        assert pod["automountServiceAccountToken"] is False
        assert "envFrom" not in container
    weights = [int(j["metadata"]["annotations"]["helm.sh/hook-weight"]) for j in (migrate, topics)]
    assert weights[0] < weights[1], "migrations first"
    assert _containers_args(migrate) == ["-m", "devtools.migrate"]
    args = _containers_args(topics)
    assert args[:3] == ["-m", "quartermaster.kafka", "ensure-topics"]
    values = {**{"partitions": 6, "replicationFactor": 3}, **CASES[case[0]].get("topics", {})}
    assert args[args.index("--partitions") + 1] == str(values["partitions"])
    assert args[args.index("--replication-factor") + 1] == str(values["replicationFactor"])


def _containers_args(job: dict[str, Any]) -> list[str]:
    args: list[str] = job["spec"]["template"]["spec"]["containers"][0]["args"]
    return args


def test_secrets_come_from_existing_secrets_only(case: tuple[str, list[dict[str, Any]]]) -> None:
    name, docs = case
    assert not by_kind(docs, "Secret"), "the chart must never create (or regenerate) a secret"
    values = CASES[name]
    db = {
        "existingSecret": "quartermaster-database",
        "urlKey": "database-url",
        **values.get("database", {}),
    }
    for obj in [
        *by_kind(docs, "Deployment").values(),
        by_kind(docs, "Job")[f"{RELEASE}-quartermaster-migrate"],
    ]:
        env = {e["name"]: e for e in _containers(obj)[0]["env"]}
        if obj["metadata"]["name"].endswith("ingest"):  # no database: not given its URL
            assert "QM_DATABASE_URL" not in env
            continue
        ref = env["QM_DATABASE_URL"]["valueFrom"]["secretKeyRef"]
        assert ref == {"name": db["existingSecret"], "key": db["urlKey"]}
        for var, entry in env.items():  # a credential never as a plain value
            assert not is_credential(var) or "valueFrom" in entry, (obj["metadata"]["name"], var)
    configmap = settings_configmap(docs)
    assert not [k for k in configmap["data"] if is_credential(k)]
    assert "QM_DATABASE_URL" not in configmap["data"]


def test_every_setting_reaches_its_container(case: tuple[str, list[dict[str, Any]]]) -> None:
    """Walks the settings classes: a new setting that neither values.yaml's `settings`
    nor the chart provides fails here (credentials count when a secretEnv maps them)."""
    name, docs = case
    configmap = settings_configmap(docs)
    deployments = by_kind(docs, "Deployment")
    missing = []
    for service, env in service_settings():
        if is_credential(env) and (name == "default" or (service, env) in NOT_GIVEN):
            continue  # no credentials configured: the setting's default (refuse all) holds
        reached = False
        for process in PROCESSES[service]:
            deploy = deployments[f"{RELEASE}-quartermaster-{process}"]
            (container,) = _containers(deploy)
            own = {e["name"] for e in container["env"]}
            from_map = set(configmap["data"]) if container["envFrom"] else set()
            reached = reached or env in own | from_map
        if not reached:
            missing.append(f"{service}: {env}")
    assert not missing, missing


def test_values_name_every_setting_the_chart_does_not_own() -> None:
    values = load_values(CHART / "values.yaml")
    expected = {
        env for _, env in service_settings() if env not in CHART_OWNED and not is_credential(env)
    }
    assert set(values["settings"]) == expected
    schema = load_values(CHART / "values.schema.json")  # JSON is YAML
    assert set(schema["properties"]["settings"]["properties"]) == expected


def test_values_reach_the_configmap() -> None:
    docs = manifests(render(load_values(PRODUCTION)))
    configmap = settings_configmap(docs)
    data = configmap["data"]
    assert data["QM_WORKSPACE_TIMEZONE"] == "Europe/Berlin"
    assert data["QM_METERING_FETCH_MAX_WAIT_MS"] == "500"
    assert data["QM_TOPIC_PARTITIONS"] == "12"
    assert data["QM_KAFKA_BOOTSTRAP"].startswith("kafka-0.kafka.data:9092")
    assert data["QM_DIRECTORY_ADDR"] == f"{RELEASE}-quartermaster-policy:50051"
    assert "HorizontalPodAutoscaler" in {d["kind"] for d in docs}
    policy = by_kind(docs, "Deployment")[f"{RELEASE}-quartermaster-policy"]
    assert "replicas" not in policy["spec"]  # the HPA owns it
    assert _containers(policy)[0]["image"].endswith("@sha256:" + "0123456789abcdef" * 4)
    tls = [m for m in _containers(policy)[0]["volumeMounts"] if m["name"] == "tls"]
    assert tls == [{"name": "tls", "mountPath": "/etc/quartermaster/tls", "readOnly": True}]


def test_more_consumers_than_partitions_is_refused() -> None:
    values = {"topics": {"partitions": 2}, "services": {"metering": {"replicas": 3}}}
    with pytest.raises(
        HelmRenderError,
        match=r"services\.metering\.replicas \(3\) is more than topics\.partitions \(2\)",
    ):
        render(values)


@pytest.mark.parametrize(
    ("file", "message"),
    [
        ("bad-replicas.yaml", r"/services/policy/replicas': minimum"),
        ("bad-setting.yaml", r"'QM_METERING_BATCH_MAXX' not allowed"),
        ("bad-network.yaml", r"/networkPolicy/enabled': got string, want boolean"),
        ("bad-hold.yaml", r"/settings/QM_NOTIFIER_HOLD_AFTER_SEND': value must be one of"),
        ("bad-channels.yaml", r"/settings/QM_NOTIFIER_DEFAULT_CHANNELS': value must be one of"),
        ("bad-interactivity.yaml", r"/services/notifier/interactivity/number': minimum"),
        ("bad-secret-setting.yaml", r"'QM_NOTIFIER_SLACK_BOT_TOKEN' not allowed"),
        ("bad-reaches.yaml", r"/services/ingest/reaches/postgres': got string, want boolean"),
    ],
)
def test_schema_refuses_bad_values(file: str, message: str) -> None:
    with pytest.raises(HelmValuesError, match=message) as refused:
        render(load_values(VALUES / file))
    assert "schema" in str(refused.value)


def test_latest_tag_is_refused_by_name() -> None:
    with pytest.raises(HelmRenderError, match=r"image\.tag: 'latest'"):
        render(load_values(VALUES / "bad-tag.yaml"))


def test_alerts_and_dashboard_read_only_series_the_services_serve() -> None:
    # What a scrape shows is checked against running services in test_metrics.py;
    # here: every alert has a runbook section in docs/operations.md, and both render.
    rules, exprs = monitoring(manifests(render(load_values(PRODUCTION))))
    assert {r["alert"] for r in rules} == {
        "QuartermasterNotServing", "QuartermasterRpcErrors", "QuartermasterPolicySlow",
        "QuartermasterMeteringLagGrowing", "QuartermasterDlqRate", "QuartermasterNoisySource",
        "QuartermasterNotifierDeliveriesFailing", "QuartermasterNotifierBacklogGrowing",
        "QuartermasterIngestRefusing", "QuartermasterMeteringDown",
    }  # fmt: skip
    operations = (ROOT / "docs" / "operations.md").read_text()
    for rule in rules:
        anchor = rule["annotations"]["runbook"].partition("#")[2]
        assert f"#### {rule['alert']}" in operations, rule
        assert anchor == rule["alert"].lower(), rule
    assert len(exprs) >= 8
    # A panel for each service's own series: the gRPC services', metering's, the
    # notifier's and the HTTP ingest's.
    prefixes = {"qm_rpc_", "qm_grpc_", "qm_metering_", "qm_notifier_", "qm_ingest_"}
    assert {p for p in prefixes for m in metric_names(exprs) if m.startswith(p)} == prefixes
    # Off by default: no CRD an install without the Prometheus Operator can't apply.
    assert not monitoring(manifests(render()))[0]


def test_traces_go_where_the_values_say_and_nowhere_by_default() -> None:
    for deploy in by_kind(manifests(render()), "Deployment").values():
        names = {e["name"] for e in _containers(deploy)[0]["env"]}
        assert "OTEL_EXPORTER_OTLP_ENDPOINT" not in names
    docs = manifests(render(load_values(PRODUCTION)))
    policies = by_kind(docs, "NetworkPolicy")
    for name, deploy in by_kind(docs, "Deployment").items():
        env = {e["name"]: e.get("value") for e in _containers(deploy)[0]["env"]}
        assert env["OTEL_EXPORTER_OTLP_ENDPOINT"] == "http://otel-collector.observability:4317"
        assert env["OTEL_SERVICE_NAME"].startswith("qm-")
        egress = {p["port"] for r in policies[name]["spec"]["egress"] for p in r["ports"]}
        assert 4317 in egress, name
