"""Credentials as settings hold them: `name:role[+role]:token,...` (QM_TOKENS).

One variable for every service, so one secret serves a whole deployment (one Helm
secret, one place to rotate): each server honours the roles its methods need
(quartermaster.roles) and ignores the rest. The name is who the audit trail records;
roles are `gateway`, `reader`, `admin`, `prices`, `member` and `delegate` (what each
may call: quartermaster.roles, docs/security.md; for `member` and `admin` the name is
the person's directory user id); the token is 16 or more characters, told to
the caller, who sends `authorization: Bearer <token>`.

Pure (no gRPC): every service's settings parse these, including the metering worker's,
which serves no gRPC and so never imports grpcio (~17 MB of RSS, measured). Checking a
caller's token is `quartermaster.auth`, in the servers.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from pydantic import AfterValidator

ROLES = ("gateway", "reader", "admin", "prices", "member", "delegate")
MIN_TOKEN_CHARS = 16


@dataclass(frozen=True, slots=True)
class Grant:
    """Who a token speaks for: `name` (the audit actor) and the roles it holds."""

    name: str
    roles: frozenset[str]


def parse_tokens(spec: str) -> dict[str, Grant]:
    """ "ops:admin+prices:tok,gw:gateway:tok2" → {token: Grant}. ValueError names the
    bad entry (by position, never quoting a token): a missing part, an unknown role, a
    short token, a token given twice. A token may hold ':' (the first two split)."""
    out: dict[str, Grant] = {}
    for i, part in enumerate(p.strip() for p in spec.split(",") if p.strip()):
        where = f"entry {i + 1}"
        fields = part.split(":", 2)
        if len(fields) != 3:
            raise ValueError(f"{where}: expected name:role[+role]:token")
        name, roles_spec, token = (f.strip() for f in fields)
        roles = frozenset(r.strip() for r in roles_spec.split("+") if r.strip())
        if not name:
            raise ValueError(f"{where}: the name is empty")
        unknown = sorted(roles - set(ROLES))
        if unknown or not roles:
            said = ", ".join(unknown) or "none"
            raise ValueError(f"{where} ({name}): unknown role {said}; roles: {', '.join(ROLES)}")
        if len(token) < MIN_TOKEN_CHARS:
            raise ValueError(f"{where} ({name}): the token needs {MIN_TOKEN_CHARS}+ characters")
        if token in out:
            raise ValueError(f"{where} ({name}): the same token as {out[token].name}")
        out[token] = Grant(name, roles)
    return out


def _valid_spec(spec: str) -> str:
    parse_tokens(spec)  # its ValueError names the bad entry
    return spec


TokenSpec = Annotated[str, AfterValidator(_valid_spec)]
"""A settings field holding "name:role[+role]:token,..." (empty: no credential at all)."""
