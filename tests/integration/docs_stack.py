"""Running the docs' commands: in a shell, as servers, against the session's stack."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from devtools.localinfra import free_port
from tests.integration.docs_blocks import ROOT, Command, normalized

LOGS = ROOT / ".run" / f"test-docs-{os.getpid()}"
# Set by an enclosing `make test`; a command from the docs runs as a person's shell would.
_MAKE_VARS = ("MAKEFLAGS", "MFLAGS", "MAKELEVEL", "MAKEOVERRIDES")


def as_typed(env: dict[str, str]) -> dict[str, str]:
    """`env` without what an enclosing make adds (nested make's "Entering directory"
    lines and inherited flags would change what a documented command prints)."""
    return {k: v for k, v in env.items() if k not in _MAKE_VARS}


def shown_lines_missing(shown: tuple[str, ...], printed: str) -> list[str]:
    """The shown lines (`...` matching anything) that no printed line matches, runs
    of whitespace counting as one space."""
    have = [normalized(line) for line in printed.splitlines()]
    missing = []
    for line in shown:
        pattern = ".*".join(re.escape(part) for part in normalized(line).split("..."))
        if not any(re.fullmatch(pattern, h) for h in have):
            missing.append(line)
    return missing


async def shell(text: str, env: dict[str, str], within_s: float = 300) -> tuple[int, str]:
    """Run `text` with bash (pipefail) in the repository; (exit code, stdout + stderr)."""
    proc = await asyncio.create_subprocess_exec(
        "bash", "-o", "pipefail", "-c", text, cwd=ROOT, env=as_typed(env),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    out, _ = await asyncio.wait_for(proc.communicate(), within_s)
    assert proc.returncode is not None
    return proc.returncode, out.decode()


async def run_shown(cmd: Command, text: str, env: dict[str, str], within: float = 30) -> str:
    """Run `text` (the command as shown, addresses replaced) until it exits 0 having
    printed the lines the docs show under it: counting takes a moment, so it is run
    again for up to `within` seconds. Raises AssertionError naming what was missing."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while True:
        rc, printed = await shell(text, env)
        assert rc == 0, f"{cmd.where}: `{cmd.text}` exited {rc}:\n{printed}"
        missing = shown_lines_missing(cmd.output, printed)
        if not missing:
            return printed
        if loop.time() > deadline:
            raise AssertionError(f"{cmd.where}: `{cmd.text}` never printed {missing}:\n{printed}")
        await asyncio.sleep(0.5)


@dataclass
class Server:
    """A server process started by a documented command, stopped by SIGTERM."""

    text: str
    env: dict[str, str]
    addr: str
    log: Path
    proc: asyncio.subprocess.Process | None = None

    async def start(self, within: float = 90) -> None:
        """Start it and wait until the gRPC health service at `addr` says SERVING;
        AssertionError (with the log's tail) when it exits or never does."""
        self.log.parent.mkdir(parents=True, exist_ok=True)
        with self.log.open("wb") as log:
            self.proc = await asyncio.create_subprocess_exec(
                "bash", "-c", f"exec {self.text}", cwd=ROOT, env=as_typed(self.env),
                stdout=log, stderr=log, start_new_session=True,
            )  # fmt: skip
        loop = asyncio.get_running_loop()
        deadline = loop.time() + within
        async with grpc.aio.insecure_channel(self.addr) as channel:
            health = health_pb2_grpc.HealthStub(channel)
            while loop.time() < deadline:
                assert self.proc.returncode is None, f"`{self.text}` exited:\n{self.tail()}"
                with contextlib.suppress(grpc.aio.AioRpcError):  # not listening yet
                    got = await health.Check(health_pb2.HealthCheckRequest(), timeout=1)
                    if got.status == health_pb2.HealthCheckResponse.SERVING:
                        return
                await asyncio.sleep(0.2)
        raise AssertionError(f"`{self.text}` not SERVING at {self.addr}:\n{self.tail()}")

    async def stop(self) -> int:
        """SIGTERM, then its exit code (a server still running after 30 s is killed,
        and its -9 fails whoever expects 0)."""
        if self.proc is None:
            return -1
        if self.proc.returncode is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(self.proc.wait(), 30)
            except TimeoutError:
                self.proc.kill()
                await self.proc.wait()
        assert self.proc.returncode is not None
        return self.proc.returncode

    def tail(self) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-30:])


@dataclass
class DocsStack:
    """The settings and address replacements the docs' commands run with: the session's
    infrastructure, and a policy server and Cost API of the docs' own workspace."""

    env: dict[str, str]
    replace: dict[str, str]
    servers: list[Server] = field(default_factory=list)

    def text(self, shown: str) -> str:
        """`shown` with the documented default addresses replaced by the session's."""
        for documented, ours in self.replace.items():
            shown = shown.replace(documented, ours)
        return shown

    def server(self, shown: str, addr_setting: str) -> Server:
        """A server for command `shown` on a port of its own, in a workspace of its own
        (so nothing it does touches the other tests)."""
        addr = f"127.0.0.1:{free_port()}"
        env = {**self.env, addr_setting: addr, "QM_WORKSPACE_ID": f"ws-{uuid.uuid4().hex[:8]}"}
        started = Server(self.text(shown), env, addr, LOGS / f"server-{len(self.servers)}.log")
        self.servers.append(started)
        return started
