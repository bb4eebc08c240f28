"""Passwords never shown: URLs masked (quartermaster.redact) in settings errors and
reprs, in every log record, and in the migrate command's failure (issue 14, item 17).
The processes themselves (make run, policy, metering, migrate) are run with a password
in QM_DATABASE_URL in tests/integration/test_no_passwords.py."""

from __future__ import annotations

import io
import logging
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path

import pytest
from pydantic import ValidationError

from devtools import migrate as migrate_cli
from quartermaster import telemetry
from quartermaster.config import CommonSettings
from quartermaster.redact import mask_url, mask_urls
from quartermaster.settings import SettingsError
from services.metering.settings import MeteringSettings
from services.policy.settings import PolicySettings

SECRET = "s3cret-Pw"


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("postgresql://qm:s3cret@db:5432/qm", "postgresql://qm:****@db:5432/qm"),
        ("postgres://qm:s3cret@db/qm?sslmode=require", "postgres://qm:****@db/qm?sslmode=require"),
        ("postgresql://qm@db/qm", "postgresql://qm@db/qm"),
        ("postgresql://db/qm?user=qm&password=s3cret", "postgresql://db/qm?user=qm&password=****"),
        ("postgresql://qm:p@ss/w@db/qm", "postgresql://qm:****@db/qm"),
        ("sasl_ssl://svc:s3cret@broker:9093", "sasl_ssl://svc:****@broker:9093"),
        ("127.0.0.1:9092", "127.0.0.1:9092"),
        ("http://host/a:b@c", "http://host/a:b@c"),
        ("postgresql://qm:@db/qm", "postgresql://qm:@db/qm"),
    ],
)
def test_a_url_keeps_all_but_its_password(url: str, shown: str) -> None:
    assert mask_url(url) == shown


def test_urls_in_text_are_masked_and_other_text_is_left_alone() -> None:
    text = f"cannot reach postgresql://qm:{SECRET}@db/qm ('kafka://u:{SECRET}@b:9092'): refused"
    assert mask_urls(text) == (
        "cannot reach postgresql://qm:****@db/qm ('kafka://u:****@b:9092'): refused"
    )
    assert mask_urls("no url here: a:b@c") == "no url here: a:b@c"


@pytest.mark.parametrize("cls", [CommonSettings, PolicySettings, MeteringSettings])
def test_settings_show_no_password_in_repr_str_or_errors(cls: type[CommonSettings]) -> None:
    url = f"postgresql://qm:{SECRET}@db:5432/qm"
    settings = cls.from_env({"QM_DATABASE_URL": url})
    assert settings.database_url == url, "the real value is what connects"
    for shown in (repr(settings), str(settings), f"{settings!r}"):
        assert SECRET not in shown
        assert "postgresql://qm:****@db:5432/qm" in shown

    bad = {
        "QM_DATABASE_URL": f"mysql://qm:{SECRET}@db/qm",
        "QM_KAFKA_BOOTSTRAP": f"sasl://u:{SECRET}@b",
    }
    with pytest.raises(SettingsError) as caught:
        cls.from_env(bad)
    message = str(caught.value)
    assert "QM_DATABASE_URL: expected a postgresql:// URL" in message
    assert "QM_KAFKA_BOOTSTRAP: expected host:port, got 'sasl://u:****@b'" in message
    assert SECRET not in message


def test_pydantic_own_errors_do_not_quote_the_value() -> None:
    """A Settings built with arguments (not from_env) raises pydantic's ValidationError,
    whose text would quote the input."""
    with pytest.raises(ValidationError) as caught:
        CommonSettings(QM_DATABASE_URL=f"mysql://qm:{SECRET}@db/qm")  # type: ignore[call-arg]
    assert "QM_DATABASE_URL" in str(caught.value)
    assert SECRET not in str(caught.value)


@pytest.fixture
def masked_logs() -> Iterator[io.StringIO]:
    """The process's logging with telemetry's masking on, written to a buffer; the
    previous record factory is put back afterwards."""
    factory = logging.getLogRecordFactory()
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.setFormatter(logging.Formatter(telemetry.LOG_FORMAT))
    logger = logging.getLogger("qm.tests.redact")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    telemetry.mask_passwords_in_logs()
    telemetry.mask_passwords_in_logs()  # twice is once
    try:
        yield out
    finally:
        logging.setLogRecordFactory(factory)
        logger.removeHandler(handler)


def test_every_log_record_masks_urls_in_its_message_and_traceback(
    masked_logs: io.StringIO,
) -> None:
    log = logging.getLogger("qm.tests.redact")
    url = f"postgresql://qm:{SECRET}@db/qm"
    log.info("connecting to %s", url)
    try:
        raise ConnectionError(f"could not connect to {url}")
    except ConnectionError:
        log.exception("start failed")
    log.info("a plain %s line", "ordinary")
    text = masked_logs.getvalue()
    assert SECRET not in text
    assert text.count("postgresql://qm:****@db/qm") == 2, text
    assert "ConnectionError: could not connect to" in text
    assert "a plain ordinary line" in text


def test_migrate_names_no_password_when_dbmate_fails(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """dbmate's own output quotes the URL it was given (a stand-in for dbmate here: the
    real command runs against PostgreSQL in tests/integration/test_no_passwords.py)."""
    url = f"postgresql://qm:{SECRET}@127.0.0.1:1/qm"

    def failing(database_url: str, _dirs: Mapping[str, Path]) -> None:
        raise RuntimeError(f"migrations for policy failed:\nError: dial {database_url}: refused")

    monkeypatch.setattr(migrate_cli, "migrate", failing)
    monkeypatch.setattr(sys, "argv", ["migrate", url])
    with pytest.raises(SystemExit) as caught:
        migrate_cli.main()
    assert caught.value.code == 1
    err = capsys.readouterr().err
    assert SECRET not in err
    assert "migrate (postgresql://qm:****@127.0.0.1:1/qm): migrations for policy failed" in err
    # dbmate waits up to 30 s for PostgreSQL: said first, so the wait is not silence
    assert err.startswith("migrate: applying migrations to postgresql://qm:****@127.0.0.1:1/qm")


def test_the_pools_retries_are_one_line_each() -> None:
    """asyncpg's pool logged a 40-line traceback at each retry while PostgreSQL was
    away; after telemetry.setup its warnings carry the reason on one line."""
    telemetry.setup("tests", "INFO")
    seen: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            seen.append(record)

    handler = Keep()
    pool_log = logging.getLogger("asyncpg.pool")
    pool_log.addHandler(handler)
    try:
        try:
            raise ConnectionRefusedError(111, "Connect call failed ('127.0.0.1', 5432)")
        except ConnectionRefusedError:
            pool_log.warning("Failed to restore the pool connection floor; retrying", exc_info=True)
    finally:
        pool_log.removeHandler(handler)
    (record,) = seen
    assert record.exc_info is None
    assert record.getMessage() == (
        "Failed to restore the pool connection floor; retrying: ConnectionRefusedError: "
        "[Errno 111] Connect call failed ('127.0.0.1', 5432)"
    )
