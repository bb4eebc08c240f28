"""TLS and mutual TLS on the real servers (issue 14, item 17): policy started through
its wiring with QM_TLS_* (a replica of a workspace of its own), and metering's Cost
API, whose directory client reaches that policy over mutual TLS. Certificates are made
in the test (trustme); every client is built by the platform (open_channel,
PolicyClient, the metering CLI) from settings or ClientTls.

With a health port (QM_*_HEALTH_ADDR), a TLS server also answers the gRPC health service,
alone, in plaintext there: the kubelet's native gRPC probes can't speak TLS.

A handshake that fails (an untrusted server, a server that wants a client certificate
the client lacks or that another CA signed, plaintext against TLS) fails the call with
UNAVAILABLE: the client can't reach the server, and PolicyClient's fail mode answers.
"""

from __future__ import annotations

import asyncio
import io
from collections.abc import AsyncIterator

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from devtools.localinfra import free_port
from quartermaster.config import CommonSettings
from quartermaster.grpcclient import open_channel
from quartermaster.money import MICROS_PER_CREDIT
from quartermaster.policy_client import FailMode, PolicyClient
from quartermaster.tls import ClientTls
from quartermaster.v1 import policy_pb2
from services.metering import api, cli
from services.metering.settings import MeteringSettings
from tests.conftest import Replicas
from tests.helpers import SERVED_WITHIN_S, TOKENS, eventually, refusal
from tests.tlskit import Pki, check, health, make_pki, usage_of_groups

pytestmark = pytest.mark.infra
DOWN = grpc.StatusCode.UNAVAILABLE
ALLOW = policy_pb2.DECISION_ALLOW


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


def client_tls(env: dict[str, str]) -> ClientTls | None:
    """A client's TLS as a service reads it from its QM_TLS_* settings."""
    return CommonSettings.from_env(env).client_tls


async def tls_policy(replicas: Replicas, pki: Pki, *, mutual: bool) -> str:
    """A policy replica serving TLS (mutual: clients must show a certificate of
    pki.ca), its workspace limited to 10 credits; its address."""
    await replicas.set_default(10 * MICROS_PER_CREDIT)
    [running] = await replicas.start(1, **pki.server_env(mutual=mutual))
    return f"127.0.0.1:{running.port}"


async def refused(target: str, tls: ClientTls | None) -> tuple[grpc.StatusCode, str]:
    async with open_channel(target, tls) as channel:
        return await refusal(check(channel))


async def test_policy_over_tls_answers_clients_that_trust_its_ca(
    replicas: Replicas, pki: Pki
) -> None:
    target = await tls_policy(replicas, pki, mutual=False)
    async with open_channel(target, client_tls(pki.client_env())) as channel:
        assert (await check(channel)).decision == ALLOW
        assert await health(channel) == "SERVING"
    async with PolicyClient(
        target,
        fail=FailMode.CLOSED,
        deadline_s=SERVED_WITHIN_S,
        token=TOKENS["gateway"],
        tls=client_tls(pki.client_env()),
    ) as pc:
        answer = await pc.check("ann", "chat", "gpt-5")
        assert (answer.decision, pc.degraded) == (ALLOW, 0)

    # QM_TLS_SERVER_NAME is the name checked in the server's certificate.
    named = client_tls(pki.client_env() | {"QM_TLS_SERVER_NAME": "localhost"})
    async with open_channel(target, named) as channel:
        assert (await check(channel)).decision == ALLOW
    elsewhere = client_tls(pki.client_env() | {"QM_TLS_SERVER_NAME": "policy.elsewhere.test"})
    assert (await refused(target, elsewhere))[0] == DOWN

    # A plaintext client gets no answer from a TLS server.
    assert (await refused(target, None))[0] == DOWN


async def test_a_client_that_does_not_trust_the_ca_meets_unavailable_and_its_fail_mode(
    replicas: Replicas, pki: Pki
) -> None:
    target = await tls_policy(replicas, pki, mutual=False)
    strangers = ClientTls.from_files(pki.other_ca)
    assert (await refused(target, strangers))[0] == DOWN
    assert (await refused(target, ClientTls()))[0] == DOWN  # gRPC's default roots

    for mode, source in ((FailMode.OPEN, "fail_open"), (FailMode.CLOSED, "fail_closed")):
        async with PolicyClient(
            target, fail=mode, deadline_s=2.0, token=TOKENS["gateway"], tls=strangers
        ) as pc:
            answer = await pc.check("ann", "chat", "gpt-5")
            assert answer.limit_source == source
            assert "policy unreachable (UNAVAILABLE" in answer.reason
            assert pc.degraded == 1


async def test_mutual_tls_policy_answers_only_clients_with_a_certificate_of_its_ca(
    replicas: Replicas, pki: Pki
) -> None:
    target = await tls_policy(replicas, pki, mutual=True)
    assert (await refused(target, client_tls(pki.client_env())))[0] == DOWN  # no certificate
    stranger = ClientTls.from_files(pki.ca, pki.stranger_cert, pki.stranger_key)
    assert (await refused(target, stranger))[0] == DOWN  # another CA's
    assert (await refused(target, None))[0] == DOWN

    gateway = client_tls(pki.client_env(with_cert=True))
    async with open_channel(target, gateway) as channel:
        assert (await check(channel)).decision == ALLOW
        assert await health(channel) == "SERVING"
    async with PolicyClient(
        target,
        fail=FailMode.CLOSED,
        deadline_s=SERVED_WITHIN_S,
        token=TOKENS["gateway"],
        tls=gateway,
    ) as pc:
        assert (await pc.check("ann", "chat", "gpt-5")).decision == ALLOW


async def _status(target: str, service: str = "") -> str:
    """What the health service at `target` says of `service`, asked in plaintext."""
    async with grpc.aio.insecure_channel(target) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        answer = await stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=10)
    return str(health_pb2.HealthCheckResponse.ServingStatus.Name(answer.status))


async def test_a_mutual_tls_server_answers_plaintext_health_alone_on_its_health_port(
    replicas: Replicas, pki: Pki
) -> None:
    await replicas.set_default(10 * MICROS_PER_CREDIT)
    [running] = await replicas.start(
        1, QM_POLICY_HEALTH_ADDR=f"127.0.0.1:{free_port()}", **pki.server_env(mutual=True)
    )
    probe = f"127.0.0.1:{running.served.health_port}"  # as the kubelet asks: plaintext
    target = f"127.0.0.1:{running.port}"
    gateway = client_tls(pki.client_env(with_cert=True))
    assert running.served.health_port not in (0, running.port)
    for service in ("", "quartermaster.v1.PolicyService", "liveness"):
        assert await _status(probe, service) == "SERVING", service

    # Nothing else is there: not policy's services, not reflection.
    async with grpc.aio.insecure_channel(probe) as channel:
        assert (await refusal(check(channel)))[0] == grpc.StatusCode.UNIMPLEMENTED
        reflect = reflection_pb2_grpc.ServerReflectionStub(channel).ServerReflectionInfo(
            iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=10
        )
        with pytest.raises(grpc.aio.AioRpcError) as listed:
            await reflect.read()
        assert listed.value.code() == grpc.StatusCode.UNIMPLEMENTED
    # The main port still wants TLS with a client certificate, health included.
    assert (await refused(target, None))[0] == DOWN

    # The same status as the main port's health service, from the same readiness: a
    # replica that stops being ready (as when its totals topic was recreated) says
    # NOT_SERVING on both, and stays alive ("liveness") for the probe that restarts.
    running.readiness.broken("tests", "made unready by the test")
    await eventually(lambda: _status(probe), "NOT_SERVING")
    async with open_channel(target, gateway) as channel:
        assert await health(channel) == "NOT_SERVING"
    assert await _status(probe, "liveness") == "SERVING"
    running.readiness.clear("tests")
    await eventually(lambda: _status(probe), "SERVING")
    async with open_channel(target, gateway) as channel:
        assert await health(channel) == "SERVING"

    # Stopping: NOT_SERVING during the grace, then nothing listens there.
    replicas.running.remove(running)
    await running.stop(1)
    with pytest.raises(grpc.aio.AioRpcError) as gone:
        await _status(probe)
    assert gone.value.code() == DOWN


@pytest.fixture
async def cost_api_env(replicas: Replicas, pki: Pki, service_env: dict[str, str]) -> dict[str, str]:
    """The Cost API's environment: mutual TLS for its server, and for its directory
    client a mutual-TLS policy replica."""
    policy = await tls_policy(replicas, pki, mutual=True)
    return (
        service_env
        | {"QM_DIRECTORY_ADDR": policy}
        | pki.server_env(mutual=True)
        | pki.client_env(with_cert=True)
    )


@pytest.fixture
async def cost_api(cost_api_env: dict[str, str]) -> AsyncIterator[str]:
    running = await api.start(MeteringSettings.from_env(cost_api_env), addr="127.0.0.1:0")
    try:
        yield f"127.0.0.1:{running.served.port}"
    finally:
        await running.stop(1)


async def test_cost_api_over_mutual_tls_asks_the_directory_over_mutual_tls(
    cost_api: str, pki: Pki
) -> None:
    async with open_channel(cost_api, client_tls(pki.client_env(with_cert=True))) as channel:
        assert await health(channel) == "SERVING"
        # An unknown group is the directory's answer (INVALID_ARGUMENT naming it), so the
        # Cost API reached policy over mutual TLS; an unreachable one is UNAVAILABLE.
        code, details = await refusal(usage_of_groups(channel, "no-such-group"))
        assert (code, details) == (
            grpc.StatusCode.INVALID_ARGUMENT,
            "filter.group_ids: no group(s) ['no-such-group']",
        )
        assert (await usage_of_groups(channel)).rows is not None
    for tls in (None, client_tls(pki.client_env())):
        async with open_channel(cost_api, tls) as channel:
            assert (await refusal(usage_of_groups(channel)))[0] == DOWN


async def test_a_cost_api_without_a_client_certificate_cannot_reach_the_directory(
    cost_api_env: dict[str, str], pki: Pki
) -> None:
    env = {k: v for k, v in cost_api_env.items() if not k.startswith("QM_TLS_CLIENT_")}
    env["QM_TLS_CLIENT_CA_FILE"] = cost_api_env["QM_TLS_CLIENT_CA_FILE"]  # its server's
    running = await api.start(MeteringSettings.from_env(env), addr="127.0.0.1:0")
    try:
        target = f"127.0.0.1:{running.served.port}"
        async with open_channel(target, client_tls(pki.client_env(with_cert=True))) as channel:
            code, details = await refusal(usage_of_groups(channel, "eng"))
    finally:
        await running.stop(1)
    assert code == DOWN
    assert "groups need policy's DirectoryService at" in details
    assert "(QM_DIRECTORY_ADDR): UNAVAILABLE" in details


async def test_the_metering_cli_uses_the_tls_settings(
    cost_api: str, pki: Pki, monkeypatch: pytest.MonkeyPatch
) -> None:
    argv = ["--addr", cost_api, "top", "--from", "2026-01-01", "--to", "2026-01-02"]
    for name, value in pki.client_env(with_cert=True).items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("QM_TOKEN", TOKENS["reader"])
    assert await asyncio.to_thread(cli.main, argv, io.StringIO()) == 0
    monkeypatch.delenv("QM_TLS_CLIENT_CERT_FILE")
    monkeypatch.delenv("QM_TLS_CLIENT_KEY_FILE")
    assert await asyncio.to_thread(cli.main, argv, io.StringIO()) == 2  # UNAVAILABLE
