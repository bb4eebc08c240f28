"""The platform layer stays below the services: nothing in `quartermaster/` imports a
service or the dev tooling, and no service imports the dev tooling (which sits above
them all and may import both)."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _imports(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names.add(node.module)
    return names


def _offenders(folder: str, forbidden: tuple[str, ...]) -> list[str]:
    return sorted(
        f"{path.relative_to(ROOT)} imports {name}"
        for path in (ROOT / folder).rglob("*.py")
        for name in _imports(path)
        if name.split(".")[0] in forbidden
    )


def test_the_platform_imports_no_service_and_no_dev_tooling() -> None:
    assert _offenders("quartermaster", ("services", "devtools")) == []


def test_no_service_imports_the_dev_tooling() -> None:
    assert _offenders("services", ("devtools",)) == []
