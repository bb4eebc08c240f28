"""What `make run` tells the person at the terminal about credentials, TLS and where
to reach things, and the tokens it makes for a run (tested line by line without
infrastructure: tests/integration/test_make_run_lines.py)."""

from __future__ import annotations

import os

from devtools import demo_requests as demo
from quartermaster.tokens import new_token, parse_tokens
from services.policy.settings import PolicySettings


def grpcurl_tls(policy: PolicySettings) -> str:
    """grpcurl's flags for reaching policy as this run's settings say."""
    if policy.tls_cert_file is None:
        return "-plaintext"
    files = {"-cacert": policy.tls_ca_file, "-cert": policy.tls_client_cert_file,
             "-key": policy.tls_client_key_file}  # fmt: skip
    return " ".join(f"{flag} {path}" for flag, path in files.items() if path is not None)


def demo_tokens() -> str:
    """QM_TOKENS for a run: one fresh token per role (ops holds admin and prices), and
    one each for carol and her manager alice as themselves (member: the credit request)."""
    names = ("gateway", "reader", "ops", "notifier", "reporter")
    made = {name: new_token() for name in names}
    # notifier: decides a Slack click at the requests service as the person who clicked
    roles = {"gateway": "gateway", "reader": "reader", "ops": "admin+prices+reader",
             "notifier": "delegate", "reporter": "reporter"}  # fmt: skip
    spec = [f"local-{name}:{roles[name]}:{token}" for name, token in made.items()]
    spec += [f"{who}:member:{new_token()}" for who in (demo.ASKER, demo.MANAGER)]
    return ",".join(spec)


def token_with(spec: str, role: str) -> str:
    """The first token of `spec` (QM_TOKENS) holding `role`; "" when none does."""
    return next((t for t, grant in parse_tokens(spec).items() if role in grant.roles), "")


def tls_line(policy: PolicySettings) -> str:
    """Whether this run's servers speak TLS, said once at start."""
    if policy.tls_cert_file is None:
        return (
            "  TLS: off (plaintext, for this machine only; QM_TLS_CERT_FILE and "
            "QM_TLS_KEY_FILE in the environment turn it on: docs/security.md#tls)"
        )
    mutual = ", mutual: clients need a certificate" if policy.tls_client_ca_file else ""
    return f"  TLS: on (QM_TLS_* from the environment{mutual})"


def credential_lines(spec: str, made: bool, policy: PolicySettings) -> list[str]:
    """What to tell the person at the terminal about this run's credentials (`spec`:
    its QM_TOKENS): with tokens `made` for this run, each token with its name and
    roles; with QM_TOKENS from the environment, names and roles only (the tokens are
    that person's secrets: never printed), and the hints with a placeholder."""
    grants = parse_tokens(spec)

    def token(role: str) -> str:
        found = token_with(spec, role)
        return found if made and found else f"<a token with role {role}>"

    lines = [tls_line(policy)]
    if made:
        lines.append("  tokens made for this run (QM_TOKENS; roles: docs/security.md):")
        lines += [f"    {g.name} ({'+'.join(sorted(g.roles))}) {t}" for t, g in grants.items()]
        lines.append("    (the gateway one is the README's gateway_token, for PolicyClient)")
    else:
        said = ", ".join(f"{g.name} ({'+'.join(sorted(g.roles))})" for g in grants.values())
        lines.append(f"  tokens: QM_TOKENS from the environment, not shown: {said or 'none'}")
    admin = token("admin")
    lines += [
        "  with grpcurl, where it is installed:",
        f"    grpcurl {grpcurl_tls(policy)} -H 'authorization: Bearer {admin}' -d "
        "'{\"user_id\":\"carol\"}' "
        f"{policy.addr} quartermaster.v1.PolicyAdminService/ExplainLimit",
        f"    QM_TOKEN={token('prices')} .venv/bin/python -m services.metering.cli "
        "prices load services/metering/prices.yaml --dry-run",
    ]  # fmt: skip
    return lines


def ingest_line(env: dict[str, str], policy: PolicySettings) -> str:
    """Where metering's HTTP ingest listens, and how to post to it: with the reporter
    token `make run` made, else a placeholder (the environment's tokens are secret)."""
    addr = env.get("QM_METERING_INGEST_ADDR", "127.0.0.1:8094")
    scheme = "https" if policy.tls_cert_file is not None else "http"
    made = token_with(env["QM_TOKENS"], "reporter")
    token = made if made and not os.environ.get("QM_TOKENS") else "<a token with role reporter>"
    return (
        f"  HTTP ingest on {scheme}://{addr}/v1/usage (JSON or NDJSON UsageEvents):\n"
        f"    .venv/bin/python -m services.metering.report --http {scheme}://{addr}/v1/usage "
        f"--token={token} < events.jsonl"
    )
