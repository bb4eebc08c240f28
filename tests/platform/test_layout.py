"""The codebase's shape, checked: who may import whom, and how large a piece may grow.

- `quartermaster/` is the platform layer: it imports no service and no dev tooling.
- A service imports no other service (they talk through protos and topics) and no
  dev tooling (`devtools/` sits above them all and may import both).
- A domain module is pure: neither it nor anything of ours it imports, however
  indirectly, imports asyncpg, a Kafka client, faust or grpc. The domain modules are
  listed below, per service; a new one is added here when it is written.
- No file over 400 lines and no function over 80, outside generated code, migrations
  and benches, unless its module docstring says why it reads better whole (the words
  "better whole" mark that sentence).

Static (ast), so it needs no infrastructure and imports nothing it checks.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from functools import cache
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("quartermaster", "services", "devtools")
IO_LIBRARIES = ("asyncpg", "confluent_kafka", "aiokafka", "faust", "mode", "grpc")
MAX_FILE_LINES = 400
MAX_FUNCTION_LINES = 80
WHOLE_MARK = "better whole"

DOMAIN_MODULES = {
    "platform": [
        "quartermaster.model_ids",
        "quartermaster.money",
        "quartermaster.periods",
        "quartermaster.redact",
        "quartermaster.partitioning",
        "quartermaster.roles",
        "quartermaster.tokens",
        "quartermaster.validation",
        "quartermaster.wire",
        "quartermaster.workspaces",
    ],
    "metering": [
        "services.metering.aggregate",
        "services.metering.bounds",
        "services.metering.burnrate",
        "services.metering.catalog_limits",
        "services.metering.dead_letter",
        "services.metering.decode",
        "services.metering.dedupe",
        "services.metering.dlq_limit",
        "services.metering.ingest_body",
        "services.metering.json_event",
        "services.metering.pricing",
        "services.metering.token_prices",
        "services.metering.topic_check",
    ],
    "notifier": [
        "services.notifier.audience",
        "services.notifier.channel",
        "services.notifier.plan",
        "services.notifier.render",
        "services.notifier.schedule",
        "services.notifier.retries",
        "services.notifier.slack_actions",
    ],
    "policy": [
        "services.policy.decide",
        "services.policy.evaluator",
        "services.policy.model_rules",
        "services.policy.readiness",
        "services.policy.reservations",
        "services.policy.rules",
        "services.policy.topic_mark",
        "services.policy.totals",
    ],
    "requests": [
        "services.requests.ask",
        "services.requests.grants",
        "services.requests.machine",
        "services.requests.paging",
        "services.requests.routing",
        "services.requests.standing",
        "services.requests.timing",
    ],
}


def _module_files() -> dict[str, Path]:
    files: dict[str, Path] = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            if "v1" in path.relative_to(ROOT).parts[:2]:
                continue  # generated protobuf code
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            files[".".join(parts)] = path
    return files


MODULES = _module_files()


@cache
def _imports(module: str) -> frozenset[str]:
    """Every module name `module` imports (top level or inside functions)."""
    path = MODULES[module]
    tree = ast.parse(path.read_text(), str(path))
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            names.add(base)
            # `from pkg import mod` imports the module pkg.mod when there is one.
            names.update(f"{base}.{a.name}" for a in node.names if f"{base}.{a.name}" in MODULES)
    return frozenset(names)


def _ours(name: str) -> str | None:
    """The module of ours that `name` is (or lies in), else None."""
    while name:
        if name in MODULES:
            return name
        name = name.rpartition(".")[0]
    return None


def _top(name: str) -> str:
    return name.split(".")[0]


def _service(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if parts[0] == "services" and len(parts) > 1 else None


def test_the_platform_layer_imports_no_service_and_no_dev_tooling() -> None:
    wrong = [
        f"{m} imports {n}"
        for m in MODULES
        if _top(m) == "quartermaster"
        for n in _imports(m)
        if _top(n) in {"services", "devtools"}
    ]
    assert not wrong, "\n".join(wrong)


def test_no_service_imports_another_or_the_dev_tooling() -> None:
    wrong = [
        f"{m} imports {n}"
        for m in MODULES
        if _service(m)
        for n in _imports(m)
        if (_service(n) and _service(n) != _service(m)) or _top(n) == "devtools"
    ]
    assert not wrong, "\n".join(wrong)


def _io_paths(module: str) -> Iterator[list[str]]:
    """Import chains from `module` to an I/O library, through modules of ours."""
    seen: set[str] = set()
    stack: list[list[str]] = [[module]]
    while stack:
        chain = stack.pop()
        for name in sorted(_imports(chain[-1])):
            if _top(name) in IO_LIBRARIES:
                yield [*chain, name]
            ours = _ours(name)
            if ours and ours not in seen and ours != chain[-1]:
                seen.add(ours)
                stack.append([*chain, ours])


@pytest.mark.parametrize(
    "module", [m for modules in DOMAIN_MODULES.values() for m in modules], ids=str
)
def test_a_domain_module_reaches_no_io_library(module: str) -> None:
    assert module in MODULES, f"{module} is listed as a domain module but does not exist"
    chains = [" -> ".join(c) for c in _io_paths(module)]
    assert not chains, "\n".join(chains)


def _sized_files() -> Iterator[Path]:
    for module, path in MODULES.items():
        del module
        yield path
    yield from sorted((ROOT / "tests").rglob("*.py"))
    yield from (p for p in sorted((ROOT / "scripts").glob("*.py")) if "bench" not in p.name)


def test_no_file_or_function_is_too_long_to_read_unless_it_says_why() -> None:
    wrong = []
    for path in _sized_files():
        text = path.read_text()
        tree = ast.parse(text, str(path))
        doc = ast.get_docstring(tree) or ""
        if WHOLE_MARK in " ".join(doc.split()):
            continue
        rel = path.relative_to(ROOT)
        lines = text.count("\n")
        if lines > MAX_FILE_LINES:
            wrong.append(f"{rel}: {lines} lines")
        for node in ast.walk(tree):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                length = (node.end_lineno or node.lineno) - node.lineno + 1
                if length > MAX_FUNCTION_LINES:
                    wrong.append(f"{rel}:{node.lineno} {node.name}() is {length} lines")
    assert not wrong, "\n".join(wrong)
