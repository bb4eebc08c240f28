"""The hook Jobs (migrations, topics) connect as the services do: a pre-install hook
runs before the settings ConfigMap exists, so the chart gives them the Kafka settings,
their own Kafka credentials, the TLS files and the services' scheduling itself. With
production.yaml's SASL_SSL the topics Job must reach the broker as a SASL user."""

from __future__ import annotations

from typing import Any

import pytest
from helm_python import HelmRenderError, HelmValuesError

from quartermaster.config import CommonSettings
from tests.deploy.chart import PRODUCTION, RELEASE, by_kind, load_values, manifests, render


def _jobs(values: dict[str, Any]) -> dict[str, dict[str, Any]]:
    jobs = by_kind(manifests(render(values)), "Job")
    return {name.removeprefix(f"{RELEASE}-quartermaster-"): job for name, job in jobs.items()}


def _container(job: dict[str, Any]) -> dict[str, Any]:
    containers: list[dict[str, Any]] = job["spec"]["template"]["spec"]["containers"]
    return containers[0]


def test_the_topics_job_connects_with_the_production_sasl_settings() -> None:
    values = load_values(PRODUCTION)
    jobs = _jobs(values)
    topics = _container(jobs["topics"])
    env = {e["name"]: e for e in topics["env"]}
    assert env["QM_KAFKA_SECURITY_PROTOCOL"]["value"] == "SASL_SSL"
    assert env["QM_KAFKA_BOOTSTRAP"]["value"] == values["kafka"]["bootstrap"]
    # its own user, from the Secret (not settings' QM_KAFKA_SASL_USERNAME: one entry each)
    for var, key in (("QM_KAFKA_SASL_USERNAME", "kafka-username-admin"),
                     ("QM_KAFKA_SASL_PASSWORD", "kafka-password-admin")):  # fmt: skip
        ref = env[var]["valueFrom"]["secretKeyRef"]
        assert ref == {"name": values["secrets"]["existingSecret"], "key": key}
    assert [e["name"] for e in topics["env"]].count("QM_KAFKA_SASL_USERNAME") == 1
    # what `python -m quartermaster.kafka ensure-topics` reads makes a SASL_SSL client
    secrets = {"QM_KAFKA_SASL_USERNAME": "qm-admin", "QM_KAFKA_SASL_PASSWORD": "pw"}
    loaded = CommonSettings.from_env({e["name"]: e.get("value") or secrets[e["name"]]
                                      for e in topics["env"]})  # fmt: skip
    config = loaded.kafka_client_config()
    assert config["security.protocol"] == "sasl_ssl"
    assert (config["sasl.username"], config["sasl.password"]) == ("qm-admin", "pw")
    # both Jobs mount the TLS files (a broker or PostgreSQL CA may be among them)
    for job in jobs.values():
        mounts = {m["name"]: m for m in _container(job)["volumeMounts"]}
        assert mounts["tls"] == {"name": "tls", "mountPath": "/etc/quartermaster/tls",
                                 "readOnly": True}  # fmt: skip
        volumes = {v["name"]: v for v in job["spec"]["template"]["spec"]["volumes"]}
        assert volumes["tls"]["secret"]["secretName"] == "qm-tls"
    # a Kafka credential of its own goes to the topics Job only
    migrate = {e["name"] for e in _container(jobs["migrate"])["env"]}
    assert "QM_KAFKA_SASL_PASSWORD" not in migrate
    assert "QM_DATABASE_URL" in migrate


def test_the_hook_jobs_are_scheduled_where_the_values_say() -> None:
    pool = {"pool": "quartermaster"}
    taint = [{"key": "dedicated", "operator": "Equal", "value": "qm", "effect": "NoSchedule"}]
    affinity = {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {
        "nodeSelectorTerms": [{"matchExpressions": [
            {"key": "zone", "operator": "In", "values": ["a"]}]}]}}}  # fmt: skip
    values = {"migrations": {"nodeSelector": pool, "tolerations": taint, "affinity": affinity}}
    for name, job in _jobs(values).items():
        pod = job["spec"]["template"]["spec"]
        assert (pod["nodeSelector"], pod["tolerations"], pod["affinity"]) == (
            pool, taint, affinity), name  # fmt: skip
    for name, job in _jobs({}).items():  # none by default, nor a TLS volume
        pod = job["spec"]["template"]["spec"]
        assert not {"nodeSelector", "tolerations", "affinity"} & set(pod), name
        assert [v["name"] for v in pod["volumes"]] == ["tmp"], name


def test_sasl_without_a_topics_credential_is_refused() -> None:
    values = {"settings": {"QM_KAFKA_SECURITY_PROTOCOL": "SASL_SSL"}}
    with pytest.raises(HelmRenderError, match=r"topics\.secretEnv: with settings\."
                       r"QM_KAFKA_SECURITY_PROTOCOL=SASL_SSL the topics Job needs "
                       r"QM_KAFKA_SASL_PASSWORD"):  # fmt: skip
        render(values)
    render({**values, "topics": {"create": False}})  # you create them yourself


def test_the_topics_job_takes_kafka_credentials_only() -> None:
    values = {"topics": {"secretEnv": [{"env": "QM_TOKENS", "secretKey": "tokens"}]}}
    with pytest.raises(HelmValuesError, match=r"/topics/secretEnv/0/env': value must be one of"):
        render(values)


def test_the_jobs_network_policy_is_in_place_before_the_jobs_run() -> None:
    """As a release resource it came after the hooks on a first install: in a namespace
    that denies by default, the Jobs reached neither DNS, Kafka nor PostgreSQL."""
    docs = manifests(render(load_values(PRODUCTION)))
    policy = by_kind(docs, "NetworkPolicy")[f"{RELEASE}-quartermaster-jobs"]
    notes = policy["metadata"]["annotations"]
    assert notes["helm.sh/hook"] == "pre-install,pre-upgrade"
    assert notes["helm.sh/hook-delete-policy"] == "before-hook-creation"
    first = min(int(j["metadata"]["annotations"]["helm.sh/hook-weight"])
                for j in by_kind(docs, "Job").values())  # fmt: skip
    assert int(notes["helm.sh/hook-weight"]) < first
