"""The committed generated code must be what `make protos` produces now."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_generated_code_is_not_stale(tmp_path: Path) -> None:
    subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "gen_protos.py"), "--out", str(tmp_path)],
        check=True,
        capture_output=True,
    )
    fresh = {p.name: p.read_bytes() for p in (tmp_path / "quartermaster" / "v1").iterdir()}
    committed = {p.name: p.read_bytes() for p in (ROOT / "quartermaster" / "v1").glob("*_pb2*")}
    assert fresh.keys() == committed.keys(), "run: make protos"
    stale = sorted(name for name in fresh if fresh[name] != committed[name])
    assert not stale, f"stale generated code {stale}: run make protos"


def test_every_topic_has_a_schema_in_protos() -> None:
    from google.protobuf import descriptor_pool

    from quartermaster.topics import SPECS
    from quartermaster.v1 import notifications_pb2, requests_pb2, usage_pb2  # noqa: F401

    pool = descriptor_pool.Default()
    for spec in SPECS:
        if spec.schema.startswith("quartermaster.v1."):
            assert pool.FindMessageTypeByName(spec.schema).full_name == spec.schema
