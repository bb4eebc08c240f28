"""The price catalog's CLI against a running Cost API and the session's seeded catalog
(issue 13): `prices list --format yaml` loads back as nothing to change, the list's
CSV loaded back is refused for what it would remove, every tier's prices are listed,
and history resolves a dated id. Nothing here writes a revision (dry runs and
refusals), so the shared catalog stays as the other tests expect it."""

from __future__ import annotations

import asyncio
import io
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from devtools.localinfra.stack import Infra
from services.metering import api, cli
from services.metering.settings import MeteringSettings
from tests.helpers import TOKENS

pytestmark = pytest.mark.infra


@pytest.fixture
async def running(infra: Infra, service_env: dict[str, str]) -> AsyncIterator[int]:
    running = await api.start(MeteringSettings.from_env(service_env), addr="127.0.0.1:0")
    try:
        yield running.served.port
    finally:
        await running.stop(1)


async def test_the_cli_round_trips_yaml_and_refuses_a_csv_that_loses_tiers(
    running: int, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Issue 13, through the CLI against the seeded catalog: loading back the list's CSV
    removed every service-tier and long-context price (and, with --replace, an alias);
    a tier's long-context prices were not listed; history did not resolve a dated id."""
    addr = ["--addr", f"127.0.0.1:{running}"]

    def run(*argv: str, token: str = TOKENS["prices"]) -> tuple[int, str]:
        out = io.StringIO()
        return cli.main([*addr, *argv, "--token", token], out), out.getvalue()

    code, listed = await asyncio.to_thread(run, "prices", "list", "--format", "yaml")
    assert code == 0
    whole = tmp_path / "catalog.yaml"
    whole.write_text(listed)
    for extra in ((), ("--replace", "--dry-run")):
        code, out = await asyncio.to_thread(run, "prices", "load", str(whole), *extra)
        assert (code, out.split(":")[0]) == (0, "nothing to change"), out

    capsys.readouterr()
    code, listed = await asyncio.to_thread(run, "prices", "list", "--format", "csv")
    assert code == 0
    left_out = capsys.readouterr().err
    assert "(the CSV leaves out the service-tier and long-context prices of " in left_out
    assert "`prices list --format yaml` writes them all" in left_out
    table = tmp_path / "list.csv"
    table.write_text(listed)
    code, _ = await asyncio.to_thread(run, "prices", "load", str(table))
    refused = capsys.readouterr().err
    assert code == 2
    assert refused.startswith("INVALID_ARGUMENT: list.csv: this CSV load would remove"), refused
    assert "gpt-5 version from 2025-08-07T00:00:00+00:00: service_tiers.batch" in refused
    code, _ = await asyncio.to_thread(run, "prices", "load", str(table), "--replace")
    assert "alias gpt5-prod-eastus -> gpt-5" in capsys.readouterr().err
    code, out = await asyncio.to_thread(
        run, "prices", "load", str(table), "--drop-yaml-only", "--dry-run"
    )
    assert code == 0
    assert "service_tiers.batch.input 625000 -> (none)" in out

    code, out = await asyncio.to_thread(run, "prices", "list", "--model", "claude-sonnet-4-5")
    rows = {line.split("  ")[0]: line.split()[-8:] for line in out.splitlines()}
    assert rows["claude-sonnet-4-5 [batch, input > 200,000]"][:6] == [
        "3000000", "300000", "3750000", "11250000", "11250000", "6000000",
    ]  # fmt: skip

    code, out = await asyncio.to_thread(run, "prices", "history", "gpt-5-2025-08-07")
    assert code == 0
    assert out.splitlines()[0] == "gpt-5-2025-08-07: priced as gpt-5"
    assert "gpt-5  " in out
