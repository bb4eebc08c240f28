"""The roles table, the credentials format and the authenticating interceptor, without
infrastructure: every RPC of every proto has a role, the docs show the table as the
code has it, bad QM_TOKENS entries are named, and a real in-process server refuses by
default but lets health and reflection through."""

from __future__ import annotations

import asyncio
import importlib
import re
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from quartermaster import auth, roles
from quartermaster.auth import Authenticator, Caller
from quartermaster.config import CommonSettings
from quartermaster.grpcserver import serve
from quartermaster.settings import SettingsError
from quartermaster.tokens import ROLES, Grant, parse_tokens
from quartermaster.v1 import policy_pb2
from tests.helpers import TOKENS, TOKENS_SPEC, metadata, refusal

ROOT = Path(__file__).resolve().parents[2]
# Every generated module, so a new proto's services are checked without listing it here.
PROTOS = [
    importlib.import_module(f"quartermaster.v1.{p.stem}")
    for p in sorted((ROOT / "quartermaster" / "v1").glob("*_pb2.py"))
]
SECRET = "s3cret-token-0123456789"


def rpcs() -> set[str]:
    """Every method of every service our protos declare, as a server sees its path."""
    return {
        f"/{service.full_name}/{method.name}"
        for module in PROTOS
        for service in module.DESCRIPTOR.services_by_name.values()
        for method in service.methods
    }


def test_every_rpc_of_every_proto_has_roles_and_the_table_names_no_other() -> None:
    assert len(PROTOS) >= 5
    assert "/quartermaster.v1.UsageService/TopSpenders" in rpcs()
    assert sorted(rpcs() - set(roles.METHOD_ROLES)) == [], "give these a role in roles.py"
    assert sorted(set(roles.METHOD_ROLES) - rpcs()) == []
    assert all(r and r <= set(ROLES) for r in roles.METHOD_ROLES.values())


def test_the_docs_show_the_table_the_code_has() -> None:
    doc = (ROOT / "docs" / "security.md").read_text()
    shown = re.search(r"<!-- roles table:.*?-->\n(.*?)\n<!-- end of roles table -->", doc, re.S)
    assert shown is not None
    assert shown.group(1).strip() == roles.markdown().strip()


def test_token_specs_parse_and_bad_entries_are_named_without_their_token() -> None:
    assert parse_tokens(f"ops : admin+reader : {SECRET} , gw:gateway:{SECRET}x") == {
        SECRET: Grant("ops", frozenset({"admin", "reader"})),
        f"{SECRET}x": Grant("gw", frozenset({"gateway"})),
    }
    bad = {
        f"ops:{SECRET}": "entry 1 (ops): expected name:role[+role]:token, a part is missing",
        # A quoting or pasting mistake, never read as a name '"gw' or a token 'tok"'.
        f'"gw-eu:gateway:{SECRET}"': "entry 1 (gw-eu): has a quote; write QM_TOKENS without",
        f"ok:reader:{SECRET}x,'gw:gateway:{SECRET}'": "entry 2 (gw): has a quote",
        f"gw-eu:gateway:{SECRET}:extra": "entry 1 (gw-eu): expected name:role[+role]:token, too",
        f"gw:gateway:{SECRET} {SECRET}": "entry 1 (gw): the token has a space in it",
        f":admin:{SECRET}": "entry 1: the name is empty",
        f"ops:root:{SECRET}": "entry 1 (ops): unknown role root; roles: gateway, reader",
        f"ops::{SECRET}": "entry 1 (ops): unknown role none",
        "ops:admin:short": "entry 1 (ops): the token needs 16+ characters",
        f"a:admin:{SECRET},b:reader:{SECRET}": "entry 2 (b): the same token as a",
    }
    for spec, said in bad.items():
        with pytest.raises(ValueError, match=re.escape(said)) as info:
            parse_tokens(spec)
        assert SECRET not in str(info.value)


def test_the_old_admin_token_variables_stop_a_service_saying_what_replaced_them() -> None:
    with pytest.raises(SettingsError) as info:
        CommonSettings.from_env({"QM_POLICY_ADMIN_TOKENS": f"ops:{SECRET}"})
    [problem] = info.value.problems
    assert problem.startswith("QM_POLICY_ADMIN_TOKENS: replaced by QM_TOKENS")
    with pytest.raises(SettingsError) as info:
        CommonSettings.from_env({"QM_TOKENS": "ops:admin:short"})
    assert info.value.problems == ["QM_TOKENS: entry 1 (ops): the token needs 16+ characters"]
    grants = CommonSettings.from_env({"QM_TOKENS": TOKENS_SPEC}).grants
    assert grants[TOKENS["reader"]] == Grant("tests-reader", frozenset({"reader"}))


CHECK = "/quartermaster.v1.PolicyService/Check"


def test_refusals_say_what_the_call_needed_and_unknown_methods_are_denied() -> None:
    auth = Authenticator(parse_tokens(TOKENS_SPEC))
    assert auth.check(CHECK, metadata("gateway")) == Caller("tests-gateway", frozenset({"gateway"}))
    assert auth.check(CHECK, ()) == (
        grpc.StatusCode.UNAUTHENTICATED,
        "PolicyService/Check needs a credential: metadata authorization: Bearer <token> "
        "with role gateway",
    )
    for header in ("Basic abc", "Bearer ", "bearer"):
        assert auth.check(CHECK, (("authorization", header),)) == (
            grpc.StatusCode.UNAUTHENTICATED, "authorization: expected Bearer <token>",
        )  # fmt: skip
    assert auth.check(CHECK, metadata("admin")) == (
        grpc.StatusCode.PERMISSION_DENIED,
        "PolicyService/Check needs role gateway; credential 'tests-admin' has admin",
    )
    # An unknown token: the refusal names the server and where the token would be.
    unknown = (("authorization", "Bearer not-one-of-ours-0123456789"),)
    assert Authenticator(parse_tokens(TOKENS_SPEC), server_name="policy").check(CHECK, unknown) == (
        grpc.StatusCode.UNAUTHENTICATED,
        "authorization: unknown token: policy accepts no such token (is it in this "
        "server's QM_TOKENS?)",
    )
    # Deny by default: a method the table does not name, whatever the credential.
    refused = auth.check("/quartermaster.v1.PolicyService/Unheard", metadata("all"))
    assert isinstance(refused, tuple)
    code, said = refused
    assert code == grpc.StatusCode.PERMISSION_DENIED
    assert said.startswith("PolicyService/Unheard needs role (none: no one may call it)")


def test_a_server_without_tokens_refuses_every_call_and_says_so(
    caplog: pytest.LogCaptureFixture,
) -> None:
    auth = Authenticator({}, server_name="policy")
    assert "policy has no credentials (QM_TOKENS is empty)" in caplog.text
    assert auth.check(CHECK, metadata("all")) == (
        grpc.StatusCode.UNAUTHENTICATED,
        "policy accepts no credential (QM_TOKENS is empty): every call is refused",
    )


async def test_health_and_reflection_need_no_credential_and_the_rest_does() -> None:
    server = grpc.aio.server(interceptors=[Authenticator({})])
    name = policy_pb2.DESCRIPTOR.services_by_name["PolicyService"].full_name
    served = await serve("127.0.0.1:0", [name], server, tls=None)
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{served.port}") as ch:
            health = await health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest())
            assert health.status == health_pb2.HealthCheckResponse.NOT_SERVING
            listing = reflection_pb2.ServerReflectionRequest(list_services="")
            stream = reflection_pb2_grpc.ServerReflectionStub(ch).ServerReflectionInfo(
                iter([listing])
            )
            async for answer in stream:
                listed = {s.name for s in answer.list_services_response.service}
                assert name in listed
            check = ch.unary_unary(CHECK, None, None)
            code, _ = await refusal(check(b"", metadata=metadata("gateway")))
            assert code == grpc.StatusCode.UNAUTHENTICATED
    finally:
        await served.stop(None)  # type: ignore[arg-type]


def test_a_person_is_named_by_their_credential_or_by_a_delegate_acting_for_them() -> None:
    member = Caller("ann", frozenset({"member"}))
    admin = Caller("ops-lee", frozenset({"admin"}))
    notifier = Caller("notifier", frozenset({"delegate"}))
    assert auth.person(member, ()) == auth.Person("ann")
    assert auth.person(admin, ()) == auth.Person("ops-lee", admin=True)
    acting = auth.person(notifier, [("qm-on-behalf-of", "bob")])
    assert acting == auth.Person("bob", via="notifier")
    assert acting.shown == "bob via notifier"
    refusals = {
        (member, "bob"): (False, "only a credential with role delegate may act for someone"),
        (admin, "bob"): (False, "only a credential with role delegate"),
        (notifier, None): (True, "a delegate credential must name the person it acts for"),
        (notifier, "bo b"): (True, "expected a user id"),
        (notifier, ""): (True, "expected a user id"),
        (Caller("dash", frozenset({"reader"})), None): (False, "credential 'dash' is no person"),
    }
    for (who, named), (invalid, said) in refusals.items():
        md = [("qm-on-behalf-of", named)] if named is not None else []
        with pytest.raises(auth.NotAPerson, match=said) as refused:
            auth.person(who, md)
        assert refused.value.invalid is invalid


async def test_connections_are_renewed_so_new_replicas_get_traffic() -> None:
    """Behind one Service IP a gateway's single connection stayed on one replica; the
    server now sends GOAWAY after its max connection age and the client reconnects
    (to whichever replica the Service picks), with no call failing."""
    server = auth.server(parse_tokens(TOKENS_SPEC), "policy", max_connection_age_s=0.5)
    served = await serve("127.0.0.1:0", [], server, tls=None)
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{served.port}") as ch:
            stub = health_pb2_grpc.HealthStub(ch)
            await stub.Check(health_pb2.HealthCheckRequest(service="liveness"))
            assert ch.get_state() == grpc.ChannelConnectivity.READY
            # The connection is closed by the server within its age and grace: the
            # channel leaves READY on its own, then a call connects again and succeeds.
            await asyncio.wait_for(ch.wait_for_state_change(grpc.ChannelConnectivity.READY), 10)
            assert ch.get_state() != grpc.ChannelConnectivity.READY
            await stub.Check(health_pb2.HealthCheckRequest(service="liveness"))
            assert ch.get_state() == grpc.ChannelConnectivity.READY
    finally:
        await served.stop(None)  # type: ignore[arg-type]
