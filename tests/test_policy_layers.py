"""policy's domain modules stay pure: none of them imports asyncpg, a Kafka client or
grpc, directly or through another module of ours (read from the source, so nothing
is imported to find out). Protobuf message modules (quartermaster.v1.*_pb2) are
allowed: decisions are policy_pb2 enum values."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOMAIN = [
    "services.policy.decide",
    "services.policy.directory",
    "services.policy.directory_import",
    "services.policy.errors",
    "services.policy.evaluator",
    "services.policy.reservations",
    "services.policy.rules",
    "services.policy.totals",
    "quartermaster.validation",
]
FORBIDDEN = ("asyncpg", "confluent_kafka", "aiokafka", "faust", "grpc")


def _imports(module: str) -> set[str]:
    path = ROOT / (module.replace(".", "/") + ".py")
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            out.add(node.module)
    return out


def _reached(module: str) -> dict[str, str]:
    """Every module `module` imports, directly or through our own: name → importer."""
    seen: dict[str, str] = {}
    todo = [module]
    while todo:
        current = todo.pop()
        for name in _imports(current):
            if name in seen:
                continue
            seen[name] = current
            ours = name.split(".")[0] in ("services", "quartermaster")
            if (
                ours
                and not name.startswith("quartermaster.v1")
                and (ROOT / (name.replace(".", "/") + ".py")).exists()
            ):
                todo.append(name)
    return seen


@pytest.mark.parametrize("module", DOMAIN)
def test_domain_module_imports_no_io_client(module: str) -> None:
    bad = {
        name: importer
        for name, importer in _reached(module).items()
        if name.split(".")[0] in FORBIDDEN
    }
    assert bad == {}, f"{module} reaches I/O clients (module: imported by): {bad}"
