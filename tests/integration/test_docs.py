"""Every command the README and docs/ show works today, and so does every code example.

`COMMANDS` (below, the one list to update when a command changes) says how each
command shown in a `console` block is covered, matched by the longest key the
command's text starts with:

- `Offline()`: run here as shown, needing nothing running;
- `Session()`: run here as shown against this test session's PostgreSQL, broker and
  metering worker, a policy server and a Cost API started for the docs (by the commands
  docs/operations.md shows), with the documented default addresses replaced by theirs;
  the output lines the docs show under it must appear (retried while the counting
  catches up);
- `Serve(...)`: a long-running server: started as shown, it must report SERVING on the
  gRPC health service, then stop with exit code 0 on SIGTERM;
- `RunBy(file, evidence)`: whole-suite or long-running commands, run by another test or
  CI job; `file` must exist and contain `evidence`.

A command in the docs that no key covers fails `test_every_command_has_a_runner`, and so
does a key that covers nothing. `python id=NAME` blocks are run by `SNIPPETS`.
"""

from __future__ import annotations

import ast
import asyncio
import inspect
import json
import os
import re
import shutil
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import redirect_stdout
from dataclasses import dataclass
from io import StringIO
from typing import Any

import pytest

from devtools.localinfra import free_port
from devtools.localinfra.stack import Infra
from quartermaster.v1 import policy_pb2, policy_pb2_grpc
from tests.conftest import ADMIN_TOKEN, MeteringWorker, database_of_its_own
from tests.helpers import TOKENS, channel
from tests.integration.docs_blocks import ROOT, Block, all_blocks, commands
from tests.integration.docs_stack import LOGS, DocsStack, Server, run_shown, shell


@dataclass(frozen=True)
class Offline:
    """Run as shown, with no QM_* settings and nothing running."""


@dataclass(frozen=True)
class Session:
    """Run as shown against the session's infrastructure and the docs' servers."""


@dataclass(frozen=True)
class Serve:
    """A server: SERVING on the gRPC health service at the address `addr_setting` names,
    then a clean exit on SIGTERM."""

    addr_setting: str


@dataclass(frozen=True)
class RunBy:
    """Run by another test or CI job: `file` holds `evidence`."""

    file: str
    evidence: str


Runner = Offline | Session | Serve | RunBy
BENCH_SMOKE = RunBy("tests/integration/test_docs_bench.py", "def test_bench_commands_run_small")
PY = ".venv/bin/python"
CLI = f"{PY} -m services.metering.cli"
LEAD_TOKEN = "docs-lead-token-0123456789"

# Every command the docs show, by the start of its text (the longest matching key wins).
COMMANDS: dict[str, Runner] = {
    "make run": RunBy(
        "tests/integration/test_make_run.py", '["make", "--no-print-directory", "run"]'
    ),
    "make test": RunBy(".ci/run", "make test"),
    "make help": Offline(),
    "make test-unit": RunBy("Makefile", "$(MAKE) --no-print-directory test-unit"),
    "make migrate": Session(),
    "make bench-metering": BENCH_SMOKE,
    "make bench-dedupe": BENCH_SMOKE,
    "make bench-freshness": BENCH_SMOKE,
    "make bench-costs": BENCH_SMOKE,
    "make bench-policy": BENCH_SMOKE,
    "make bench-requests": BENCH_SMOKE,
    "make bench-notifier": BENCH_SMOKE,
    "make bench-rpc-metrics": BENCH_SMOKE,
    "make bench-ingest": BENCH_SMOKE,
    f"{PY} -m pytest tests/platform/test_periods.py": Offline(),
    f"{PY} -m quartermaster.tokens": Offline(),
    f"{PY} -m quartermaster.kafka ensure-topics": Session(),
    'printf \'{"eventId": "%s"': Session(),  # piped to the reporter CLI
    "curl -s -X POST http://127.0.0.1:8094/v1/usage": Session(),
    "curl -s http://127.0.0.1:8094/healthz": Session(),
    # The session's ingest is this command (tests/conftest.py, _ingest_session).
    f"{PY} -m services.metering.ingest": RunBy(
        "tests/ingest_fixtures.py", '"services.metering.ingest"]'
    ),
    # The notifier's tests run it as this command (kit.process), end to end.
    f"{PY} -m services.notifier": RunBy("tests/notifier/kit.py", '"-m", "services.notifier"]'),
    f"{CLI} top": Session(),
    f'QM_TOKEN="$READER_TOKEN" {CLI} top': Session(),
    f"{CLI} usage": Session(),
    f"{CLI} prices": Session(),
    f"{CLI} topic check": Session(),
    f"{CLI} dlq list": Session(),
    # Replaying (even a dry run, which exits 2 when nothing matches) is run with records
    # of its own by the DLQ replay test.
    f"{CLI} dlq replay": RunBy("tests/metering/test_dlq_replay.py", '"dlq", "replay", "--by"'),
    # Accepting moves the stored offsets: run against a broker of its own that was
    # restarted, never the session's.
    f"{CLI} topic accept": RunBy(
        "tests/metering/test_broker_restart.py", '"topic", "accept", "--by"'
    ),
    f"{PY} -m services.policy set-default": Session(),
    # Accepting a recreated totals topic: against a broker of its own, restarted empty.
    f"{PY} -m services.policy topic accept": RunBy(
        "tests/policy/test_topic_accept.py", '"services.policy", "topic", "accept", "--by"'
    ),
    f"{PY} -m services.policy": Serve("QM_POLICY_ADDR"),
    f"{PY} -m services.metering.api": Serve("QM_USAGE_API_ADDR"),
    # The session's metering worker is this command (a second one here would join its
    # consumer group and move its partitions under the other tests).
    f"{PY} -m services.metering": RunBy("tests/conftest.py", '"-m", "services.metering"]'),
    "curl -s http://127.0.0.1:9464/metrics": Session(),
    # services/requests/README.md: against the docs' requests service, as the person the
    # session's token names, and as lead (LEAD_TOKEN), the fallback approver
    f"{PY} -m services.requests.cli": Session(),
    f'QM_TOKEN="$LEAD_TOKEN" {PY} -m services.requests.cli': Session(),
}


def runner_of(text: str) -> tuple[str, Runner] | None:
    """The COMMANDS key (the longest that `text` starts with) and its runner; None
    when no key covers the command."""
    keys = [k for k in COMMANDS if text.startswith(k)]
    if not keys:
        return None
    key = max(keys, key=len)
    return key, COMMANDS[key]


def kind_of(text: str) -> Runner | None:
    found = runner_of(text)
    return None if found is None else found[1]


CONSOLE = all_blocks("console")
SHOWN = [c for b in CONSOLE for c in commands(b)]


def test_every_command_has_a_runner_and_every_runner_a_command() -> None:
    uncovered = [f"{c.where}: {c.text}" for c in SHOWN if runner_of(c.text) is None]
    assert not uncovered, "commands in the docs that no test runs (add to COMMANDS):\n" + "\n".join(
        uncovered
    )
    used = {m[0] for c in SHOWN if (m := runner_of(c.text)) is not None}
    assert set(COMMANDS) - used == set(), "COMMANDS entries the docs no longer show"


def test_commands_run_elsewhere_are_run_there() -> None:
    for key, runner in COMMANDS.items():
        if isinstance(runner, RunBy):
            path = ROOT / runner.file
            assert path.exists(), f"{key!r}: {runner.file} does not exist"
            assert runner.evidence in path.read_text(), f"{key!r}: not in {runner.file}"


def test_no_dates_written_out_in_commands_or_code() -> None:
    shown = [(c.where, c.text) for c in SHOWN]
    shown += [(b.where, "\n".join(b.lines)) for b in all_blocks("python")]
    dated = [f"{where}: {text}" for where, text in shown if re.search(r"\b20\d\d-\d\d", text)]
    assert not dated, "compute dates (date -u ..., datetime.now()) instead:\n" + "\n".join(dated)


def _needs(block: Block, kinds: tuple[type, ...]) -> bool:
    return any(isinstance(kind_of(c.text), kinds) for c in commands(block))


OFFLINE_BLOCKS = [b for b in CONSOLE if _needs(b, (Offline,)) and not _needs(b, (Session, Serve))]
SESSION_BLOCKS = [b for b in CONSOLE if _needs(b, (Session, Serve))]


def _offline_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("QM_")}


@pytest.mark.parametrize("block", OFFLINE_BLOCKS, ids=[b.where for b in OFFLINE_BLOCKS])
async def test_offline_commands(block: Block) -> None:
    for cmd in commands(block):
        if isinstance(kind_of(cmd.text), Offline):
            await run_shown(cmd, cmd.text, _offline_env(), within=0)


@pytest.fixture(scope="session")
async def docs_stack(
    _infra_session: Infra,
    _metering_session: MeteringWorker,
    _ingest_session: str,
    service_env: dict[str, str],
) -> AsyncIterator[DocsStack]:
    """policy, the Cost API and the requests service as operations.md and the requests
    README start them; the default limit set as limits.md does. Used only by tests
    marked infra (they also ask for `infra`). They serve the session's workspace (the
    one the session's metering worker and ingest count: an event naming none is
    theirs, and policy skips another workspace's totals) from a database of their own,
    so the docs' limits touch no other test (the Cost API reads the session's
    database, where that worker writes)."""
    async with database_of_its_own(_infra_session) as url:
        async for stack in _docs_stack(_infra_session, _ingest_session, service_env, url):
            yield stack


async def _docs_stack(
    infra: Infra, ingest: str, service_env: dict[str, str], database_url: str
) -> AsyncIterator[DocsStack]:
    policy_addr, api_addr = f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"
    requests_addr = f"127.0.0.1:{free_port()}"
    env = {
        **service_env,
        "QM_DATABASE_URL": database_url,
        "QM_POLICY_ADDR": policy_addr,
        "QM_DIRECTORY_ADDR": policy_addr,
        "QM_USAGE_API_ADDR": api_addr,
        # What make run prints for "ops": reading, admin calls and loading prices.
        "QM_TOKEN": TOKENS["all"],
        # What make run prints for "local-reporter": the HTTP ingest's examples.
        "REPORTER_TOKEN": TOKENS["reporter"],
        "READER_TOKEN": TOKENS["reader"],
        # The requests README's approver, a person with a token of their own.
        "QM_TOKENS": f"{service_env['QM_TOKENS']},lead:member:{LEAD_TOKEN}",
        "LEAD_TOKEN": LEAD_TOKEN,
        "QM_REQUESTS_ADDR": requests_addr,
        "QM_REQUESTS_POLICY_ADDR": policy_addr,
        "QM_REQUESTS_USAGE_API_ADDR": api_addr,
        "QM_REQUESTS_CLIENT_TOKEN": TOKENS["reader"],
        "QM_REQUESTS_FALLBACK_APPROVER": "lead",
    }
    stack = DocsStack(env, {
        "127.0.0.1:9092": infra.kafka_bootstrap,
        "127.0.0.1:50051": policy_addr,
        "127.0.0.1:50052": api_addr,
        "127.0.0.1:9464": service_env["QM_METERING_METRICS_ADDR"],
        "127.0.0.1:8094": ingest,
    })  # fmt: skip
    rc, out = await shell(f"{PY} -m services.policy set-default 20 --actor tests", env)
    assert rc == 0, out
    servers = [
        Server(f"{PY} -m services.policy", env, policy_addr, LOGS / "policy.log"),
        # The Cost API reads the rollups the session's metering worker writes.
        Server(
            f"{PY} -m services.metering.api",
            {**env, "QM_DATABASE_URL": infra.database_url},
            api_addr,
            LOGS / "cost-api.log",
        ),
        Server(f"{PY} -m services.requests", env, requests_addr, LOGS / "requests.log"),
    ]
    try:
        for s in servers:
            await s.start()
        yield stack
    finally:
        for s in reversed(servers):
            if s.proc is not None:
                await s.stop()
        shutil.rmtree(LOGS, ignore_errors=True)


@pytest.mark.infra
@pytest.mark.parametrize("block", SESSION_BLOCKS, ids=[b.where for b in SESSION_BLOCKS])
async def test_session_commands(
    block: Block, infra: Infra, metering: MeteringWorker, docs_stack: DocsStack
) -> None:
    for cmd in commands(block):
        runner = kind_of(cmd.text)
        if isinstance(runner, Offline):
            await run_shown(cmd, cmd.text, _offline_env(), within=0)
        elif isinstance(runner, Session):
            await run_shown(cmd, docs_stack.text(cmd.text), docs_stack.env)
        elif isinstance(runner, Serve):
            server = docs_stack.server(cmd.text, runner.addr_setting)
            try:
                await server.start()
            finally:
                rc = await server.stop()
            assert rc == 0, f"{cmd.where}: `{cmd.text}` exited {rc} on SIGTERM:\n{server.tail()}"


@dataclass(frozen=True)
class Snippet:
    """How to run a `python id=...` block: the names it uses without defining them
    (what the reader has at hand), and a check of what it did."""

    given: Callable[[], dict[str, Any]] = dict
    then: Callable[[DocsStack, str], Awaitable[None]] | None = None


def _openai_completion() -> dict[str, Any]:
    recorded = ROOT / "tests" / "data" / "openai_chat_completion.json"
    completion: dict[str, Any] = json.loads(recorded.read_text())
    return {"completion": completion}


async def _erin_counted(stack: DocsStack, _printed: str) -> None:
    async with channel(stack.env["QM_POLICY_ADDR"], "reader") as ch:
        policy = policy_pb2_grpc.PolicyServiceStub(ch)
        for _ in range(300):
            budget = await policy.GetBudget(policy_pb2.GetBudgetRequest(user_id="erin"))
            if budget.used_micros > 0:
                return
            await asyncio.sleep(0.1)
    raise AssertionError("the reported usage never showed in erin's budget")


async def _explained(_stack: DocsStack, printed: str) -> None:
    assert "So carol may spend 40.00 credits per month" in printed, printed


# Every `python id=NAME` block of the docs, by NAME.
SNIPPETS: dict[str, Snippet] = {
    "reporter": Snippet(_openai_completion, _erin_counted),
    "gateway": Snippet(lambda: {"gateway_token": TOKENS["gateway"]}),
    "reserve": Snippet(lambda: {"gateway_token": TOKENS["gateway"]}),
    "override": Snippet(lambda: {"admin_token": ADMIN_TOKEN}, _explained),
}
PYTHON = all_blocks("python")


def test_every_python_block_has_a_runner() -> None:
    names = [b.attrs.get("id", f"(no id at {b.where})") for b in PYTHON]
    assert sorted(names) == sorted(SNIPPETS), "python blocks need id=NAME and a SNIPPETS entry"


@pytest.mark.infra
@pytest.mark.parametrize("block", PYTHON, ids=[b.attrs.get("id", b.where) for b in PYTHON])
async def test_python_blocks(
    block: Block, infra: Infra, metering: MeteringWorker, docs_stack: DocsStack
) -> None:
    snippet = SNIPPETS[block.attrs["id"]]
    source = docs_stack.text("\n".join(block.lines))
    code = compile(source, block.where, "exec", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT)
    names: dict[str, Any] = {"__name__": "__docs__", **snippet.given()}
    printed = StringIO()
    if code.co_flags & inspect.CO_COROUTINE:
        with redirect_stdout(printed):
            await eval(code, names)  # the docs' own example, nothing else
    else:

        def run() -> None:
            with redirect_stdout(printed):
                exec(code, names)  # in a thread: a blocking gRPC call must not stall us

        await asyncio.to_thread(run)
    if snippet.then is not None:
        await snippet.then(docs_stack, printed.getvalue())
