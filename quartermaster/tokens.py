"""Credentials as settings hold them: `name:role[+role]:token,...` (QM_TOKENS).

One variable for every service, so one secret serves a whole deployment (one Helm
secret, one place to rotate): each server honours the roles its methods need
(quartermaster.roles) and ignores the rest. The name is who the audit trail records;
roles are `gateway`, `reader`, `admin`, `prices`, `member`, `delegate` and `reporter`
(what each may call: quartermaster.roles, docs/security.md; `reporter` posts usage to
metering's HTTP ingest, no gRPC method; for `member` and `admin` the name is
the person's directory user id); the token is 16 or more characters without ':', ',',
quotes or spaces, told to the caller, who sends `authorization: Bearer <token>`.
Quotes and extra `:fields` are refused rather than read as part of a name or token:
both are quoting or pasting mistakes, and taken literally they make a credential no
caller can present.

Pure (no gRPC): every service's settings parse these, including the metering worker's,
which serves no gRPC and so never imports grpcio (~17 MB of RSS, measured). Checking a
caller's token is `quartermaster.auth`, in the servers.
"""

from __future__ import annotations

import secrets
import sys
from dataclasses import dataclass
from typing import Annotated

from pydantic import AfterValidator

ROLES = ("gateway", "reader", "admin", "prices", "member", "delegate", "reporter")
MIN_TOKEN_CHARS = 16
_QUOTES = frozenset("\"'`")


TOKEN_PREFIX = "qm_"


def new_token() -> str:
    """A fresh token: TOKEN_PREFIX and 32 URL-safe characters (192 random bits). The
    prefix keeps it from starting with "-" (a quarter of `secrets.token_urlsafe`'s do),
    which a command line reads as an option (`--token -VIl...`: "expected one
    argument"), and lets secret scanners recognise one."""
    return TOKEN_PREFIX + secrets.token_urlsafe(24)


@dataclass(frozen=True, slots=True)
class Grant:
    """Who a token speaks for: `name` (the audit actor) and the roles it holds."""

    name: str
    roles: frozenset[str]


def parse_tokens(spec: str) -> dict[str, Grant]:
    """ "ops:admin+prices:tok,gw:gateway:tok2" → {token: Grant}. ValueError names the
    bad entry (by position and name, never quoting a token): a missing or extra part,
    a quote, a space in the token, an unknown role, a short token, a token given
    twice."""
    out: dict[str, Grant] = {}
    for i, part in enumerate(p.strip() for p in spec.split(",") if p.strip()):
        name, roles, token = _entry(f"entry {i + 1}", part)
        if token in out:
            raise ValueError(f"entry {i + 1} ({name}): the same token as {out[token].name}")
        out[token] = Grant(name, roles)
    return out


def _entry(where: str, part: str) -> tuple[str, frozenset[str], str]:
    """One `name:role[+role]:token` entry, checked; `where` says which in errors."""
    fields = [f.strip() for f in part.split(":")]
    # The name may be shown (it is what logs say anyway), never the token.
    shown = fields[0].strip("\"'` ") if len(fields) > 1 else ""
    label = f"{where} ({shown})" if shown else where
    if any(c in _QUOTES for c in part):
        raise ValueError(
            f"{label}: has a quote; write QM_TOKENS without quotes inside "
            "(quote the whole value once, if your shell or .env file needs it)"
        )
    if len(fields) != 3:
        said = "a part is missing" if len(fields) < 3 else "too many ':' (a token has none)"
        raise ValueError(f"{label}: expected name:role[+role]:token, {said}")
    name, roles_spec, token = fields
    roles = frozenset(r.strip() for r in roles_spec.split("+") if r.strip())
    if not name:
        raise ValueError(f"{where}: the name is empty")
    unknown = sorted(roles - set(ROLES))
    if unknown or not roles:
        said = ", ".join(unknown) or "none"
        raise ValueError(f"{label}: unknown role {said}; roles: {', '.join(ROLES)}")
    if len(token) < MIN_TOKEN_CHARS:
        raise ValueError(f"{label}: the token needs {MIN_TOKEN_CHARS}+ characters")
    if any(c.isspace() for c in token):
        raise ValueError(f"{label}: the token has a space in it")
    return name, roles, token


def _valid_spec(spec: str) -> str:
    parse_tokens(spec)  # its ValueError names the bad entry
    return spec


TokenSpec = Annotated[str, AfterValidator(_valid_spec)]
"""A settings field holding "name:role[+role]:token,..." (empty: no credential at all)."""


if __name__ == "__main__":  # `python -m quartermaster.tokens`: print a fresh token
    sys.stdout.write(new_token() + "\n")
