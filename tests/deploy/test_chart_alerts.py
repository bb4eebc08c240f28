"""Metering being down is an alert: QuartermasterMeteringDown reads Prometheus's own
`up` of the metering PodMonitor's targets (no worker series survive a crash loop), and
every series an alert reads is a service's (qm_*) or Prometheus's own, by name. The
runbook's recipe for running the metering CLI while the workers crash-loop makes a
valid Job from the worker's own pod template (run here with a stand-in kubectl)."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest

from tests.deploy.chart import (
    KUBE_VERSIONS,
    NAMESPACE,
    PRODUCTION,
    PROMETHEUS_SERIES,
    RELEASE,
    ROOT,
    by_kind,
    load_values,
    manifests,
    metric_names,
    monitoring,
    render,
    series_names,
)

METERING = f"{RELEASE}-quartermaster-metering"


def _rule(docs: list[dict[str, Any]], alert: str) -> dict[str, Any] | None:
    found = [r for r in monitoring(docs)[0] if r["alert"] == alert]
    return found[0] if found else None


def test_metering_down_reads_up_of_the_metering_pod_monitor() -> None:
    docs = manifests(render(load_values(PRODUCTION)))
    rule = _rule(docs, "QuartermasterMeteringDown")
    assert rule is not None
    assert rule["labels"]["severity"] == "critical"
    # the Prometheus Operator's job label for a PodMonitor: <namespace>/<name>
    monitor = by_kind(docs, "PodMonitor")[METERING]
    job = f'job="{NAMESPACE}/{METERING}"'
    assert re.search(r"sum by \(namespace\) \(up\{[^}]*" + re.escape(job), rule["expr"])
    assert re.search(r"absent\(up\{[^}]*" + re.escape(job), rule["expr"]), "no target at all"
    selected = monitor["spec"]["selector"]["matchLabels"]
    worker = by_kind(docs, "Deployment")[METERING]["spec"]["template"]["metadata"]["labels"]
    assert selected.items() <= worker.items()
    # without the PodMonitor (or the worker) there is no such job: no alert that always fires
    values = load_values(PRODUCTION)
    assert (
        _rule(manifests(render({**values, "podMonitor": {"enabled": False}})), rule["alert"])
        is None
    )
    off = {**values, "services": {**values["services"], "metering": {"enabled": False}}}
    assert _rule(manifests(render(off)), rule["alert"]) is None


def test_alerts_read_service_series_or_prometheus_own_by_name() -> None:
    rules, _ = monitoring(manifests(render(load_values(PRODUCTION))))
    exprs = [r["expr"] for r in rules]
    assert "up" in series_names(exprs)
    assert series_names(exprs) - metric_names(exprs) <= PROMETHEUS_SERIES


def _recipe() -> str:
    """The runbook's qm_metering_cli function, as docs/operations.md shows it."""
    text = (ROOT / "docs" / "operations.md").read_text()
    section = text[text.index("#### QuartermasterMeteringDown") :]
    block = re.search(r"```sh\n(qm_metering_cli\(\) \{.*?\n\})\n", section, re.S)
    assert block, "the runbook shows qm_metering_cli()"
    return block.group(1)


@pytest.mark.skipif(not shutil.which("jq"), reason="the recipe needs jq")
def test_the_runbook_runs_the_metering_cli_as_a_job_of_the_worker_pod(tmp_path: Path) -> None:
    docs = manifests(render(load_values(PRODUCTION)))
    deploy = by_kind(docs, "Deployment")[METERING]
    (tmp_path / "deploy.json").write_text(json.dumps(deploy))
    # kubectl: `get ... -o json` prints the rendered Deployment, `create -f -` keeps
    # what it is given, `logs` says nothing
    kubectl = tmp_path / "kubectl"
    kubectl.write_text(
        "#!/bin/sh\n"
        f'case "$*" in *" get deploy {METERING} -o json") cat {tmp_path}/deploy.json;;\n'
        f'  *" create -f -") cat > {tmp_path}/job.json;; esac\n'
    )
    kubectl.chmod(0o755)
    script = (
        _recipe() + '\nqm_metering_cli qm-topic-accept \'["topic", "accept", "--by", "ann"]\'\n'
    )
    env = {**os.environ, "PATH": f"{tmp_path}:{os.environ['PATH']}"}
    subprocess.run(["bash", "-c", script], env=env, check=True, timeout=60)
    job = json.loads((tmp_path / "job.json").read_text())
    for kube in KUBE_VERSIONS:
        kubernetes_validate.validate(job, kube, strict=True)
    pod, template = job["spec"]["template"]["spec"], deploy["spec"]["template"]["spec"]
    (container,), (worker,) = pod["containers"], template["containers"]
    assert job["metadata"]["name"] == "qm-topic-accept"
    assert container["args"] == ["-m", "services.metering.cli", "topic", "accept", "--by", "ann"]
    assert pod["restartPolicy"] == "Never"
    assert job["spec"]["backoffLimit"] == 0
    assert not {"startupProbe", "livenessProbe", "readinessProbe"} & set(container)
    # what the worker is given: image, settings, Secrets, files, hardening
    for key in ("image", "env", "envFrom", "volumeMounts", "securityContext"):
        assert container[key] == worker[key], key
    assert pod["volumes"] == template["volumes"]
    # the hook Jobs' NetworkPolicy (DNS, Kafka, PostgreSQL out) selects it
    jobs_policy = by_kind(docs, "NetworkPolicy")[f"{RELEASE}-quartermaster-jobs"]
    wanted = jobs_policy["spec"]["podSelector"]["matchLabels"]
    assert wanted.items() <= job["spec"]["template"]["metadata"]["labels"].items()
    # and no selector of the worker's own: not counted by its PDB or scraped as a worker
    assert "app.kubernetes.io/component" not in job["spec"]["template"]["metadata"]["labels"]
