"""The reporter CLI (issue 12, item 4) as a person runs it: `python -m
services.metering.report` with JSON lines from a file or stdin, to the real HTTP ingest
and to the real broker; per-line errors, the exit code, and the good lines counted."""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from google.protobuf import json_format

from devtools.localinfra.stack import Infra
from tests.conftest import ROOT, MeteringWorker
from tests.helpers import TOKENS, eventually, new_user, usage
from tests.metering.test_any_partitioning import EVENT_MICROS, used_of

if TYPE_CHECKING:
    from quartermaster.v1.policy_pb2_grpc import PolicyServiceAsyncStub as Stub

pytestmark = pytest.mark.infra


async def report(env: dict[str, str], *args: str, stdin: bytes = b"") -> tuple[int, str, str]:
    """(exit code, stdout, stderr) of the CLI with `args`."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "services.metering.report", *args, cwd=ROOT, env=env,
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(proc.communicate(stdin), 120)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


def line(user: str, **fields: object) -> str:
    event = json_format.MessageToDict(usage(user))
    event.update(fields)
    return json.dumps(event)


async def test_http_names_each_refused_line_and_exits_1(
    tmp_path: Path, service_env: dict[str, str], ingest_addr: str,
    metering: MeteringWorker, policy: Stub,
) -> None:  # fmt: skip
    user = new_user()
    lines = [line(user), line(user, inputTokens="-1"), line(user), "{not json", "",
             line(user, ouputTokens="5")]  # fmt: skip
    path = tmp_path / "events.jsonl"
    path.write_text("\n".join(lines) + "\n")
    url = f"http://{ingest_addr}/v1/usage"
    code, out, err = await report(
        service_env, "--http", url, "--token", TOKENS["reporter"], "--batch", "2", str(path)
    )
    assert code == 1, err
    assert out.strip() == "accepted 3 of 5 lines"
    assert "line 2: input_tokens: must not be negative" in err
    assert "line 4: not JSON" in err
    assert "line 6: ignored (no UsageEvent field): ouputTokens" in err  # sent all the same
    await eventually(used_of(policy, user), 3 * EVENT_MICROS, within=60)
    # the same file again: nothing counts twice (an event_id counts once)
    code, out, _ = await report(
        {**service_env, "QM_TOKEN": TOKENS["reporter"]}, "--http", url, str(path)
    )
    assert (code, out.strip()) == (1, "accepted 3 of 5 lines")
    await asyncio.sleep(1.5)  # a second count would show by now
    assert await used_of(policy, user)() == 3 * EVENT_MICROS


async def test_kafka_from_stdin_exits_0_when_every_line_is_accepted(
    infra: Infra, service_env: dict[str, str], metering: MeteringWorker, policy: Stub
) -> None:
    users = [new_user() for _ in range(3)]
    stdin = "".join(line(u) + "\n" for u in users for _ in range(4)).encode()
    code, out, err = await report(service_env, "--kafka", infra.kafka_bootstrap, stdin=stdin)
    assert (code, out.strip()) == (0, "accepted 12 of 12 lines"), err
    for u in users:
        await eventually(used_of(policy, u), 4 * EVENT_MICROS, within=60)
    # Another workspace's event is refused here, not sent for metering to dead-letter.
    stdin = (line(new_user(), workspaceId="acme") + "\n").encode()
    code, out, err = await report(service_env, "--kafka", infra.kafka_bootstrap, stdin=stdin)
    assert (code, out.strip()) == (1, "accepted 0 of 1 lines")
    assert "line 1: workspace_id: 'acme' is another workspace" in err


async def test_a_refused_credential_refuses_every_line(
    service_env: dict[str, str], ingest_addr: str
) -> None:
    url = f"http://{ingest_addr}/v1/usage"
    stdin = (line(new_user()) + "\n").encode()
    code, out, err = await report(
        service_env, "--http", url, "--token", TOKENS["gateway"], stdin=stdin
    )
    assert (code, out.strip()) == (1, "accepted 0 of 1 lines")
    assert "line 1: refused (403): credential 'tests-gateway' (gateway) lacks role reporter" in err
    # A token starting with "-" (a quarter of secrets.token_urlsafe's do) is read whole
    # in the README's form, --token=VALUE: the ingest refuses it, the CLI does not.
    code, out, err = await report(
        service_env, "--http", url, "--token=-VIlwQOlHjXuKbB8u3uOIh4shuWD", stdin=stdin
    )
    assert (code, out.strip()) == (1, "accepted 0 of 1 lines"), err
    assert "refused (401)" in err
    env = {k: v for k, v in service_env.items() if k != "QM_TOKEN"}
    code, _, err = await report(env, "--http", url, stdin=stdin)
    assert code == 2
    assert "--http needs --token or QM_TOKEN" in err
