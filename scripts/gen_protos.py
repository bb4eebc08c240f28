"""Generate the Python code for protos/ into quartermaster/v1/ (or --out DIR).

One command, reproducible: the drift test runs it into a temporary directory and
compares the result with the committed files.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

import grpc_tools
from grpc_tools import protoc

ROOT = Path(__file__).resolve().parent.parent
PROTOS = ROOT / "protos"


def generate(out: Path) -> list[Path]:
    """Write *_pb2.py, *_pb2_grpc.py and their .pyi stubs below `out`; return them."""
    sources = sorted(str(p.relative_to(PROTOS)) for p in PROTOS.rglob("*.proto"))
    plugin_dir = Path(sys.executable).parent
    well_known = Path(grpc_tools.__file__).parent / "_proto"
    args = [
        "grpc_tools.protoc",
        f"-I{PROTOS}",
        f"-I{well_known}",
        f"--python_out={out}",
        f"--grpc_python_out={out}",
        f"--plugin=protoc-gen-mypy={plugin_dir / 'protoc-gen-mypy'}",
        f"--plugin=protoc-gen-mypy_grpc={plugin_dir / 'protoc-gen-mypy_grpc'}",
        f"--mypy_out={out}",
        f"--mypy_grpc_out={out}",
        *sources,
    ]
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed; see the message above")
    generated = sorted(p for p in (out / "quartermaster" / "v1").iterdir() if p.is_file())
    return generated


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=None, help="write here instead of the repo")
    ns = parser.parse_args()
    if ns.out is not None:
        generate(ns.out)
        return
    target = ROOT / "quartermaster" / "v1"
    for old in target.glob("*_pb2*"):
        old.unlink()
    tmp = ROOT / ".run" / "protogen"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for path in generate(tmp):
        shutil.copy2(path, target / path.name)
    shutil.rmtree(tmp)


if __name__ == "__main__":
    main()
