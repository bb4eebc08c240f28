"""The commands and code the README, docs/ and the services' READMEs show, read from
their fenced blocks.

A `console` block holds commands, each on a line starting with `$ `; a command goes on
over the next lines while its shell quotes are open or a line ends with a backslash.
The other lines of the block are what the command before them prints. A `python`
block names itself with `id=NAME` in its info string (```` ```python id=reporter ````),
so a test can say how to run it.
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
_FENCE = re.compile(r"^(`{3,})(.*)$")


def doc_files() -> list[Path]:
    """The README, every page in docs/ and each service's README, in a stable order."""
    return [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")),
            *sorted((ROOT / "services").glob("*/README.md"))]  # fmt: skip


@dataclass(frozen=True)
class Block:
    """One fenced block: where it is, its language and attributes, and its lines."""

    path: Path
    line: int  # 1-based line of the opening fence
    lang: str
    attrs: dict[str, str]
    lines: tuple[str, ...]

    @property
    def where(self) -> str:
        return f"{self.path.relative_to(ROOT)}:{self.line}"


@dataclass(frozen=True)
class Command:
    """A command as a console block shows it, with the output lines shown under it."""

    where: str
    text: str
    output: tuple[str, ...]


def blocks(path: Path) -> list[Block]:
    """Every fenced block of a Markdown file; an unclosed fence raises ValueError."""
    found: list[Block] = []
    lines = path.read_text().splitlines()
    i = 0
    while i < len(lines):
        m = _FENCE.match(lines[i])
        if m is None:
            i += 1
            continue
        fence, info = m.group(1), m.group(2).split()
        end = next((j for j in range(i + 1, len(lines)) if lines[j].strip() == fence), None)
        if end is None:
            raise ValueError(f"{path.relative_to(ROOT)}:{i + 1}: fence never closed")
        attrs = dict(a.split("=", 1) for a in info[1:] if "=" in a)
        found.append(Block(path, i + 1, info[0] if info else "", attrs, tuple(lines[i + 1 : end])))
        i = end + 1
    return found


def _complete(text: str) -> bool:
    if text.endswith("\\"):
        return False
    try:
        shlex.split(text)
    except ValueError:  # "No closing quotation"
        return False
    return True


def commands(block: Block) -> list[Command]:
    """The commands of a console block, in order; text before the first `$ ` raises."""
    out: list[Command] = []
    lines = list(block.lines)
    i = 0
    while i < len(lines):
        line = lines[i]
        if not line.startswith("$ "):
            if not line.strip():
                i += 1
                continue
            raise ValueError(f"{block.where}: output {line!r} before any `$ ` command")
        text, i = line[2:], i + 1
        while not _complete(text):
            if i >= len(lines):
                raise ValueError(f"{block.where}: command never ends: {text!r}")
            text, i = text + "\n" + lines[i], i + 1
        shown: list[str] = []
        while i < len(lines) and not lines[i].startswith("$ "):
            if lines[i].strip():
                shown.append(lines[i])
            i += 1
        out.append(Command(f"{block.where}", text, tuple(shown)))
    return out


def all_blocks(lang: str) -> list[Block]:
    """Every block in this language across the README and docs/."""
    return [b for path in doc_files() for b in blocks(path) if b.lang == lang]


def normalized(line: str) -> str:
    """A line with its runs of whitespace made one space (tables pad to their widths)."""
    return " ".join(line.split())
