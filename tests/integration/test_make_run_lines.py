"""What `make run` says about credentials and TLS before the demo starts (issue 14's
follow-up: a newcomer found no gateway token to try PolicyClient with, no word on
TLS, and, with QM_TOKENS of their own, no hints at all). The lines themselves, with no
infrastructure; tests/integration/test_make_run.py runs the whole of `make run`."""

from __future__ import annotations

import shlex
from pathlib import Path

from devtools import demo_requests as demo
from devtools.run_hints import credential_lines, demo_tokens
from quartermaster.tokens import TOKEN_PREFIX
from services.policy.settings import PolicySettings
from services.requests import cli
from tests.tlskit import make_pki

OWN = "gw-eu:gateway:own-gateway-token-0123456789,ops:admin+prices:own-ops-token-0123456789"


def _policy(env: dict[str, str] | None = None) -> PolicySettings:
    return PolicySettings.from_env({"QM_TOKENS": OWN, **(env or {})})


def test_made_tokens_are_shown_each_with_its_name_and_roles() -> None:
    spec = demo_tokens()
    lines = credential_lines(spec, True, _policy())
    text = "\n".join(lines)
    assert lines[0].startswith("  TLS: off (plaintext, for this machine only")
    for entry in spec.split(","):
        name, roles, token = entry.split(":")
        assert f"    {name} ({'+'.join(sorted(roles.split('+')))}) {token}" in lines
        # Never "-...": `--token -VIl...` was read as an option (the README's command failed).
        assert token.startswith(TOKEN_PREFIX)
    assert "local-gateway (gateway)" in text
    assert "the README's gateway_token, for PolicyClient" in text
    assert "grpcurl -plaintext -H 'authorization: Bearer " in text
    assert "<a token with role" not in text


def test_tokens_from_the_environment_are_named_never_shown_and_the_hints_stay() -> None:
    text = "\n".join(credential_lines(OWN, False, _policy()))
    assert "QM_TOKENS from the environment, not shown: gw-eu (gateway), ops (admin+prices)" in text
    assert "own-gateway-token" not in text
    assert "own-ops-token" not in text
    assert "-H 'authorization: Bearer <a token with role admin>'" in text
    assert "QM_TOKEN=<a token with role prices> .venv/bin/python -m services.metering.cli" in text


def test_tls_from_the_environment_is_said_with_grpcurls_flags(tmp_path: Path) -> None:
    pki = make_pki(tmp_path)
    policy = _policy(pki.server_env(mutual=True) | pki.client_env(with_cert=True))
    lines = credential_lines(OWN, False, policy)
    assert (
        lines[0] == "  TLS: on (QM_TLS_* from the environment, mutual: clients need a certificate)"
    )
    assert f"grpcurl -cacert {pki.ca} -cert {pki.client_cert}" in "\n".join(lines)


def test_the_demo_credit_request_needs_carol_and_alice_as_members() -> None:
    made, said = demo.credit_demo(demo_tokens(), "127.0.0.1:50053", None, 200, 120, 5.0)
    assert made is not None
    assert said == (
        "  when carol is denied she asks for 200 credits for 120 s; alice, her manager, decides on "
        "the Slack stand-in's page (or make run approves it for her)"
    )
    made, said = demo.credit_demo(OWN, "127.0.0.1:50053", None, 200, 120, None)
    assert made is None
    assert "no member token named carol and one named alice" in said


def test_the_printed_approve_command_is_one_the_cli_takes() -> None:
    """With QM_DEMO_AUTO_APPROVE=0 the console prints this for the person to run."""
    line = demo.approve_command("127.0.0.1:50053", "alice-token-0123", "demo-1a2b3c4d", 1)
    env, python, dash_m, module, *args = shlex.split(line)
    assert (env, python, dash_m, module) == (
        "QM_TOKEN=alice-token-0123", ".venv/bin/python", "-m", "services.requests.cli",
    )  # fmt: skip
    ns = cli.parser().parse_args(args)
    assert (ns.addr, ns.command, ns.request_id, ns.vote, ns.version) == (
        "127.0.0.1:50053", "decide", "demo-1a2b3c4d", "approve", 1,
    )  # fmt: skip
