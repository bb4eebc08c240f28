"""Admin credentials for gRPC calls that change money rules: bearer tokens with names.

A service is given `name:token,...` (tokens of 16+ characters); a caller sends
`authorization: Bearer <token>` metadata; the token's name is the actor recorded
in the audit trail. Tokens are compared in constant time. The `name:token,...` spec
itself is parsed by `quartermaster.tokens` (pure: settings import it without gRPC).
"""

from __future__ import annotations

import hmac
from collections.abc import Mapping
from typing import Any

import grpc

from quartermaster.grpcserver import abort


class Credentials:
    def __init__(self, tokens: Mapping[str, str], what: str = "change policy") -> None:
        self._tokens = dict(tokens)
        self._what = what

    def actor(self, metadata: Any, what: str = "") -> tuple[grpc.StatusCode, str] | str:
        """The token's name, or (status, message) when the caller is no admin;
        `what` the call needed the credential for (default: the one given at
        construction), said when the credential is refused."""
        header = next((v for k, v in (metadata or ()) if k == "authorization"), None)
        if header is None:
            return grpc.StatusCode.UNAUTHENTICATED, (
                "admin calls need an admin credential: metadata authorization: Bearer <token>"
            )
        scheme, _, token = str(header).partition(" ")
        if scheme.lower() != "bearer" or not token:
            return grpc.StatusCode.UNAUTHENTICATED, "authorization: expected Bearer <token>"
        for known, name in self._tokens.items():
            if hmac.compare_digest(known.encode(), token.strip().encode()):
                return name
        return grpc.StatusCode.PERMISSION_DENIED, f"this credential may not {what or self._what}"

    async def require(self, context: grpc.aio.ServicerContext[Any, Any], what: str = "") -> str:
        """The caller's name; aborts the call when it is no admin (see `actor`)."""
        who = self.actor(context.invocation_metadata(), what)
        if not isinstance(who, str):
            await abort(context, *who)
        return who
