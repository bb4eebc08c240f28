"""Rendering deploy/helm/quartermaster with Helm's own Go SDK (helm-python-sdk), no helm
binary, and the facts the chart tests share."""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Iterator, Mapping
from functools import cache
from pathlib import Path
from typing import Any

import yaml
from helm_python import Chart
from pydantic import SecretStr
from pydantic.fields import FieldInfo

from devtools.discovery import settings_classes
from quartermaster.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "deploy" / "helm" / "quartermaster"
VALUES = Path(__file__).resolve().parent / "values"
PRODUCTION = ROOT / "deploy" / "helm" / "examples" / "production.yaml"
# The Kubernetes versions every manifest must be valid for.
KUBE_VERSIONS = ("1.28.0", "1.31.0")
RELEASE = "qm"
NAMESPACE = "quartermaster"

# Set by the templates from structured values (addresses, the broker) or
# from the database Secret; not keys of `settings`.
CHART_OWNED = frozenset(
    {
        "QM_KAFKA_BOOTSTRAP",
        "QM_DATABASE_URL",
        "QM_TOPIC_PARTITIONS",
        "QM_DIRECTORY_ADDR",
        "QM_POLICY_ADDR",
        "QM_USAGE_API_ADDR",
        "QM_METERING_METRICS_ADDR",
        "QM_POLICY_METRICS_ADDR",
        "QM_REQUESTS_METRICS_ADDR",
        "QM_USAGE_API_METRICS_ADDR",
        "QM_POLICY_HEALTH_ADDR",
        "QM_REQUESTS_HEALTH_ADDR",
        "QM_USAGE_API_HEALTH_ADDR",
        "QM_REQUESTS_ADDR",
        "QM_REQUESTS_POLICY_ADDR",
        "QM_REQUESTS_USAGE_API_ADDR",
        "QM_METERING_INGEST_ADDR",
        "QM_NOTIFIER_METRICS_ADDR",
        "QM_NOTIFIER_INTERACTIVITY_ADDR",
        "QM_NOTIFIER_REQUESTS_ADDR",
        "QM_NOTIFIER_USAGE_API_ADDR",
    }
)
# Credentials: only ever from a Secret (services.<name>.secretEnv), never in the ConfigMap:
# a setting typed SecretStr (QM_NOTIFIER_WEBHOOKS: URLs may carry a token), or one whose
# name says so (QM_TOKENS and QM_KAFKA_SASL_PASSWORD are plain strings). is_credential.
SECRET_NAME = re.compile(r"(TOKENS?|SECRETS?|PASSWORD|KEY)$")
# Which Deployments run a service's code (its settings reach at least one of them).
PROCESSES = {
    "metering": ("metering", "cost-api", "ingest"),
    "notifier": ("notifier",),
    "policy": ("policy",),
    "requests": ("requests",),
}
# Services that exist in the code but not yet in the chart, and why: named here, so a
# new service is a decision, not a silent gap (a service in neither list fails).
NOT_IN_CHART: dict[str, str] = {}
# Credentials a service's settings class reads that no case has to give its processes,
# and why (a credential a process does not use should not reach it).
NOT_GIVEN = {
    ("notifier", "QM_TOKENS"): "it serves no gRPC; Slack's clicks are checked by signature",
    ("notifier", "QM_NOTIFIER_SLACK_APP_TOKEN"): "Socket Mode only; the cases take clicks "
    "on the HTTP endpoint (QM_NOTIFIER_SLACK_SIGNING_SECRET)",
}


def load_values(path: Path) -> dict[str, Any]:
    loaded = yaml.safe_load(path.read_text())
    assert isinstance(loaded, dict)
    return loaded


# The values every Deployment-wide test renders: the defaults, an external database
# with every credential from Secrets, and the production example.
CASES = {
    "default": {},
    "external-db": load_values(VALUES / "external-db.yaml"),
    "production": load_values(PRODUCTION),
}


def env_name(cls: type[Settings], field: str, info: FieldInfo) -> str:
    """The variable a settings field is read from."""
    if isinstance(info.validation_alias, str):
        return info.validation_alias
    return f"{cls.model_config.get('env_prefix', '')}{field}".upper()


@cache
def credentials() -> frozenset[str]:
    """Every service setting typed SecretStr, by its variable."""
    return frozenset(
        env_name(cls, field, info)
        for _, cls in settings_classes()
        for field, info in cls.model_fields.items()
        if info.annotation is SecretStr
    )


def is_credential(env: str) -> bool:
    """Whether the variable `env` holds a credential (see SECRET_NAME)."""
    return env in credentials() or bool(SECRET_NAME.search(env))


def service_settings() -> Iterator[tuple[str, str]]:
    """(service, variable) for every setting of every service's settings classes."""
    for service, cls in settings_classes():
        if service in NOT_IN_CHART:
            continue
        assert service in PROCESSES, f"{service}: neither deployed by the chart nor NOT_IN_CHART"
        for field, info in cls.model_fields.items():
            yield service, env_name(cls, field, info)


@cache
def _chart() -> Chart:
    return Chart.load(str(CHART))


def render(values: Mapping[str, Any] | None = None) -> dict[str, str]:
    """{template path: rendered YAML} for `values` over the chart's defaults."""
    return dict(_chart().render(dict(values or {}), name=RELEASE, namespace=NAMESPACE))


def manifests(rendered: Mapping[str, str]) -> list[dict[str, Any]]:
    """Every Kubernetes object rendered (NOTES.txt left out)."""
    docs: list[dict[str, Any]] = []
    for path, text in rendered.items():
        if path.endswith("NOTES.txt"):
            continue
        docs += [d for d in yaml.safe_load_all(text) if d]
    return docs


def by_kind(docs: list[dict[str, Any]], kind: str) -> dict[str, dict[str, Any]]:
    """{metadata.name: object} of one kind."""
    return {d["metadata"]["name"]: d for d in docs if d["kind"] == kind}


METRIC = re.compile(r"\bqm_[a-z0-9_]+")


def monitoring(docs: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], list[str]]:
    """(the alert rules, the dashboard's PromQL expressions) of a render with both on."""
    rules = [r for d in docs if d["kind"] == "PrometheusRule"
             for g in d["spec"]["groups"] for r in g["rules"]]  # fmt: skip
    boards = [json.loads(v) for n, d in by_kind(docs, "ConfigMap").items()
              if n.endswith("-dashboard") for v in d["data"].values()]  # fmt: skip
    exprs = [t["expr"] for b in boards for p in b["panels"] for t in p["targets"]]
    return rules, exprs


def metric_names(exprs: Iterable[str]) -> set[str]:
    """The qm_* series the PromQL `exprs` read, as a scrape shows them (`_bucket`, `_total`)."""
    return {m for e in exprs for m in METRIC.findall(e)}


# Series Prometheus makes itself for every target, which no service serves: `up` (1 when
# the last scrape worked), what QuartermasterMeteringDown reads.
PROMETHEUS_SERIES = frozenset({"up"})
# A series selected with label matchers, as every alert does: `name{...}`.
SELECTED = re.compile(r"\b([a-zA-Z_:][a-zA-Z0-9_:]*)\{")


def series_names(exprs: Iterable[str]) -> set[str]:
    """Every series the PromQL `exprs` select with matchers, qm_* or not."""
    return {m for e in exprs for m in SELECTED.findall(e)}


def settings_configmap(docs: list[dict[str, Any]]) -> dict[str, Any]:
    """The one ConfigMap of settings (the dashboard's is another)."""
    (found,) = [d for n, d in by_kind(docs, "ConfigMap").items() if n.endswith("-settings")]
    return found
