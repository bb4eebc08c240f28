"""A certificate out of its dates stops a process at start, naming the file and the
dates; one about to expire is a WARNING at start (issue 14, breaker #9). Certificates
are made in the test (trustme, with the dates each case needs). Pure: the settings
and the TLS material as every server and client builds them; the real servers are in
tests/integration/test_tls_dates.py."""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import trustme

from quartermaster.config import CommonSettings
from quartermaster.settings import SettingsError
from quartermaster.tls import ClientTls, ServerTls, TlsFileError, check_ca_certificates

NOW = datetime.now(UTC)
DAY = timedelta(days=1)


def leaf(folder: Path, name: str, start: datetime, end: datetime) -> tuple[str, str, str]:
    """(CA file, certificate file, key file) of a certificate for 127.0.0.1 valid from
    `start` to `end`, signed by a fresh CA."""
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1", not_before=start, not_after=end)
    paths = (folder / f"{name}-ca.pem", folder / f"{name}.pem", folder / f"{name}-key.pem")
    ca.cert_pem.write_to_path(str(paths[0]))
    cert.cert_chain_pems[0].write_to_path(str(paths[1]))
    cert.private_key_pem.write_to_path(str(paths[2]))
    return str(paths[0]), str(paths[1]), str(paths[2])


def problems_of(env: dict[str, str]) -> str:
    with pytest.raises(SettingsError) as refused:
        CommonSettings.from_env(env)
    return str(refused.value)


def test_an_expired_server_certificate_stops_the_settings_naming_file_and_dates(
    tmp_path: Path,
) -> None:
    _ca, cert, key = leaf(tmp_path, "server", NOW - 30 * DAY, NOW - DAY)
    said = problems_of({"QM_TLS_CERT_FILE": cert, "QM_TLS_KEY_FILE": key})
    assert "QM_TLS_CERT_FILE" in said
    assert f"{cert}: the certificate for " in said
    assert " expired (valid from " in said
    assert (NOW - DAY).strftime("%Y-%m-%d") in said, said


def test_a_server_certificate_not_yet_valid_stops_the_settings(tmp_path: Path) -> None:
    _ca, cert, key = leaf(tmp_path, "server", NOW + DAY, NOW + 30 * DAY)
    said = problems_of({"QM_TLS_CERT_FILE": cert, "QM_TLS_KEY_FILE": key})
    assert "is not valid yet (valid from" in said
    assert "check the clock" in said


def test_an_expired_client_certificate_stops_the_settings_and_the_library(
    tmp_path: Path,
) -> None:
    ca, cert, key = leaf(tmp_path, "client", NOW - 30 * DAY, NOW - DAY)
    said = problems_of({"QM_TLS_CA_FILE": ca, "QM_TLS_CLIENT_CERT_FILE": cert,
                        "QM_TLS_CLIENT_KEY_FILE": key})  # fmt: skip
    assert "QM_TLS_CLIENT_CERT_FILE" in said
    assert "expired" in said
    with pytest.raises(TlsFileError, match="expired"):
        ClientTls.from_files(ca, cert, key)  # a gateway using PolicyClient as a library


def test_a_certificate_expiring_within_14_days_is_a_warning_at_start(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    _ca, cert, key = leaf(tmp_path, "soon", NOW - DAY, NOW + 5 * DAY)
    with caplog.at_level(logging.WARNING, logger="qm.tls"):
        settings = CommonSettings.from_env({"QM_TLS_CERT_FILE": cert, "QM_TLS_KEY_FILE": key})
        assert settings.server_tls is not None  # the server is built: it still serves
    said = [r.getMessage() for r in caplog.records]
    assert len(said) == 1, "once, though the file is checked twice"
    assert said[0].startswith(f"TLS: {cert}: the certificate for ")
    assert f"expires on {(NOW + 5 * DAY).strftime('%Y-%m-%d')}" in said[0]
    assert "in 4 days" in said[0] or "in 5 days" in said[0]


def test_a_ca_file_that_does_not_parse_is_refused(tmp_path: Path) -> None:
    ca, cert, key = leaf(tmp_path, "server", NOW - DAY, NOW + 90 * DAY)
    good = Path(ca).read_text()
    damaged = tmp_path / "damaged-ca.pem"
    # one good certificate, then a block whose body is not a certificate
    damaged.write_text(good + good.replace(good.splitlines()[3], "A" * 64))
    said = problems_of({"QM_TLS_CERT_FILE": cert, "QM_TLS_KEY_FILE": key,
                        "QM_TLS_CLIENT_CA_FILE": str(damaged)})  # fmt: skip
    assert "QM_TLS_CLIENT_CA_FILE" in said
    assert str(damaged) in said
    with pytest.raises(TlsFileError):
        ServerTls.from_files(cert, key, damaged)


def test_a_ca_bundle_needs_one_valid_certificate_and_says_which_are_not(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    old = trustme.CA()
    current = trustme.CA()
    bundle = tmp_path / "bundle.pem"
    expired_ca = old.issue_cert("old", not_before=NOW - 30 * DAY, not_after=NOW - DAY)
    bundle.write_bytes(expired_ca.cert_chain_pems[0].bytes() + current.cert_pem.bytes())
    with caplog.at_level(logging.WARNING, logger="qm.tls"):
        assert check_ca_certificates(bundle) == bundle
    assert any("expired" in r.getMessage() and "the other certificates in it are used"
               in r.getMessage() for r in caplog.records)  # fmt: skip
    only_expired = tmp_path / "only-expired.pem"
    only_expired.write_bytes(expired_ca.cert_chain_pems[0].bytes())
    with pytest.raises(TlsFileError, match="no certificate in it is valid now"):
        check_ca_certificates(only_expired)
