"""How the metering CLI's `usage` and `top` read --from and --to, show bucket starts
and say an empty answer, against the real UsageServicer on a grpc.aio server (its
store a fake that records what was asked; tests/metering/test_cost_budget.py runs the
CLI against the real Cost API of a workspace in Kolkata). And its help."""

from __future__ import annotations

import asyncio
import io
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from zoneinfo import ZoneInfo

import grpc
import pytest

from quartermaster import auth
from quartermaster.grpcguard import add_guarded
from quartermaster.tokens import parse_tokens
from quartermaster.v1 import cost_pb2_grpc
from services.metering import cli, cli_usage
from services.metering.cli_time import moment
from services.metering.cost_query import UsageRow
from services.metering.cost_servicer import UsageServicer
from tests.helpers import TOKENS, TOKENS_SPEC
from tests.metering.test_cost_servicer import FakeDirectory, FakeStore

KOLKATA = ZoneInfo("Asia/Kolkata")
NOW = datetime(2026, 12, 15, 20, 0, tzinfo=UTC)  # Dec 16, 01:30 in Kolkata


@pytest.fixture
async def served() -> AsyncIterator[tuple[str, FakeStore]]:
    """A Cost API of a workspace in Kolkata; its store answers one November row."""
    store = FakeStore(rows=[UsageRow(datetime(2026, 10, 31, 18, 30, tzinfo=UTC),
                                     {"user_id": "ann"}, {"micros": 37_500})])  # fmt: skip
    server = grpc.aio.server(interceptors=[auth.Authenticator(parse_tokens(TOKENS_SPEC))])
    servicer = UsageServicer(store, FakeDirectory(), KOLKATA)
    add_guarded(server, cost_pb2_grpc.add_UsageServiceServicer_to_server, servicer)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        yield f"127.0.0.1:{port}", store
    finally:
        await server.stop(None)


async def run(addr: str, *argv: str) -> tuple[int, str]:
    out = io.StringIO()
    args = ["--addr", addr, "--token", TOKENS["reader"], *argv]
    code = await asyncio.to_thread(cli.main, args, out)
    return code, out.getvalue()


def asked(store: FakeStore) -> list[tuple[datetime | None, datetime | None]]:
    return [(q.filter.start, q.filter.end) for q, _, _ in store.asked]  # type: ignore[attr-defined]


@pytest.mark.parametrize("local_zone", ["Asia/Kolkata", "UTC"])
async def test_bare_dates_are_midnights_of_the_workspace_zone(
    served: tuple[str, FakeStore], local_zone: str, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    """With the CLI's own zone right, one question; with it wrong (UTC here), the answer
    names Kolkata and the CLI asks again in it, saying so. Either way December is
    Kolkata's (it began 2026-11-30T18:30Z), and the buckets show +05:30."""
    monkeypatch.setenv("QM_WORKSPACE_TIMEZONE", local_zone)
    addr, store = served
    code, out = await run(addr, "usage", "--from", "2026-12-01", "--to", "2027-01-01",
                          "--granularity", "month", "--format", "csv")  # fmt: skip
    assert code == 0
    december = (datetime(2026, 11, 30, 18, 30, tzinfo=UTC),
                datetime(2026, 12, 31, 18, 30, tzinfo=UTC))  # fmt: skip
    assert asked(store)[-1] == december
    assert len(store.asked) == (1 if local_zone == "Asia/Kolkata" else 2)
    assert out.splitlines()[1].startswith("2026-11-01T00:00:00+05:30,ann,0.04,37500,")
    err = capsys.readouterr().err
    if local_zone == "UTC":
        assert "dates read in the Cost API's time zone, Asia/Kolkata" in err
    else:
        assert "dates read" not in err


@pytest.mark.parametrize(("written", "meant"), [
    ("2026-12-01T08:30", datetime(2026, 12, 1, 3, 0, tzinfo=UTC)),  # Kolkata wall time
    ("2026-12-01T08:30Z", datetime(2026, 12, 1, 8, 30, tzinfo=UTC)),
    ("2026-12-01T08:30:00+05:45", datetime(2026, 12, 1, 2, 45, tzinfo=UTC)),
    ("today", datetime(2026, 12, 15, 18, 30, tzinfo=UTC)),  # Dec 16 there already
    ("tomorrow", datetime(2026, 12, 16, 18, 30, tzinfo=UTC)),
    ("today-30d", datetime(2026, 11, 15, 18, 30, tzinfo=UTC)),
    ("this-month", datetime(2026, 11, 30, 18, 30, tzinfo=UTC)),
    ("last-month", datetime(2026, 10, 31, 18, 30, tzinfo=UTC)),
    ("next-month+1d", datetime(2027, 1, 1, 18, 30, tzinfo=UTC)),
])  # fmt: skip
def test_what_each_form_means_in_a_workspace_in_kolkata(written: str, meant: datetime) -> None:
    assert moment(written).instant(KOLKATA, NOW) == meant


@pytest.mark.parametrize(("argv", "said"), [
    (["--from", "2026-12-01T08:35Z", "--to", "2026-12-01T09:00Z"],
     "--from 2026-12-01T08:35Z is not on a quarter hour (usage is kept in 15-minute buckets: "
     "a range starts and ends on :00, :15, :30 or :45): use 2026-12-01T08:30:00+00:00 or "
     "2026-12-01T08:45:00+00:00\n"),
    (["--from", "2026-12-01", "--to", "2026-12-01T08:35"],
     "--to 2026-12-01T08:35 is not on a quarter hour (usage is kept in 15-minute buckets: a "
     "range starts and ends on :00, :15, :30 or :45): use 2026-12-01T08:30:00 or "
     "2026-12-01T08:45:00 (in the workspace's time zone)\n"),
    # datetime would drop the digits past the microsecond: the CLI does not
    (["--from", "2026-12-01T00:00:00.0000000001+05:30", "--to", "2026-12-02"],
     "--from 2026-12-01T00:00:00.0000000001+05:30 is not on a quarter hour (usage is kept "
     "in 15-minute buckets: a range starts and ends on :00, :15, :30 or :45): use "
     "2026-12-01T00:00:00+05:30 or 2026-12-01T00:15:00+05:30\n"),
])  # fmt: skip
async def test_a_time_off_the_quarter_hours_is_refused_before_asking(
    served: tuple[str, FakeStore], argv: list[str], said: str,
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    addr, store = served
    for command in ("usage", "top"):
        assert await run(addr, command, *argv) == (2, "")
        assert capsys.readouterr().err == said
    assert store.asked == []


async def test_an_empty_answer_says_so_and_why_it_may_be(
    served: tuple[str, FakeStore], monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    monkeypatch.setenv("QM_WORKSPACE_TIMEZONE", "Asia/Kolkata")
    addr, store = served
    store.rows, store.truncated = [], False
    code, out = await run(addr, "usage", "--from", "2026-12-01", "--to", "2026-12-02",
                          "--group-by", "group", "--granularity", "total")  # fmt: skip
    assert (code, out.split()) == (0, ["group", "credits", "micros", *cli_usage.COLUMNS])
    assert capsys.readouterr().err == (
        "(no rows matched: no usage counted in [2026-12-01T00:00:00+05:30, "
        "2026-12-02T00:00:00+05:30) (Asia/Kolkata) by people in a directory group now "
        "(people in none are left out; has a directory been loaded into policy?))\n"
    )


@pytest.mark.parametrize("command", ["usage", "top"])
def test_the_help_says_the_zone_the_quarter_hours_and_what_an_empty_answer_means(
    command: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit):
        cli.parser().parse_args([command, "--help"])
    said = " ".join(capsys.readouterr().out.split())
    for words in ("--from WHEN start, included", "--to WHEN end, excluded",
                  "in the workspace's time zone", "quarter hour (:00, :15, :30, :45)",
                  "today-30d", "An empty answer", "no usage was counted in the range"):  # fmt: skip
        assert words in said, words
    if command == "usage":
        for words in ("--group-by DIMS comma-separated, any of: user, product, model (the "
                      "catalog model the reported id names), model_id (the id as reported), "
                      "cost_center, group (directory groups now", "--granularity",
                      "calendar day or month of the workspace's time zone",
                      "only people in a directory group now count"):  # fmt: skip
            assert words in said, words
