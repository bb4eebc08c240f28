"""Every link between the README and docs/ lands on a file of this repository (the
project depends on nothing outside it) and, with `#anchor`, on one of its headings."""

from __future__ import annotations

import re
from pathlib import Path

from tests.integration.docs_blocks import ROOT, blocks, doc_files

_LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")


def anchors(path: Path) -> set[str]:
    """GitHub's anchors for the headings of `path` (outside fenced blocks)."""
    fenced = {b.line + i for b in blocks(path) for i in range(len(b.lines) + 1)}
    found = set()
    for n, line in enumerate(path.read_text().splitlines(), start=1):
        if line.startswith("#") and n not in fenced:
            title = line.lstrip("#").strip().lower()
            found.add(re.sub(r"[^\w\- ]", "", title).replace(" ", "-"))
    return found


def test_links_stay_inside_the_repository_and_land() -> None:
    broken = []
    for page in doc_files():
        for target in _LINK.findall(page.read_text()):
            if re.match(r"[a-z]+:", target):
                continue  # a URL
            file, _, anchor = target.partition("#")
            path = (page.parent / file).resolve() if file else page
            if not path.is_relative_to(ROOT):
                broken.append(f"{page.name}: {target} is outside the repository")
            elif not path.exists():
                broken.append(f"{page.name}: {target} does not exist")
            elif anchor and path.suffix == ".md" and anchor not in anchors(path):
                broken.append(f"{page.name}: {target}: no such heading")
    assert not broken, "\n".join(broken)
