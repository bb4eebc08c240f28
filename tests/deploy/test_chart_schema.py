"""Values that would deploy something unsafe or broken are refused before anything is
applied, each naming the value: by the schema (a PDB no drain can pass, root or
privileged pods, testing switches, an unknown log level) or by a template where the
schema can't compare two values (an HPA's bounds) or knows no list (the variables the
chart sets, which a secretEnv entry would override)."""

from __future__ import annotations

from typing import Any

import pytest
from helm_python import HelmRenderError, HelmValuesError

from tests.deploy.chart import CHART_OWNED, RELEASE, by_kind, manifests, render


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"services": {"policy": {"pdb": {"enabled": True, "maxUnavailable": 0}}}},
         r"/services/policy/pdb/maxUnavailable': minimum: got 0, want 1"),
        ({"services": {"policy": {"pdb": {"enabled": True, "maxUnavailable": "0%"}}}},
         r"/services/policy/pdb/maxUnavailable': '0%' does not match pattern"),
        ({"services": {"policy": {"pdb": {"enabled": True, "maxUnavailable": "one"}}}},
         r"/services/policy/pdb/maxUnavailable': 'one' does not match pattern"),
        ({"podSecurityContext": {"runAsUser": 0}}, r"/podSecurityContext/runAsUser': minimum"),
        ({"podSecurityContext": {"runAsNonRoot": False}},
         r"/podSecurityContext/runAsNonRoot': value must be true"),
        ({"securityContext": {"privileged": True}},
         r"/securityContext/privileged': value must be false"),
        ({"securityContext": {"allowPrivilegeEscalation": True}},
         r"/securityContext/allowPrivilegeEscalation': value must be false"),
        ({"securityContext": {"readOnlyRootFilesystem": False}},
         r"/securityContext/readOnlyRootFilesystem': value must be true"),
        ({"securityContext": {"capabilities": {"add": ["NET_ADMIN"]}}},
         r"/securityContext/capabilities/add': maxItems"),
        ({"settings": {"QM_REQUESTS_RELAY_HOLD": "after_read"}},
         r"/settings/QM_REQUESTS_RELAY_HOLD': value must be"),
        ({"settings": {"QM_LOG_LEVEL": "VERBOSE"}},
         r"/settings/QM_LOG_LEVEL': value must be one of"),
        # The metering worker's data dir, gone with faust: an upgrade keeping it is told.
        ({"services": {"metering": {"dataDir": {"env": "QM_METERING_DATA_DIR", "path": "/d"}}}},
         r"/services/metering': additional properties 'dataDir' not allowed"),
        ({"settings": {"QM_METERING_DATA_DIR": "/d"}},
         r"/settings': additional properties 'QM_METERING_DATA_DIR' not allowed"),
    ],
)  # fmt: skip
def test_the_schema_refuses_unsafe_or_testing_values(values: dict[str, Any], message: str) -> None:
    with pytest.raises(HelmValuesError, match=message):
        render(values)


def test_what_the_schema_takes() -> None:
    values = {
        "services": {"policy": {"pdb": {"enabled": True, "maxUnavailable": "25%"}}},
        "settings": {"QM_LOG_LEVEL": "debug"},
        "podSecurityContext": {"runAsUser": 20001, "runAsGroup": 20001},
    }
    docs = manifests(render(values))
    pdb = by_kind(docs, "PodDisruptionBudget")[f"{RELEASE}-quartermaster-policy"]
    assert pdb["spec"]["maxUnavailable"] == "25%"


def test_an_hpa_whose_minimum_is_above_its_maximum_is_refused() -> None:
    scaling = {"enabled": True, "minReplicas": 5, "maxReplicas": 3}
    with pytest.raises(HelmRenderError, match=r"services\.policy\.autoscaling: minReplicas \(5\) "
                       r"is more than maxReplicas \(3\)"):  # fmt: skip
        render({"services": {"policy": {"autoscaling": scaling}}})


@pytest.mark.parametrize("tag", ["latest", "Latest", "LATEST"])
def test_latest_is_refused_in_any_case(tag: str) -> None:
    with pytest.raises(HelmRenderError, match=r"image\.tag: 'latest' moves under a running"):
        render({"image": {"tag": tag}})


@pytest.mark.parametrize(
    "env", sorted(CHART_OWNED | {"QM_TLS_CERT_FILE", "QM_TLS_KEY_FILE", "QM_TLS_CA_FILE"})
)
def test_a_secret_env_never_overrides_what_the_chart_sets(env: str) -> None:
    entries = [{"env": "QM_TOKENS", "secretKey": "tokens"}, {"env": env, "secretKey": "x"}]
    with pytest.raises(
        HelmRenderError, match=rf"services\.policy\.secretEnv: {env} is set by the chart"
    ):
        render({"services": {"policy": {"secretEnv": entries}}})
