"""The image's assumptions, proven on the real services: every process the chart runs
works from a read-only tree, as a non-root user, with only the directory the chart
mounts writable (/tmp). The metering worker has no data dir of its own (faust, which it
had, kept local files in one; confluent-kafka keeps none): it counts with nothing else
writable.

No image can be built here, so the tree is a copy of the packages with every write bit
taken away. Root ignores permission bits, and CI runs as root: there the processes run
under `setpriv` with every capability dropped (CAP_DAC_OVERRIDE above all), so the mode
bits bind them as they bind the pod's uid 10001. (Switching to `nobody` instead fails:
the interpreter lives under /root, mode 0700.) The test first proves the copy can't be
written to."""

from __future__ import annotations

import asyncio
import os
import shutil
import stat
import subprocess
import sys
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from devtools.localinfra import free_port
from devtools.localinfra.process import ChildProcess
from devtools.localinfra.stack import Infra
from tests.deploy.chart import ROOT
from tests.helpers import eventually, metrics_env, produce_usage, scrape, serving, usage

PACKAGES = ("quartermaster", "services", "devtools")


class Sandbox:
    """A read-only copy of the packages (`app`), the one writable dir the chart mounts
    (`tmp`), and the argv prefix (`drop`) that takes root's powers away."""

    def __init__(self, base: Path) -> None:
        self.app = base / "app"
        self.tmp = base / "tmp"
        self.logs = base / "logs"
        # argv prefix that makes the mode bits bind (nothing needed when not root)
        self.drop = (
            ["setpriv", "--bounding-set=-all", "--inh-caps=-all", "--no-new-privs"]
            if os.geteuid() == 0
            else []
        )
        for package in PACKAGES:
            shutil.copytree(
                ROOT / package,
                self.app / package,
                ignore=shutil.ignore_patterns("__pycache__", "*.pyc"),
            )
        self.tmp.mkdir()
        self._set_writable(False)

    def _set_writable(self, writable: bool) -> None:
        for path in [self.app, *self.app.rglob("*")]:
            mode = path.stat().st_mode
            bits = stat.S_IWUSR if writable else 0
            path.chmod((mode & ~0o222) | bits)

    def files(self) -> set[Path]:
        return set(self.app.rglob("*"))

    def restore(self) -> None:
        self._set_writable(True)


@pytest.fixture
def sandbox(tmp_path: Path) -> Iterator[Sandbox]:
    box = Sandbox(tmp_path)
    try:
        yield box
    finally:
        box.restore()


def _env(box: Sandbox, service_env: dict[str, str], **extra: str) -> dict[str, str]:
    env = {k: v for k, v in service_env.items() if k != "PYTHONPATH"}
    return {
        **env,
        "PYTHONPATH": str(box.app),
        "TMPDIR": str(box.tmp),
        "HOME": str(box.tmp),
        **extra,
    }


def _run(box: Sandbox, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*box.drop, sys.executable, *args],
        env=env,
        cwd=box.app,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def _ok(box: Sandbox, env: dict[str, str], *args: str) -> str:
    res = _run(box, env, *args)
    assert res.returncode == 0, f"{args} failed:\n{res.stdout}{res.stderr}"
    return res.stdout


def _answers(url: str) -> bool:
    """Whether GET `url` answers 200 now."""
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            return bool(resp.status == 200)
    except OSError:  # not listening yet, or an HTTP error status
        return False


async def _all_up(procs: list[ChildProcess], addrs: dict[str, str]) -> None:
    """Until every process in `procs` is up: policy and the Cost API SERVING, the
    ingest's /healthz 200 (its broker reached), the notifier started (its log says
    so: it connected to PostgreSQL and built its channels; its group is its own and its
    Slack out of reach, as it has nothing to send here). Fails at once if one died."""

    async def up() -> bool:
        dead = [p.name for p in procs if p.poll() is not None]
        assert not dead, "\n".join(f"{p.name}:\n{p.log_tail()}" for p in procs)
        notifier = next(p for p in procs if p.name == "notifier")
        return (
            await serving(addrs["policy"])
            and await serving(addrs["api"])
            and await asyncio.to_thread(_answers, f"http://{addrs['ingest']}/healthz")
            and "running for workspace" in notifier.log_tail(200)
        )

    await eventually(up, True, within=90)


@pytest.mark.infra
async def test_every_process_runs_from_a_read_only_tree(
    infra: Infra, service_env: dict[str, str], sandbox: Sandbox
) -> None:
    policy_addr = f"127.0.0.1:{free_port()}"
    api_addr = f"127.0.0.1:{free_port()}"
    metrics_addr = f"127.0.0.1:{free_port()}"
    ingest_addr = f"127.0.0.1:{free_port()}"
    env = _env(
        sandbox,
        service_env,
        QM_POLICY_ADDR=policy_addr,
        QM_USAGE_API_ADDR=api_addr,
        QM_DIRECTORY_ADDR=policy_addr,
        QM_METERING_INGEST_ADDR=ingest_addr,
        **{**metrics_env(), "QM_METERING_METRICS_ADDR": metrics_addr},
        QM_METERING_APP_ID=f"qm-metering-readonly-{uuid.uuid4().hex[:8]}",
        QM_NOTIFIER_GROUP_ID=f"qm-notifier-readonly-{uuid.uuid4().hex[:8]}",
        QM_NOTIFIER_SLACK_BASE_URL=f"http://127.0.0.1:{free_port()}/api/",
    )
    before = sandbox.files()
    # The sandbox is real: the copy can't be written to, the mounted dir can.
    refused = _run(sandbox, env, "-c", "open('services/x', 'w')")
    assert "PermissionError" in refused.stderr, refused.stderr
    _ok(sandbox, env, "-c", f"open({str(sandbox.tmp / 'x')!r}, 'w')")
    # The code that runs is the read-only copy, not the checkout.
    where = _ok(sandbox, env, "-c", "import quartermaster, services; print(services.__path__[0])")
    assert where.strip() == str(sandbox.app / "services"), where
    # The hook Jobs first, as Helm runs them.
    _ok(sandbox, env, "-m", "devtools.migrate")
    _ok(sandbox, env, "-m", "quartermaster.kafka", "ensure-topics", "--partitions", "3")

    commands = {
        "policy": ["-m", "services.policy"],
        "cost-api": ["-m", "services.metering.api"],
        "metering": ["-m", "services.metering"],
        "ingest": ["-m", "services.metering.ingest"],
        "notifier": ["-m", "services.notifier"],
    }
    procs = [
        ChildProcess(
            name,
            [*sandbox.drop, sys.executable, *args],
            sandbox.logs / f"{name}.log",
            env=env,
            cwd=sandbox.app,
        )
        for name, args in commands.items()
    ]
    try:
        for proc in procs:
            proc.start()
        await _all_up(procs, {"policy": policy_addr, "api": api_addr, "ingest": ingest_addr})

        # The worker counts a real event: it joined its group, read the record and
        # committed what it counted, writing no file.
        user = f"readonly-{uuid.uuid4().hex[:8]}"
        produce_usage(infra.kafka_bootstrap, [usage(user)])

        async def counted() -> bool:
            assert procs[2].poll() is None, procs[2].log_tail()
            # Counted, or skipped as a duplicate: when the session's worker runs too (an
            # earlier test started it), it may count the event first, and event ids are
            # remembered per partition in the shared database. Either way this worker
            # read, decided and committed it from the read-only tree.
            try:
                seen = [
                    await asyncio.to_thread(
                        scrape, metrics_addr, "qm_metering_events_total", outcome=outcome
                    )
                    for outcome in ("counted", "duplicate")
                ]
            except OSError:
                return False
            return sum(v or 0 for v in seen) >= 1

        await eventually(counted, True, within=90)
    finally:
        for proc in procs:
            proc.stop(timeout=15)
    assert sandbox.files() == before, "something was written into the read-only tree"
