"""Every setting of every process, for the README table and the example env file.

`python -m devtools.settings_doc env` prints the example file;
`python -m devtools.settings_doc table` prints the README's Markdown table.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from devtools.discovery import settings_classes
from devtools.run import DevSettings
from quartermaster.config import CommonSettings
from quartermaster.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "deploy" / "settings.example.env"


def groups() -> list[tuple[str, type[Settings]]]:
    """(who reads them, class): the shared settings, each service's, then `make run`'s.
    A class's inherited settings are listed under its parent."""
    return [("every service", CommonSettings), *settings_classes(), ("make run", DevSettings)]


def _shown(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, Path):
        try:
            return str(value.relative_to(ROOT))
        except ValueError:
            return str(value)
    return str(value)


def rows() -> list[tuple[str, str, str, str]]:
    """(who, variable, default, help), each variable once, under its first reader."""
    seen: set[str] = set()
    out: list[tuple[str, str, str, str]] = []
    for who, cls in groups():
        for env, default, help_text in cls.documented():
            if env not in seen:
                seen.add(env)
                out.append((who, env, _shown(default), help_text))
    return out


def env_file() -> str:
    lines = ["# Every Quartermaster setting with its default (generated: make settings-doc)."]
    who_now = ""
    for who, env, default, help_text in rows():
        if who != who_now:
            lines += ["", f"# --- {who}"]
            who_now = who
        lines += [f"# {help_text}", f"{env}={default}"]
    return "\n".join(lines) + "\n"


def table() -> str:
    lines = ["| variable | default | read by | meaning |", "|---|---|---|---|"]
    for who, env, default, help_text in rows():
        lines.append(f"| `{env}` | `{default}` | {who} | {help_text} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    what = sys.argv[1] if len(sys.argv) > 1 else "env"
    sys.stdout.write(table() if what == "table" else env_file())


if __name__ == "__main__":
    main()
