"""The one Dockerfile: hadolint-clean, pinned, non-root with the uid the chart runs as,
no compilers in the final stage, and every command the chart runs importable. (No image
can be built here; test_readonly.py runs the services the way the image does.)"""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.deploy.chart import CHART, ROOT, load_values, manifests, render

DOCKERFILE = ROOT / "Dockerfile"


def _stages() -> list[list[str]]:
    """The Dockerfile's instructions (continuation lines joined), split per stage."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    stages: list[list[str]] = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("FROM "):
            stages.append([])
        stages[-1].append(line)
    return stages


def test_hadolint_is_clean() -> None:
    hadolint = Path(sys.executable).parent / "hadolint"
    res = subprocess.run(
        [str(hadolint), "--failure-threshold", "info", str(DOCKERFILE)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert res.returncode == 0, res.stdout + res.stderr


def test_pinned_multi_stage_non_root_without_compilers() -> None:
    stages = _stages()
    assert len(stages) >= 2, "multi-stage"
    for stage in stages:
        base = stage[0].split()[1]
        assert re.fullmatch(r"[\w./-]+:\d+\.\d+\.\d+[\w.-]*", base), f"unpinned base {base}"
    final = stages[-1]
    assert not [i for i in final if re.search(r"build-essential|gcc|apt-get install", i)]
    (user,) = [i.split()[1] for i in final if i.startswith("USER ")]
    uid, gid = (int(part) for part in user.split(":"))
    assert uid != 0
    assert gid != 0
    pod = load_values(CHART / "values.yaml")["podSecurityContext"]
    assert (pod["runAsUser"], pod["runAsGroup"]) == (uid, gid)


def test_every_command_the_chart_runs_is_in_the_image() -> None:
    copied = {i.split()[1] for i in _stages()[0] if i.startswith("COPY ") and "--from" not in i}
    commands = []
    for doc in manifests(render({})):
        if doc["kind"] in {"Deployment", "Job"}:
            commands += [c["args"] for c in doc["spec"]["template"]["spec"]["containers"]]
    assert len(commands) == 8  # six services, the migration and topic jobs
    for args in commands:
        assert args[0] == "-m"
        module = args[1]
        assert module.split(".")[0] in copied, f"{module}'s package is not copied"
        assert importlib.util.find_spec(module) is not None, module


@pytest.mark.parametrize(
    ("argv", "error"),
    [
        (["ensure-topics"], "--partitions"),
        (["ensure-topics", "--partitions", "0"], "at least 1"),
        (["ensure-topics", "--partitions", "3", "--replication-factor", "x"], "invalid int"),
    ],
)
def test_topics_command_names_a_bad_argument(argv: list[str], error: str) -> None:
    res = subprocess.run(
        [sys.executable, "-m", "quartermaster.kafka", *argv],
        capture_output=True,
        text=True,
        check=False,
        cwd=ROOT,
    )
    assert res.returncode == 2
    assert error in res.stderr
