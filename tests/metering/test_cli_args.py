"""The metering CLI's arguments and errors as a newcomer meets them (issue 14's
follow-up): --token before or after the command, a misplaced token never echoed, and
refusals that say what to set. Against a real gRPC server with the real
authenticator and nothing behind it: a refused credential never reaches a method."""

from __future__ import annotations

import asyncio
import io
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest

from quartermaster import auth
from quartermaster.cliargs import hide_long_values
from quartermaster.grpcserver import Served, serve
from quartermaster.tls import ServerTls
from quartermaster.tokens import parse_tokens
from services.metering import cli
from tests.helpers import TOKENS, TOKENS_SPEC
from tests.tlskit import make_pki

TOKEN = TOKENS["reader"]
WINDOW = ["--from", "2026-11-01", "--to", "2026-12-01"]


@pytest.mark.parametrize(
    "argv",
    [
        ["--token", TOKEN, "top", *WINDOW],
        ["top", *WINDOW, "--token", TOKEN],
        ["--token", TOKEN, "prices", "list"],
        ["prices", "list", "--token", TOKEN],
    ],
)
def test_token_is_taken_before_or_after_the_command(argv: list[str]) -> None:
    assert cli.parser().parse_args(argv).token == TOKEN


def test_no_token_leaves_none_for_qm_token() -> None:
    assert cli.parser().parse_args(["top", *WINDOW]).token is None


@pytest.mark.parametrize(
    "argv",
    [
        [TOKEN, "top", *WINDOW],  # the token read as the command
        ["top", TOKEN, *WINDOW],  # ... as an extra argument
        ["prices", TOKEN],  # ... as a prices action
        ["top", "--from", TOKEN, "--to", "2026-12-01"],  # ... as a date
    ],
)
def test_a_misplaced_token_is_never_echoed(
    argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        cli.main(argv, io.StringIO())
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert TOKEN not in err
    assert f"<{len(TOKEN)} characters, not shown>" in err


def test_what_the_parser_knows_is_still_said() -> None:
    said = "argument command: invalid choice: 'usgae' (choose from 'usage', 'top')"
    assert hide_long_values(said, "usage top") == said
    long_choice = "argument --granularity: invalid choice: 'x' (choose from 'cost_center_long')"
    assert hide_long_values(long_choice, "{cost_center_long}") == long_choice


@pytest.fixture
async def guarded() -> AsyncIterator[str]:
    """A real server with the real authenticator (and no services: a credential is
    checked before any method is looked up)."""
    served: Served = await serve(
        "127.0.0.1:0", [], auth.server(parse_tokens(TOKENS_SPEC), "metering api"), tls=None
    )
    try:
        yield f"127.0.0.1:{served.port}"
    finally:
        await served.stop(0)


async def test_refusals_say_what_to_set(
    guarded: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("QM_TOKEN", raising=False)
    base = ["--addr", guarded, "top", *WINDOW]
    assert await asyncio.to_thread(cli.main, base, io.StringIO()) == 2
    err = capsys.readouterr().err
    assert err.startswith("UNAUTHENTICATED: UsageService/TopSpenders needs a credential")
    assert "no token was sent: set QM_TOKEN or give --token" in err

    wrong = "not-a-token-of-this-server"
    assert await asyncio.to_thread(cli.main, [*base, "--token", wrong], io.StringIO()) == 2
    err = capsys.readouterr().err
    assert "metering api accepts no such token (is it in this server's QM_TOKENS?)" in err
    assert "the token in QM_TOKEN or --token is not one this server accepts" in err
    assert wrong not in err


async def test_a_plaintext_cli_against_a_tls_server_is_told_about_tls(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    pki = make_pki(tmp_path)
    served = await serve(
        "127.0.0.1:0", [], grpc.aio.server(),
        tls=ServerTls.from_files(pki.server_cert, pki.server_key),
    )  # fmt: skip
    for name in ("QM_TLS_CA_FILE", "QM_TLS_CLIENT_CERT_FILE", "QM_TLS_CLIENT_KEY_FILE"):
        monkeypatch.delenv(name, raising=False)
    try:
        argv = ["--addr", f"127.0.0.1:{served.port}", "--token", TOKEN, "top", *WINDOW]
        assert await asyncio.to_thread(cli.main, argv, io.StringIO()) == 2
    finally:
        await served.stop(0)
    err = capsys.readouterr().err
    assert err.startswith("UNAVAILABLE: "), err
    assert "it likely wants TLS, and this client is plaintext: set QM_TLS_CA_FILE" in err
