"""Every call to our gRPC servers is authenticated here, in one place: a grpc.aio
server interceptor that every service's wiring installs (`server()`).

A caller sends `authorization: Bearer <token>` with a token of QM_TOKENS
(quartermaster.tokens). The interceptor answers, before the request is even parsed:

- no credential, a malformed one, or an unknown token: UNAUTHENTICATED, saying which;
- a known token without a role the method needs (quartermaster.roles): PERMISSION_DENIED
  naming the method, the roles that may call it and the credential's name and roles;
- a method missing from the roles table: PERMISSION_DENIED for every credential (deny
  by default);
- a server with no tokens at all refuses every call (fail closed), and says so at
  start-up in the log, at ERROR.

Health (grpc.health.v1) and server reflection need no credential: probes and grpcurl
discovery work as before. A servicer learns who called from `caller()`: the identity
comes from the credential only, never from a field the caller fills in.

On the hot path a call costs one metadata scan, one SHA-256 of the token and one dict
lookup by that digest (comparing digests, not tokens, keeps the lookup's timing from
telling anything about a token), and a frozenset check; refusals are built per call
(they are not the hot path).
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Awaitable, Callable, Mapping
from contextvars import ContextVar
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeAlias

import grpc

from quartermaster import roles, telemetry
from quartermaster.grpcserver import bounded
from quartermaster.rpcmetrics import RpcMetrics
from quartermaster.tokens import Grant

log = logging.getLogger("qm.auth")
EXEMPT = ("/grpc.health.v1.Health/", "/grpc.reflection.")


@dataclass(frozen=True, slots=True)
class Caller:
    """Who is calling: the credential's `name` (the audit actor) and its `roles`.

    Made from a credential only. Who a person is (their own credential, or a delegate
    acting for them) is `person()`, for the servicers that act for people."""

    name: str
    roles: frozenset[str]


_CALLER: ContextVar[Caller] = ContextVar("qm_caller")


def caller() -> Caller:
    """The caller of the call being served (set by the interceptor for this call's
    task). Raises LookupError outside a call that went through `Authenticator`: a
    server without it must fail, not serve anonymous callers."""
    return _CALLER.get()


ON_BEHALF_OF = "qm-on-behalf-of"
MAX_USER_ID = 200


@dataclass(frozen=True, slots=True)
class Person:
    """The person a call acts for: `user_id` (their directory id), `via` the delegate
    service's credential name ("" when they called with their own credential), and
    `admin` when their own credential holds role admin (a delegate never lends it)."""

    user_id: str
    via: str = ""
    admin: bool = False

    @property
    def shown(self) -> str:
        """ "ann", or "ann via notifier" when a delegate acted for her."""
        return f"{self.user_id} via {self.via}" if self.via else self.user_id


class NotAPerson(Exception):
    """The call names no person it may act for; `invalid` True when the metadata is
    missing or malformed (INVALID_ARGUMENT), False when the credential may not act for
    the person named (PERMISSION_DENIED)."""

    def __init__(self, message: str, *, invalid: bool) -> None:
        super().__init__(message)
        self.invalid = invalid


def person(found: Caller, metadata: Any) -> Person:
    """Who the call of `found` (an authenticated caller) acts for. A `member` or `admin`
    credential is the person it names; a `delegate` names the person in metadata
    `qm-on-behalf-of` (the person it authenticated itself). Raises NotAPerson: a
    delegate naming nobody or a malformed id (invalid), metadata qm-on-behalf-of from
    a credential without role delegate, or a credential that is no person (not invalid)."""
    named = None
    for key, value in metadata or ():
        if key == ON_BEHALF_OF:
            named = str(value).strip()
            break
    if named is not None:
        if roles.DELEGATE not in found.roles:
            raise NotAPerson(
                f"{ON_BEHALF_OF}: only a credential with role delegate may act for someone; "
                f"{found.name!r} has {' + '.join(sorted(found.roles))}", invalid=False
            )  # fmt: skip
        if not named or len(named) > MAX_USER_ID or not named.isprintable() or " " in named:
            raise NotAPerson(f"{ON_BEHALF_OF}: expected a user id (1-{MAX_USER_ID} printable "
                             "characters, no spaces)", invalid=True)  # fmt: skip
        return Person(named, via=found.name)
    if found.roles & {roles.MEMBER, roles.ADMIN}:
        return Person(found.name, admin=roles.ADMIN in found.roles)
    if roles.DELEGATE in found.roles:
        raise NotAPerson(f"{ON_BEHALF_OF}: a delegate credential must name the person it acts "
                         "for (metadata qm-on-behalf-of: <user id>)", invalid=True)  # fmt: skip
    raise NotAPerson(f"credential {found.name!r} is no person (roles "
                     f"{' + '.join(sorted(found.roles))}): this needs member, delegate or admin",
                     invalid=False)  # fmt: skip


Handler: TypeAlias = "grpc.RpcMethodHandler[Any, Any]"


def _refusal(code: grpc.StatusCode, message: str) -> Handler:
    async def refuse(_request: object, context: grpc.aio.ServicerContext[Any, Any]) -> None:
        await context.abort(code, bounded(message))

    return grpc.unary_unary_rpc_method_handler(refuse)


if TYPE_CHECKING:  # grpc-stubs make it generic; grpcio's class is not subscriptable
    _Interceptor = grpc.aio.ServerInterceptor[Any, Any]
else:
    _Interceptor = grpc.aio.ServerInterceptor


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).digest()


class Authenticator(_Interceptor):
    """The interceptor (see the module docstring). `grants`: token → Grant, as
    quartermaster.tokens.parse_tokens gives; `table`: method path → roles."""

    def __init__(
        self,
        grants: Mapping[str, Grant],
        table: Mapping[str, frozenset[str]] = roles.METHOD_ROLES,
        server_name: str = "this server",
    ) -> None:
        self._callers = {_digest(t): Caller(g.name, g.roles) for t, g in grants.items()}
        self._table = table
        self._server_name = server_name
        if not grants:
            log.error(
                "%s has no credentials (QM_TOKENS is empty): it refuses every call but "
                "health and reflection", server_name
            )  # fmt: skip

    def check(self, method: str, metadata: Any) -> Caller | tuple[grpc.StatusCode, str]:
        """The caller of `method` (a gRPC path) with `metadata` (key, value pairs), or
        the (status, message) it is refused with."""
        header = None
        for key, value in metadata or ():
            if key == "authorization":
                header = value
                break
        if header is None:
            return grpc.StatusCode.UNAUTHENTICATED, (
                f"{roles.short(method)} needs a credential: metadata "
                f"authorization: Bearer <token> with role {self._roles_of(method)}"
            )
        scheme, _, token = str(header).partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            return grpc.StatusCode.UNAUTHENTICATED, "authorization: expected Bearer <token>"
        found = self._callers.get(_digest(token.strip()))
        if found is None:
            if not self._callers:
                return grpc.StatusCode.UNAUTHENTICATED, (
                    f"{self._server_name} accepts no credential (QM_TOKENS is empty): "
                    "every call is refused"
                )
            # Said with the server's name: a caller with several servers' tokens learns
            # which one refused, and where the token would have to be.
            return grpc.StatusCode.UNAUTHENTICATED, (
                f"authorization: unknown token: {self._server_name} accepts no such "
                "token (is it in this server's QM_TOKENS?)"
            )
        allowed = self._table.get(method)
        if not allowed or found.roles.isdisjoint(allowed):
            return grpc.StatusCode.PERMISSION_DENIED, (
                f"{roles.short(method)} needs role {self._roles_of(method)}; "
                f"credential {found.name!r} has {' + '.join(sorted(found.roles))}"
            )
        return found

    def _roles_of(self, method: str) -> str:
        allowed = self._table.get(method)
        return " or ".join(sorted(allowed)) if allowed else "(none: no one may call it)"

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[Handler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> Handler:
        method = handler_call_details.method
        if method.startswith(EXEMPT):
            return await continuation(handler_call_details)
        found = self.check(method, handler_call_details.invocation_metadata)
        if not isinstance(found, Caller):
            return _refusal(*found)
        # grpc.aio runs the interceptors and then the method in the call's own task, so
        # this is seen by the method and by nothing else.
        _CALLER.set(found)
        return await continuation(handler_call_details)


# How long a client's connection lives before the server asks it (HTTP/2 GOAWAY) to
# make a new one, and how long calls in flight then have to finish. gRPC clients keep
# one connection per channel, so behind a Kubernetes Service (one virtual IP) every
# gateway stayed on the replica it first reached: replicas added by the autoscaler got
# no traffic. A new connection goes to whichever replica kube-proxy picks, so load
# spreads again within this age. The client reconnects without failing a call (gRPC's
# max_connection_age, A9 in grpc/proposal).
MAX_CONNECTION_AGE_S = 300.0
MAX_CONNECTION_AGE_GRACE_S = 30.0


def server(
    grants: Mapping[str, Grant],
    server_name: str,
    max_connection_age_s: float = MAX_CONNECTION_AGE_S,
) -> grpc.aio.Server:
    """A grpc.aio server whose every call but health and reflection goes through an
    `Authenticator` of `grants` (token → Grant), counted and timed by
    `quartermaster.rpcmetrics` (refusals included); `server_name` is said in logs.
    Connections are renewed after `max_connection_age_s` seconds (see above)."""
    return grpc.aio.server(
        interceptors=[
            *telemetry.server_interceptors(),  # a span per call when tracing is on
            RpcMetrics(),
            Authenticator(grants, server_name=server_name),
        ],
        options=[
            ("grpc.max_connection_age_ms", int(max_connection_age_s * 1000)),
            ("grpc.max_connection_age_grace_ms", int(MAX_CONNECTION_AGE_GRACE_S * 1000)),
        ],
    )
