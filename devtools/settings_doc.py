"""The settings reference, generated from the settings classes: `docs/settings.md` and
`deploy/settings.example.env`.

`python -m devtools.settings_doc` (`make settings-doc`) writes both;
`python -m devtools.settings_doc --check` exits 1 naming the stale ones (a test does
the same, so a setting added without regenerating fails the suite).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any, NamedTuple

from devtools.discovery import settings_classes
from devtools.run import DevSettings
from quartermaster.config import CommonSettings
from quartermaster.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "deploy" / "settings.example.env"
REFERENCE = ROOT / "docs" / "settings.md"

_INTRO = """\
# Settings

Every Quartermaster process reads its settings once, at start-up, from `QM_*`
environment variables. An unset or empty variable means the default below. A wrong
value stops the process with exit status 2 and a message naming every wrong variable
at once (`QM_LOG_LEVEL: unknown level 'CHATTY'`). Booleans take true/false, 1/0,
yes/no or on/off; anything else is an error, never a silent "true".

`deploy/settings.example.env` lists the same variables with their defaults, ready to
copy. Both files are generated from the settings classes (`quartermaster/config.py`,
`services/<name>/settings.py`, `devtools/run.py`) by `make settings-doc`; a test fails
when either is stale.
"""


def groups() -> list[tuple[str, type[Settings]]]:
    """(who reads them, class): the shared settings, each service's, then `make run`'s.
    A class's inherited settings are listed under its parent."""
    return [("every service", CommonSettings), *settings_classes(), ("make run", DevSettings)]


def _shown(value: Any) -> str:
    if value == "" or value is None:
        return "(empty)"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, Path):
        try:
            return str(value.relative_to(ROOT))
        except ValueError:
            return str(value)
    return str(value)


class Row(NamedTuple):
    """One variable in the reference, under the first process that reads it."""

    who: str
    variable: str
    default: str
    meaning: str
    bounds: str


def rows() -> list[Row]:
    """Each variable once, under its first reader."""
    seen: set[str] = set()
    out: list[Row] = []
    for who, cls in groups():
        for doc in cls.documented():
            if doc.variable not in seen:
                seen.add(doc.variable)
                out.append(Row(who, doc.variable, _shown(doc.default), doc.meaning, doc.bounds))
    return out


def env_file() -> str:
    """The example environment file: every variable with its default, grouped by reader."""
    lines = ["# Every Quartermaster setting with its default (generated: make settings-doc)."]
    who_now = ""
    for row in rows():
        if row.who != who_now:
            lines += ["", f"# --- {row.who}"]
            who_now = row.who
        bounds = f" ({row.bounds})" if row.bounds else ""
        value = "" if row.default == "(empty)" else row.default
        lines += [f"# {row.meaning}{bounds}", f"{row.variable}={value}"]
    return "\n".join(lines) + "\n"


def reference() -> str:
    """docs/settings.md: the introduction, then one Markdown table per reader."""
    lines = [_INTRO]
    who_now = ""
    for row in rows():
        if row.who != who_now:
            heading = [f"## {row.who}", "", "| variable | default | allowed | meaning |"]
            lines += ([""] if who_now else []) + [*heading, "|---|---|---|---|"]
            who_now = row.who
        meaning = row.meaning.replace("|", "\\|").replace("<", "&lt;").replace(">", "&gt;")
        lines.append(f"| `{row.variable}` | `{row.default}` | {row.bounds} | {meaning} |")
    return "\n".join(lines) + "\n"


def generated() -> dict[Path, str]:
    """{file: the text it should have}."""
    return {EXAMPLE: env_file(), REFERENCE: reference()}


def main() -> None:
    """Write both files, or with --check exit 1 naming those that differ."""
    parser = argparse.ArgumentParser(
        prog="python -m devtools.settings_doc",
        description="Write docs/settings.md and deploy/settings.example.env from the "
        "settings classes.",
    )
    parser.add_argument("--check", action="store_true", help="only say which are stale")
    args = parser.parse_args()
    stale = [p for p, text in generated().items() if not p.exists() or p.read_text() != text]
    if args.check:
        for path in stale:
            sys.stderr.write(f"stale: {path.relative_to(ROOT)} (run: make settings-doc)\n")
        raise SystemExit(1 if stale else 0)
    for path, text in generated().items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


if __name__ == "__main__":
    main()
