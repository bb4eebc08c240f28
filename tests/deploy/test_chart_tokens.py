"""A release that would refuse every call is refused at render: every gRPC service and
the ingest need QM_TOKENS, the requests service its client token, and the defaults map
them. docs/operations.md's install creates every key the chart then reads, with named
tokens kept in files (one of role reporter for the ingest), in the format the services
parse."""

from __future__ import annotations

import re
from typing import Any

import pytest
import yaml
from helm_python import HelmRenderError

from tests.deploy.chart import RELEASE, ROOT, by_kind, manifests, render

CALLED = {"policy": "policy", "costApi": "cost-api", "requests": "requests", "ingest": "ingest"}


def _secret_refs(docs: list[dict[str, Any]]) -> dict[str, dict[str, tuple[str, str]]]:
    """{Deployment: {variable: (Secret, key)}} of every secretKeyRef."""
    out: dict[str, dict[str, tuple[str, str]]] = {}
    for name, deploy in by_kind(docs, "Deployment").items():
        (container,) = deploy["spec"]["template"]["spec"]["containers"]
        out[name.removeprefix(f"{RELEASE}-quartermaster-")] = {
            e["name"]: (
                e["valueFrom"]["secretKeyRef"]["name"],
                e["valueFrom"]["secretKeyRef"]["key"],
            )
            for e in container["env"]
            if "valueFrom" in e and "secretKeyRef" in e["valueFrom"]
        }
    return out


def test_the_defaults_map_every_token_a_caller_needs() -> None:
    refs = _secret_refs(manifests(render()))
    for deployment in CALLED.values():
        assert refs[deployment]["QM_TOKENS"] == ("quartermaster-secrets", "tokens"), deployment
    assert refs["requests"]["QM_REQUESTS_CLIENT_TOKEN"][1] == "directory-token"
    assert refs["cost-api"]["QM_DIRECTORY_TOKEN"][1] == "directory-token"
    assert refs["notifier"]["QM_DIRECTORY_TOKEN"][1] == "directory-token"


@pytest.mark.parametrize("service", list(CALLED))
def test_a_service_without_tokens_is_refused(service: str) -> None:
    others = [{"env": "QM_REQUESTS_CLIENT_TOKEN", "secretKey": "directory-token"}]
    values = {"services": {service: {"secretEnv": others if service == "requests" else []}}}
    refused = rf"services\.{service}: no QM_TOKENS in services\.{service}\.secretEnv, so it"
    with pytest.raises(HelmRenderError, match=refused + " would refuse every call"):
        render(values)
    render({"services": {service: {"enabled": False, "secretEnv": []}}})  # left out: fine


def test_the_requests_service_without_its_client_token_is_refused() -> None:
    values = {"services": {"requests": {"secretEnv": [{"env": "QM_TOKENS", "secretKey": "t"}]}}}
    with pytest.raises(HelmRenderError, match=r"services\.requests: no QM_REQUESTS_CLIENT_TOKEN"):
        render(values)


def _install_section() -> str:
    text = (ROOT / "docs" / "operations.md").read_text()
    return text[text.index("### Install") : text.index("### Upgrade")]


def test_the_documented_install_creates_every_key_the_chart_reads() -> None:
    section = _install_section()
    shell = re.search(r"```sh\n(.*?)```", section, re.S)
    example = re.search(r"```yaml\n(.*?)```", section, re.S)
    assert shell
    assert example
    commands = shell.group(1).replace("\\\n", " ")
    (creates,) = [c for c in commands.splitlines() if "secret generic quartermaster-secrets" in c]
    keys = set(re.findall(r"--from-(?:file|literal)=([\w-]+)", creates))
    assert "$(" not in creates, "a token made inline can't be read back: make it a file"
    # the defaults read only keys the documented Secret has
    for deployment, read in _secret_refs(manifests(render())).items():
        for var, (secret, key) in read.items():
            if secret == "quartermaster-secrets":
                assert key in keys, (deployment, var, key)
    # the token list: named entries name:role[+role]:token, a reporter among them
    (made,) = [c for c in commands.splitlines() if c.lstrip().startswith("printf")]
    entries = re.findall(r"(\w+):([a-z+]+):\$\(cat ([\w.]+)\)", made)
    assert {role for _, roles, _ in entries for role in roles.split("+")} >= {
        "gateway", "reader", "admin", "reporter"}  # fmt: skip
    assert {f"{name}.token" for name, _, _ in entries} == {f for _, _, f in entries}
    # the example's lists render, and keep every token the chart requires
    values = yaml.safe_load(example.group(1))
    values["services"]["notifier"]["secretEnv"] += [
        {"env": "QM_NOTIFIER_SLACK_BOT_TOKEN", "secretKey": "slack-bot-token"}]  # fmt: skip
    refs = _secret_refs(manifests(render(values)))
    for deployment in CALLED.values():
        assert "QM_TOKENS" in refs[deployment], deployment
    assert "QM_REQUESTS_CLIENT_TOKEN" in refs["requests"]
    assert "name:token," not in (ROOT / "docs" / "operations.md").read_text()
