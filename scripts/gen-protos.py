#!/usr/bin/env python3
"""Regenerate the Python code of every .proto under protos/.

Usage: gen-protos.py [--out DIR]

protos/grpc_helper/...          -> grpc_helper/...
protos/grpc_helper_samples/...  -> services/...   (the samples package lives in services/)

With --out DIR, the same tree is written below DIR instead (used by the staleness test).
Generated files are never edited by hand: change the .proto and rerun this script.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

from grpc_tools import protoc

ROOT = Path(__file__).resolve().parent.parent
PROTOS = ROOT / "protos"
# Proto package folder -> source folder of the Python package
PACKAGE_DIRS = {"grpc_helper": "grpc_helper", "grpc_helper_samples": "services"}


def generated_files(out_root: Path) -> list[Path]:
    """Generate everything in a temp dir, then move it below out_root."""
    protos = sorted(PROTOS.rglob("*.proto"))
    include = Path(protoc.__file__).parent / "_proto"
    written: list[Path] = []
    with tempfile.TemporaryDirectory() as tmp:
        args = [
            "protoc",
            f"-I{PROTOS}",
            f"-I{include}",
            f"--python_out={tmp}",
            f"--pyi_out={tmp}",
            f"--grpc_python_out={tmp}",
            *(str(p) for p in protos),
        ]
        if protoc.main(args) != 0:
            raise SystemExit("protoc failed")
        for src in sorted(Path(tmp).rglob("*.py*")):
            rel = src.relative_to(tmp)
            dest = out_root / PACKAGE_DIRS[rel.parts[0]] / Path(*rel.parts[1:])
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(src, dest)
            written.append(dest)
    return written


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=ROOT, help="output root (default: the repository)")
    args = parser.parse_args()
    for path in generated_files(args.out):
        print(path.relative_to(args.out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
