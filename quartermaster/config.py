"""Settings every service shares: where Kafka and Postgres are and how to reach Kafka
securely (`QM_KAFKA_*`), the workspace, and the TLS of every gRPC server and client
(`QM_TLS_*`)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, ClassVar, Literal, Self
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import AfterValidator, Field, model_validator

from quartermaster.settings import HostPorts, NonBlank, Settings, SettingsError
from quartermaster.tls import (
    ClientTls,
    ServerTls,
    TlsFileError,
    check_ca_certificates,
    check_certificates,
    check_key_pair,
)
from quartermaster.tokens import Grant, TokenSpec, parse_tokens

# A PEM file of certificates that exists, parses and is valid now (checked when the
# settings are read): a chain, every certificate in its dates; a CA file, at least one.
# Said (expiring soon) where they are used, once logging is set up: `server_tls`,
# `client_tls`, `quartermaster.kafka.configure`.
Certificates = Annotated[Path, AfterValidator(lambda p: check_certificates(p, warn=False))]
CaCertificates = Annotated[Path, AfterValidator(lambda p: check_ca_certificates(p, warn=False))]

_OLD_TOKENS = (
    "replaced by QM_TOKENS, one list for every service: name:role[+role]:token,... "
    "(an admin token of before is name:admin:token; one that loads prices, "
    "name:prices:token; see docs/security.md)"
)


def _time_zone(value: str) -> str:
    try:
        ZoneInfo(value)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(f"unknown time zone {value!r}") from None
    return value


def _postgres_url(value: str) -> str:
    if not value.startswith(("postgresql://", "postgres://")):
        raise ValueError("expected a postgresql:// URL")
    return value


def _log_level(value: str) -> str:
    if value.upper() not in {"DEBUG", "INFO", "WARNING", "ERROR"}:
        raise ValueError(f"unknown level {value!r}")
    return value.upper()


class CommonSettings(Settings):
    """Read by every service. Its variables are named in full (`validation_alias`), as
    services that extend it read their own under a prefix of their own."""

    kafka_bootstrap: HostPorts = Field("127.0.0.1:9092", validation_alias="QM_KAFKA_BOOTSTRAP")
    """Kafka bootstrap servers (host:port[,host:port])"""
    kafka_security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = Field(
        "PLAINTEXT", validation_alias="QM_KAFKA_SECURITY_PROTOCOL"
    )
    """How every Kafka client of this process connects: PLAINTEXT (the local broker),
    SSL (TLS, optionally with a client certificate), SASL_SSL (TLS and a user name and
    password) or SASL_PLAINTEXT. Anyone who can write to Kafka can change what policy
    enforces: see docs/security.md, 'Kafka'"""
    kafka_sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] = Field(
        "SCRAM-SHA-512", validation_alias="QM_KAFKA_SASL_MECHANISM"
    )
    """SASL mechanism for SASL_SSL / SASL_PLAINTEXT"""
    kafka_sasl_username: str = Field("", validation_alias="QM_KAFKA_SASL_USERNAME")
    """SASL user (one per service, so broker ACLs can tell them apart)"""
    kafka_sasl_password: str = Field("", validation_alias="QM_KAFKA_SASL_PASSWORD")
    """SASL password of QM_KAFKA_SASL_USERNAME"""
    kafka_ssl_ca_file: CaCertificates | None = Field(None, validation_alias="QM_KAFKA_SSL_CA_FILE")
    """CA (PEM) Kafka clients trust for the brokers' certificates (unset: the system's)"""
    kafka_ssl_cert_file: Certificates | None = Field(
        None, validation_alias="QM_KAFKA_SSL_CERT_FILE"
    )
    """Client certificate (PEM) presented to brokers that ask (mutual TLS, SSL only)"""
    kafka_ssl_key_file: Path | None = Field(None, validation_alias="QM_KAFKA_SSL_KEY_FILE")
    """Private key (PEM, unencrypted) of QM_KAFKA_SSL_CERT_FILE"""
    database_url: Annotated[str, AfterValidator(_postgres_url)] = Field(
        "postgresql://qm@127.0.0.1:55432/quartermaster", validation_alias="QM_DATABASE_URL"
    )
    """PostgreSQL URL; each service uses its own schema in it"""
    database_timeout: float = Field(60.0, ge=1, le=3600, validation_alias="QM_DATABASE_TIMEOUT")
    """Seconds PostgreSQL may take to answer one statement. A server or a network that
    stops answering (a frozen VM, a failover that leaves connections open) is an outage
    after this long, retried on fresh connections, instead of a wait with no end"""
    workspace_id: NonBlank = Field("default", validation_alias="QM_WORKSPACE_ID")
    """The workspace this deployment governs"""
    workspace_timezone: Annotated[str, AfterValidator(_time_zone)] = Field(
        "UTC", validation_alias="QM_WORKSPACE_TIMEZONE"
    )
    """IANA time zone whose calendar sets budget periods"""
    topic_partitions: int = Field(3, ge=1, validation_alias="QM_TOPIC_PARTITIONS")
    """Partitions for topics this deployment creates"""
    log_level: Annotated[str, AfterValidator(_log_level)] = Field(
        "INFO", validation_alias="QM_LOG_LEVEL"
    )
    """DEBUG, INFO, WARNING or ERROR"""
    tls_cert_file: Certificates | None = Field(None, validation_alias="QM_TLS_CERT_FILE")
    """Certificate chain (PEM) of this process's gRPC server; set (with QM_TLS_KEY_FILE),
    the server speaks TLS only. Unset: plaintext, and a WARNING at start"""
    tls_key_file: Path | None = Field(None, validation_alias="QM_TLS_KEY_FILE")
    """Private key (PEM, unencrypted) of QM_TLS_CERT_FILE; checked to match it at start"""
    tls_client_ca_file: CaCertificates | None = Field(
        None, validation_alias="QM_TLS_CLIENT_CA_FILE"
    )
    """Mutual TLS: set, every client must present a certificate signed by this CA (PEM)
    or is refused in the handshake. Needs QM_TLS_CERT_FILE"""
    tls_ca_file: CaCertificates | None = Field(None, validation_alias="QM_TLS_CA_FILE")
    """CA (PEM) this process's gRPC clients trust; set, they connect with TLS, unset in
    plaintext"""
    tls_client_cert_file: Certificates | None = Field(
        None, validation_alias="QM_TLS_CLIENT_CERT_FILE"
    )
    """Certificate chain (PEM) this process's gRPC clients present to servers that ask
    (mutual TLS); with QM_TLS_CLIENT_KEY_FILE and QM_TLS_CA_FILE"""
    tls_client_key_file: Path | None = Field(None, validation_alias="QM_TLS_CLIENT_KEY_FILE")
    """Private key (PEM, unencrypted) of QM_TLS_CLIENT_CERT_FILE"""
    tls_server_name: str = Field("", validation_alias="QM_TLS_SERVER_NAME")
    """Name clients expect in servers' certificates when the address's host is not in
    them (empty: the host)"""

    tokens: TokenSpec = Field("", validation_alias="QM_TOKENS")
    """Credentials every gRPC server accepts, name:role[+role]:token,... (roles gateway,
    reader, admin, prices, member, delegate, and reporter for metering's HTTP ingest;
    tokens of 16+ characters; the name is the audit actor; see docs/security.md).
    Empty: every call but health is refused"""

    removed: ClassVar[Mapping[str, str]] = {
        "QM_POLICY_ADMIN_TOKENS": _OLD_TOKENS,
        "QM_METERING_ADMIN_TOKENS": _OLD_TOKENS,
    }

    @property
    def grants(self) -> dict[str, Grant]:
        """{token: Grant} from QM_TOKENS."""
        return parse_tokens(self.tokens)

    @property
    def timezone(self) -> ZoneInfo:
        """The workspace's time zone."""
        return ZoneInfo(self.workspace_timezone)

    @model_validator(mode="after")
    def _tls_together(self) -> Self:
        """The TLS files that go together are given together, and each key matches its
        certificate; SettingsError names every variable at fault."""
        problems = _pair_problems(
            ("QM_TLS_CERT_FILE", self.tls_cert_file), ("QM_TLS_KEY_FILE", self.tls_key_file)
        )
        problems += _pair_problems(
            ("QM_TLS_CLIENT_CERT_FILE", self.tls_client_cert_file),
            ("QM_TLS_CLIENT_KEY_FILE", self.tls_client_key_file),
        )
        if self.tls_client_ca_file and not self.tls_cert_file:
            problems.append("QM_TLS_CLIENT_CA_FILE: mutual TLS needs QM_TLS_CERT_FILE too")
        if self.tls_client_cert_file and not self.tls_ca_file:
            problems.append("QM_TLS_CLIENT_CERT_FILE: a client certificate needs QM_TLS_CA_FILE")
        if self.tls_server_name and not self.tls_ca_file:
            problems.append("QM_TLS_SERVER_NAME: only used with QM_TLS_CA_FILE, which is unset")
        problems += self._kafka_problems()
        if problems:
            raise SettingsError(problems)
        return self

    def _kafka_problems(self) -> list[str]:
        protocol = self.kafka_security_protocol
        problems = _pair_problems(
            ("QM_KAFKA_SSL_CERT_FILE", self.kafka_ssl_cert_file),
            ("QM_KAFKA_SSL_KEY_FILE", self.kafka_ssl_key_file),
        )
        if protocol.startswith("SASL"):
            for var, value in (("QM_KAFKA_SASL_USERNAME", self.kafka_sasl_username),
                               ("QM_KAFKA_SASL_PASSWORD", self.kafka_sasl_password)):  # fmt: skip
                if not value:
                    problems.append(f"{var}: needed with QM_KAFKA_SECURITY_PROTOCOL={protocol}")
        elif self.kafka_sasl_username or self.kafka_sasl_password:
            problems.append(
                f"QM_KAFKA_SASL_USERNAME/PASSWORD: unused with QM_KAFKA_SECURITY_PROTOCOL="
                f"{protocol} (SASL_SSL uses them)"
            )
        if not protocol.endswith("SSL") and (self.kafka_ssl_ca_file or self.kafka_ssl_cert_file):
            problems.append(
                f"QM_KAFKA_SSL_*: unused with QM_KAFKA_SECURITY_PROTOCOL={protocol} (SSL or "
                "SASL_SSL use them)"
            )
        return problems

    def kafka_client_config(self) -> dict[str, str]:
        """The librdkafka properties every Kafka client of this process connects with
        (see QM_KAFKA_*): {} for PLAINTEXT. Contains the SASL password: never log it."""
        if self.kafka_security_protocol == "PLAINTEXT":
            return {}
        config = {"security.protocol": self.kafka_security_protocol.lower()}
        if self.kafka_security_protocol.startswith("SASL"):
            config["sasl.mechanism"] = self.kafka_sasl_mechanism
            config["sasl.username"] = self.kafka_sasl_username
            config["sasl.password"] = self.kafka_sasl_password
        for key, path in (("ssl.ca.location", self.kafka_ssl_ca_file),
                          ("ssl.certificate.location", self.kafka_ssl_cert_file),
                          ("ssl.key.location", self.kafka_ssl_key_file)):  # fmt: skip
            if path is not None:
                config[key] = str(path)
        return config

    @property
    def server_tls(self) -> ServerTls | None:
        """What this process's gRPC server serves with; None: plaintext. The files are
        read again here (checked when the settings were read: TlsFileError only if one
        changed since)."""
        if self.tls_cert_file is None or self.tls_key_file is None:
            return None
        return ServerTls.from_files(self.tls_cert_file, self.tls_key_file, self.tls_client_ca_file)

    @property
    def client_tls(self) -> ClientTls | None:
        """What this process's gRPC clients connect with; None: plaintext (files read
        as for `server_tls`)."""
        if self.tls_ca_file is None:
            return None
        return ClientTls.from_files(
            self.tls_ca_file, self.tls_client_cert_file, self.tls_client_key_file,
            self.tls_server_name,
        )  # fmt: skip


def _pair_problems(cert: tuple[str, Path | None], key: tuple[str, Path | None]) -> list[str]:
    """A certificate and its key: both or neither, and matching (checked once both are
    there: a missing one is named instead)."""
    (cert_var, cert_path), (key_var, key_path) = cert, key
    if cert_path is None and key_path is None:
        return []
    if cert_path is None:
        return [f"{cert_var}: needed with {key_var}"]
    if key_path is None:
        return [f"{key_var}: needed with {cert_var}"]
    try:
        check_key_pair(cert_path, key_path)
    except TlsFileError as exc:
        return [f"{key_var}: {exc}"]
    return []
