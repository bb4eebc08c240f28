"""TLS material for gRPC servers and clients: PEM files read once and checked, so a
wrong file stops a process at start naming the setting, not at the first handshake.

`ServerTls` and `ClientTls` hold the PEM bytes gRPC wants; `grpcserver.serve` and
`grpcclient.open_channel` turn them into credentials. `None` in their place means
plaintext. The settings that fill them are `quartermaster.config.CommonSettings`'
`QM_TLS_*`; a gateway using `PolicyClient` as a library builds a `ClientTls` with
`ClientTls.from_files`.

Checks use the standard library's `ssl` (OpenSSL, as gRPC's own): a file holds PEM
certificates (`load_verify_locations`), a key opens and matches its certificate
(`load_cert_chain`). Failures raise `TlsFileError` (a ValueError) saying what is wrong
with which file; the settings layer puts the variable's name in front.

Dates (`cryptography` reads every certificate of a file; gRPC would only fail each
handshake, and a server logged nothing at start): a certificate chain (a server's or
a client's) with a certificate expired or not yet valid is refused, naming the file,
the subject and both dates; a CA file is refused when none of its certificates is
valid now (a bundle may carry an old root beside current ones). A certificate that
expires within EXPIRY_WARNING is a WARNING (logger "qm.tls", once per certificate
and process) when the file is checked, that is at start.
"""

from __future__ import annotations

import functools
import logging
import os
import ssl
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509

log = logging.getLogger("qm.tls")
# A certificate expiring sooner than this is said at start (a WARNING).
EXPIRY_WARNING = timedelta(days=14)

StrPath = str | os.PathLike[str]
"""A file's path as callers hold it: a str or any PathLike (pathlib.Path)."""


class TlsFileError(ValueError):
    """A certificate, key or CA file that can't be used; the message says why."""


def check_certificates(path: StrPath, now: datetime | None = None, warn: bool = True) -> Path:
    """`path` (as a Path) when it holds PEM certificates, every one valid at `now`
    (None: the current time, UTC): a server's or a client's chain. TlsFileError when
    it is missing, unreadable, holds none (a key, garbage, DER), holds a block that
    does not parse, or a certificate expired or not yet valid (naming its dates).
    One expiring within EXPIRY_WARNING is logged when `warn` (see the module
    docstring; the settings check with warn=False, as logging is set up after them)."""
    path, certs = _certificates(path)
    when = now or datetime.now(UTC)
    for cert in certs:
        problem = _outside(cert, when)
        if problem:
            raise TlsFileError(f"{path}: {problem}")
    if warn:
        _warn_expiring(path, certs, when)
    return path


def check_ca_certificates(path: StrPath, now: datetime | None = None, warn: bool = True) -> Path:
    """`path` (as a Path) when it holds PEM certificates of which at least one is valid
    at `now` (a CA file or bundle); TlsFileError as for `check_certificates` when it
    can't be read or every certificate in it is outside its dates. Those outside
    their dates beside valid ones, and those expiring soon, are logged."""
    path, certs = _certificates(path)
    when = now or datetime.now(UTC)
    problems = [p for p in (_outside(c, when) for c in certs) if p]
    if len(problems) == len(certs):
        raise TlsFileError(f"{path}: no certificate in it is valid now: {'; '.join(problems)}")
    if warn:
        for problem in problems:
            _warn_once(f"{path}: {problem}; the other certificates in it are used")
        _warn_expiring(path, certs, when)
    return path


def _certificates(path: StrPath) -> tuple[Path, list[x509.Certificate]]:
    path = Path(path)
    if not path.is_file():
        raise TlsFileError(f"no such file: {path}")
    try:
        ssl.create_default_context(cafile=str(path))  # parses every certificate in it
    except (ssl.SSLError, OSError, ValueError) as exc:
        raise TlsFileError(f"no PEM certificate in {path} ({_why(exc)})") from None
    try:
        # Every block, not only those OpenSSL took: a damaged one is refused here.
        certs = x509.load_pem_x509_certificates(path.read_bytes())
    except ValueError as exc:
        raise TlsFileError(f"a certificate in {path} does not parse ({exc})") from None
    return path, certs


def _outside(cert: x509.Certificate, now: datetime) -> str:
    """Why `cert` is not valid at `now` ("" when it is)."""
    start, end = cert.not_valid_before_utc, cert.not_valid_after_utc
    dates = f"valid from {_day(start)} to {_day(end)}, now {_day(now)}"
    if now > end:
        return f"the certificate for {_subject(cert)} expired ({dates}): renew it"
    if now < start:
        return f"the certificate for {_subject(cert)} is not valid yet ({dates}): check the clock"
    return ""


def _warn_expiring(path: Path, certs: list[x509.Certificate], now: datetime) -> None:
    for cert in certs:
        end = cert.not_valid_after_utc
        if cert.not_valid_before_utc <= now <= end < now + EXPIRY_WARNING:
            left = end - now
            _warn_once(
                f"{path}: the certificate for {_subject(cert)} expires on {_day(end)}, in "
                f"{left.days} days {left.seconds // 3600} hours: renew it before then "
                "(after it, every TLS handshake with it fails)"
            )


@functools.lru_cache(maxsize=256)
def _warn_once(message: str) -> None:
    # Once per process: the same file is checked when the settings are read and
    # again when its server or client is built.
    log.warning("TLS: %s", message)


def _subject(cert: x509.Certificate) -> str:
    return cert.subject.rfc4514_string() or "(no subject)"


def _day(at: datetime) -> str:
    return at.astimezone(UTC).strftime("%Y-%m-%d %H:%M UTC")


def check_key_pair(cert: StrPath, key: StrPath) -> None:
    """Nothing when `key` is a readable PEM private key (unencrypted) for the first
    certificate in `cert`; TlsFileError saying which of the two is wrong otherwise."""
    cert, key = Path(cert), Path(key)
    if not key.is_file():
        raise TlsFileError(f"no such file: {key}")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        # An encrypted key would make OpenSSL ask for a passphrase; gRPC can't use one.
        context.load_cert_chain(str(cert), str(key), password=_no_passphrase)
    except ssl.SSLError as exc:
        if exc.reason == "KEY_VALUES_MISMATCH":
            raise TlsFileError(
                f"the key in {key} does not match the certificate in {cert}"
            ) from None
        raise TlsFileError(f"no usable PEM private key in {key} ({_why(exc)})") from None
    except (OSError, TypeError) as exc:
        raise TlsFileError(f"no usable PEM private key in {key} ({_why(exc)})") from None


def _no_passphrase() -> str:
    raise TypeError("the key is encrypted; give an unencrypted key")


def _read(path: StrPath | None) -> bytes | None:
    return None if path is None else Path(path).read_bytes()


def _why(exc: BaseException) -> str:
    reason = getattr(exc, "reason", None)
    return str(reason) if reason else str(exc)


@dataclass(frozen=True, repr=False)
class ServerTls:
    """A server's certificate chain and private key (PEM bytes); with `client_ca`, the
    CA whose certificates clients must present (mutual TLS: a client without one, or
    with one from another CA, is refused in the handshake)."""

    cert_chain: bytes
    private_key: bytes
    client_ca: bytes | None = None

    @classmethod
    def from_files(cls, cert: StrPath, key: StrPath, client_ca: StrPath | None = None) -> ServerTls:
        """Read and check the files, each a str or Path (TlsFileError names the bad one)."""
        check_certificates(cert)
        check_key_pair(cert, key)
        if client_ca is not None:
            check_ca_certificates(client_ca)
        return cls(Path(cert).read_bytes(), Path(key).read_bytes(), _read(client_ca))

    def __repr__(self) -> str:  # never the key
        return f"ServerTls(mutual={self.client_ca is not None})"


@dataclass(frozen=True, repr=False)
class ClientTls:
    """What a client trusts and shows: `root_ca` (PEM; None: gRPC's default roots),
    an optional certificate chain and key for mutual TLS, and `server_name`, the name
    to expect in the server's certificate when it differs from the target's host
    ("" : the target's host)."""

    root_ca: bytes | None = None
    cert_chain: bytes | None = None
    private_key: bytes | None = None
    server_name: str = ""

    @classmethod
    def from_files(
        cls,
        ca: StrPath | None = None,
        cert: StrPath | None = None,
        key: StrPath | None = None,
        server_name: str = "",
    ) -> ClientTls:
        """Read and check the files, each a str or Path (TlsFileError names the bad
        one); `cert` and `key` go together."""
        if (cert is None) != (key is None):
            raise TlsFileError("a client certificate and its key go together: give both")
        if ca is not None:
            check_ca_certificates(ca)
        if cert is not None and key is not None:
            check_certificates(cert)
            check_key_pair(cert, key)
        return cls(_read(ca), _read(cert), _read(key), server_name)

    def __repr__(self) -> str:  # never the key
        return f"ClientTls(mutual={self.cert_chain is not None}, server_name={self.server_name!r})"


def handshake_hint(details: str, tls: ClientTls | None) -> str:
    """What a failed connection's `details` (an UNAVAILABLE status's text) most likely
    means about TLS, naming the setting to look at; "" when it shows no TLS pattern.

    gRPC reports every TLS mistake as UNAVAILABLE, like a server that is down, and
    a server that closes a connection in the handshake shows only "Socket closed":
    the hint says "likely" because a server restarting mid-connection closes it too.
    Settings are named as the services and CLIs read them; a library caller sets the
    same through `ClientTls.from_files(ca, cert, key, server_name)`."""
    if "CERTIFICATE_VERIFY_FAILED" in details:
        return (
            "TLS: this client does not trust the server's certificate: QM_TLS_CA_FILE "
            "(ClientTls ca) must hold the CA that signed it, for the name it is reached "
            "by (QM_TLS_SERVER_NAME)"
        )
    if "WRONG_VERSION_NUMBER" in details:
        return (
            "TLS: this client speaks TLS (QM_TLS_CA_FILE) but the server answers in "
            "plaintext: is the server's QM_TLS_CERT_FILE set?"
        )
    if "handshake" in details.lower():
        return (
            "TLS handshake failed: check QM_TLS_CA_FILE, the client certificate "
            "(QM_TLS_CLIENT_CERT_FILE, QM_TLS_CLIENT_KEY_FILE) and QM_TLS_SERVER_NAME"
        )
    if "Socket closed" not in details:
        return ""
    if tls is None:
        return (
            "TLS: the server closed the connection; it likely wants TLS, and this client "
            "is plaintext: set QM_TLS_CA_FILE (ClientTls ca) to the CA of its certificate"
        )
    if tls.cert_chain is None:
        return (
            "TLS: the server closed the connection in the handshake; it likely wants "
            "mutual TLS: give a client certificate (QM_TLS_CLIENT_CERT_FILE and "
            "QM_TLS_CLIENT_KEY_FILE; ClientTls cert, key)"
        )
    return (
        "TLS: the server closed the connection in the handshake; it likely refused this "
        "client certificate: is it signed by the CA in the server's QM_TLS_CLIENT_CA_FILE?"
    )
