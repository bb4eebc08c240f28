"""Admin token specs as settings hold them: `name:token,...` (tokens of 16+ characters).

Pure (no gRPC): every service's settings parse these, including the metering worker's,
which serves no gRPC and so never imports grpcio (~17 MB of RSS, measured). Checking a
caller's token is `quartermaster.credentials.Credentials`, in the servers.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import AfterValidator


def parse_tokens(spec: str) -> dict[str, str]:
    """ "name:token,name2:token2" → {token: name}; ValueError names a bad entry."""
    out: dict[str, str] = {}
    for i, part in enumerate(p.strip() for p in spec.split(",") if p.strip()):
        name, sep, token = part.partition(":")
        if not sep or not name.strip() or len(token.strip()) < 16:
            raise ValueError(
                f"entry {i + 1}: expected name:token with a token of 16 or more characters"
            )
        out[token.strip()] = name.strip()
    return out


def _valid_spec(spec: str) -> str:
    parse_tokens(spec)  # its ValueError names the bad entry
    return spec


TokenSpec = Annotated[str, AfterValidator(_valid_spec)]
"""A settings field holding "name:token,..." (empty: no credential at all)."""
