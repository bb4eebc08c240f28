"""TLS settings checked at start, and the platform's server and channel builders
(issue 14, item 17), without infrastructure. The real policy and metering servers over
TLS and mutual TLS are in tests/integration/test_tls.py.

Certificates are made in the test (trustme)."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest

from quartermaster.config import CommonSettings
from quartermaster.grpcclient import open_channel
from quartermaster.grpcserver import Served, serve
from quartermaster.policy_client import FailMode, PolicyClient
from quartermaster.settings import SettingsError
from quartermaster.tls import ClientTls, ServerTls, handshake_hint
from tests.helpers import refusal
from tests.tlskit import Pki, health, make_pki

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


def _problems(env: dict[str, str]) -> list[str]:
    with pytest.raises(SettingsError) as caught:
        CommonSettings.from_env(env)
    return caught.value.problems


def test_tls_settings_load_into_server_and_client_material(pki: Pki) -> None:
    settings = CommonSettings.from_env(pki.server_env(mutual=True) | pki.client_env(with_cert=True))
    server, client = settings.server_tls, settings.client_tls
    assert server is not None
    assert client is not None
    assert server.cert_chain == pki.server_cert.read_bytes()
    assert server.client_ca == pki.ca.read_bytes()
    assert client.root_ca == pki.ca.read_bytes()
    assert client.private_key == pki.client_key.read_bytes()
    # A settings object, or the material, in a log line never shows a key.
    for shown in (repr(settings), repr(server), repr(client)):
        assert "PRIVATE KEY" not in shown
    unset = CommonSettings.from_env({})
    assert (unset.server_tls, unset.client_tls) == (None, None)


def test_each_wrong_tls_setting_is_named_at_start(pki: Pki, tmp_path: Path) -> None:
    missing = str(tmp_path / "missing.pem")
    assert _problems({"QM_TLS_CERT_FILE": missing, "QM_TLS_KEY_FILE": str(pki.server_key)}) == [
        f"QM_TLS_CERT_FILE: no such file: {missing}"
    ]
    # The key of another certificate.
    mismatched = {"QM_TLS_CERT_FILE": str(pki.server_cert), "QM_TLS_KEY_FILE": str(pki.client_key)}
    assert _problems(mismatched) == [
        f"QM_TLS_KEY_FILE: the key in {pki.client_key} does not match the certificate in "
        f"{pki.server_cert}"
    ]
    # A key where a certificate belongs, a certificate where a key belongs.
    [problem] = _problems({"QM_TLS_CA_FILE": str(pki.client_key)})
    assert problem.startswith(f"QM_TLS_CA_FILE: no PEM certificate in {pki.client_key}")
    swapped = {"QM_TLS_CERT_FILE": str(pki.server_cert), "QM_TLS_KEY_FILE": str(pki.server_cert)}
    [problem] = _problems(swapped)
    assert problem.startswith(f"QM_TLS_KEY_FILE: no usable PEM private key in {pki.server_cert}")
    # What goes together, alone; every one named at once.
    assert _problems(
        {
            "QM_TLS_CERT_FILE": str(pki.server_cert),
            "QM_TLS_CLIENT_CERT_FILE": str(pki.client_cert),
            "QM_TLS_SERVER_NAME": "policy.internal",
        }
    ) == [
        "QM_TLS_KEY_FILE: needed with QM_TLS_CERT_FILE",
        "QM_TLS_CLIENT_KEY_FILE: needed with QM_TLS_CLIENT_CERT_FILE",
        "QM_TLS_CLIENT_CERT_FILE: a client certificate needs QM_TLS_CA_FILE",
        "QM_TLS_SERVER_NAME: only used with QM_TLS_CA_FILE, which is unset",
    ]
    assert _problems({"QM_TLS_CLIENT_CA_FILE": str(pki.ca)}) == [
        "QM_TLS_CLIENT_CA_FILE: mutual TLS needs QM_TLS_CERT_FILE too"
    ]


def test_a_service_with_a_wrong_key_stops_at_start_naming_the_setting(pki: Pki) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("QM_")}
    env |= {"QM_TLS_CERT_FILE": str(pki.server_cert), "QM_TLS_KEY_FILE": str(pki.stranger_key)}
    for module in ("services.policy", "services.metering.api"):
        res = subprocess.run(
            [sys.executable, "-m", module], env=env, cwd=ROOT,
            capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
        assert res.returncode == 2, (module, res.stderr)
        assert "QM_TLS_KEY_FILE: the key in" in res.stderr
        assert "does not match the certificate" in res.stderr
        assert "Traceback" not in res.stderr


@pytest.fixture
async def tls_server(pki: Pki) -> AsyncIterator[Served]:
    """A bare server with only health, on TLS from this PKI's settings."""
    tls = CommonSettings.from_env(pki.server_env()).server_tls
    served = await serve("127.0.0.1:0", [], grpc.aio.server(), tls=tls)
    await served.set_serving(True)
    try:
        yield served
    finally:
        await served.stop(0)


async def test_health_over_tls_and_plaintext_refused(tls_server: Served, pki: Pki) -> None:
    target = f"127.0.0.1:{tls_server.port}"
    async with open_channel(target, ClientTls.from_files(pki.ca)) as channel:
        assert await health(channel) == "SERVING"
    async with open_channel(target, None) as channel:
        code, _ = await refusal(health(channel))
        assert code == grpc.StatusCode.UNAVAILABLE


async def test_a_plaintext_server_warns_once_at_start(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="qm.grpc"):
        served = await serve("127.0.0.1:0", [], grpc.aio.server(), tls=None)
    try:
        warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
        assert len(warnings) == 1
        assert "is plaintext (no TLS): set QM_TLS_CERT_FILE and QM_TLS_KEY_FILE" in warnings[0]
    finally:
        await served.stop(0)


def test_server_material_refuses_a_key_that_does_not_match(pki: Pki) -> None:
    with pytest.raises(ValueError, match="does not match the certificate"):
        ServerTls.from_files(pki.server_cert, pki.client_key)
    with pytest.raises(ValueError, match="go together"):
        ClientTls.from_files(pki.ca, cert=pki.client_cert)


def test_files_are_taken_as_str_or_path(pki: Pki) -> None:
    # A gateway's own config gives strings: ClientTls.from_files once crashed on them
    # ("'str' object has no attribute 'is_file'").
    as_str = ClientTls.from_files(str(pki.ca), str(pki.client_cert), str(pki.client_key))
    assert as_str == ClientTls.from_files(pki.ca, pki.client_cert, pki.client_key)
    server = ServerTls.from_files(str(pki.server_cert), str(pki.server_key), str(pki.ca))
    assert server.client_ca == pki.ca.read_bytes()
    with pytest.raises(ValueError, match=r"no such file: nowhere\.pem"):
        ClientTls.from_files("nowhere.pem")


async def _served(tls: ServerTls | None) -> Served:
    served = await serve("127.0.0.1:0", [], grpc.aio.server(), tls=tls)
    await served.set_serving(True)
    return served


async def test_tls_mistakes_are_named_in_the_fail_modes_answer_and_warned_once(
    pki: Pki, caplog: pytest.LogCaptureFixture
) -> None:
    """Each mistake a tester made, against a real TLS, mutual-TLS or plaintext server:
    gRPC says only UNAVAILABLE ("Socket closed", a handshake failure), so a fail-open
    gateway allowed everything without a word about TLS. The answer's reason now names
    the setting to look at, and the client warns once (not once per call)."""
    tls = ServerTls.from_files(pki.server_cert, pki.server_key)
    mutual = ServerTls.from_files(pki.server_cert, pki.server_key, pki.ca)
    servers = {"tls": await _served(tls), "mutual": await _served(mutual),
               "plain": await _served(None)}  # fmt: skip
    trusting = ClientTls.from_files(pki.ca)
    cases = [
        ("tls", None, "it likely wants TLS, and this client is plaintext: set QM_TLS_CA_FILE"),
        ("tls", ClientTls.from_files(pki.other_ca), "does not trust the server's certificate"),
        ("mutual", trusting, "likely wants mutual TLS: give a client certificate"),
        ("mutual", ClientTls.from_files(pki.ca, pki.stranger_cert, pki.stranger_key),
         "likely refused this client certificate"),
        ("plain", trusting, "the server answers in plaintext: is the server's QM_TLS_CERT_FILE"),
    ]  # fmt: skip
    try:
        for server, client_tls, hint in cases:
            target = f"localhost:{servers[server].port}"
            caplog.clear()
            with caplog.at_level(logging.WARNING, logger="quartermaster.policy_client"):
                async with PolicyClient(
                    target, fail=FailMode.OPEN, tls=client_tls, token="t" * 16, retries=0
                ) as client:
                    answers = [await client.check("ann", "chat", "gpt-5") for _ in range(2)]
            assert {a.limit_source for a in answers} == {"fail_open"}, server
            assert all(hint in a.reason for a in answers), (hint, answers[0].reason)
            warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
            assert len(warned) == 1, warned
            assert hint in warned[0], (hint, warned)
    finally:
        for served in servers.values():
            await served.stop(0)


def test_an_unreachable_server_gets_no_tls_hint() -> None:
    refused = "failed to connect to all addresses; last error: UNKNOWN: ipv4:127.0.0.1:1: " \
        "Failed to connect to remote host: Connection refused"  # fmt: skip
    assert handshake_hint(refused, None) == ""
    assert handshake_hint(refused, ClientTls()) == ""
