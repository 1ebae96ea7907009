#!/usr/bin/env python3
"""Regenerate the Python code of every .proto under protos/.

Usage: gen-protos.py [--out DIR | --check]

protos/grpc_helper/...          -> grpc_helper/...
protos/grpc_helper_samples/...  -> services/...   (the samples package lives in services/)

protos/grpc_helper/**/*.proto are also copied, as they are, below grpc_helper/protos/ (package data:
`python -m grpc_helper.protoc` generates a user's code against them from an installed grpc-helper).

examples/<name>/protos/... -> examples/<name>/...  (an example service's own protos, importing grpc-helper's)
generated as the README has users do it (`python -m grpc_helper.protoc -I protos --python_out=. --pyi_out=.
--grpc_python_out=. ...`): `_pb2.py`, `_pb2.pyi` and `_pb2_grpc.py`.

Each .proto gives `_pb2.py` and its `_pb2.pyi` (protoc's own), `_pb2_grpc.py` (grpcio-tools) and a
typed `_pb2_grpc.pyi` (mypy-protobuf's plugin, sync flavour: the library serves and calls with the
sync grpc API), which types the stubs' requests and responses for mypy.

With --out DIR, the same tree is written below DIR instead. With --check, nothing is written: it
exits 1, naming the files, when a committed generated file (or packaged .proto copy) is stale or
missing, or has no .proto any more (CI runs it as a step of its own; the staleness test calls it too).
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
# mypy-protobuf's protoc plugin, installed next to the Python running this script (the dev extras)
MYPY_GRPC_PLUGIN = Path(sys.executable).parent / "protoc-gen-mypy_grpc"
# only_sync: no aio stubs; generate_concrete_servicer_stubs: servicer methods are concrete, as in
# the generated .py (they answer UNIMPLEMENTED), not abstract; quiet: no "Writing ..." lines
MYPY_GRPC_OPTIONS = "only_sync,generate_concrete_servicer_stubs,quiet"
PROTOS = ROOT / "protos"
# Proto package folder -> source folder of the Python package
PACKAGE_DIRS = {"grpc_helper": "grpc_helper", "grpc_helper_samples": "services"}
# The library's own protos, shipped as package data (the samples' are not: they are examples)
SHIPPED = "grpc_helper"
SHIPPED_DIR = Path("grpc_helper") / "protos"  # relative to the output root; the include path of grpc_helper.protoc
# Example services with protos of their own (examples/<name>/protos): relative to the output root
EXAMPLES = [Path("examples") / "greeter"]


def generated_files(out_root: Path) -> list[Path]:
    """Generate everything in a temp dir, then move it below out_root."""
    protos = sorted(PROTOS.rglob("*.proto"))
    include = Path(protoc.__file__).parent / "_proto"
    written: list[Path] = []
    if not MYPY_GRPC_PLUGIN.exists():
        raise SystemExit(f"{MYPY_GRPC_PLUGIN} is missing: install the dev extras (scripts/dev-setup.sh)")
    with tempfile.TemporaryDirectory() as tmp:
        args = [
            "protoc",
            f"-I{PROTOS}",
            f"-I{include}",
            f"--python_out={tmp}",
            f"--pyi_out={tmp}",
            f"--grpc_python_out={tmp}",
            f"--plugin=protoc-gen-mypy_grpc={MYPY_GRPC_PLUGIN}",
            f"--mypy_grpc_out={MYPY_GRPC_OPTIONS}:{tmp}",
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


def example_files(out_root: Path) -> list[Path]:
    """Generate each example's protos below out_root / <example> (see the module doc)."""
    include = Path(protoc.__file__).parent / "_proto"
    written: list[Path] = []
    for example in EXAMPLES:
        protos = ROOT / example / "protos"
        with tempfile.TemporaryDirectory() as tmp:
            args = [
                "protoc",
                f"-I{protos}",
                f"-I{PROTOS}",  # grpc-helper's own, as grpc_helper.protoc adds them (its package data copies)
                f"-I{include}",
                f"--python_out={tmp}",
                f"--pyi_out={tmp}",
                f"--grpc_python_out={tmp}",
                *(str(p) for p in sorted(protos.rglob("*.proto"))),
            ]
            if protoc.main(args) != 0:
                raise SystemExit(f"protoc failed on {example}")
            for src in sorted(Path(tmp).rglob("*.py*")):
                dest = out_root / example / src.relative_to(tmp)
                dest.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(src, dest)
                written.append(dest)
    return written


GENERATED_GLOBS = ("*_pb2.py", "*_pb2.pyi", "*_pb2_grpc.py", "*_pb2_grpc.pyi")


def shipped_protos(out_root: Path) -> list[Path]:
    """Copy the library's .proto files below out_root / SHIPPED_DIR, keeping their import paths."""
    written = []
    for src in sorted((PROTOS / SHIPPED).rglob("*.proto")):
        dest = out_root / SHIPPED_DIR / src.relative_to(PROTOS)
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, dest)
        written.append(dest)
    return written


def stale(fresh_root: Path, fresh: set[Path]) -> list[str]:
    """Problems of the committed copies of the files generated below fresh_root (relative paths in `fresh`)."""
    problems = []
    for rel in sorted(fresh):
        committed = ROOT / rel
        if not committed.exists():
            problems.append(f"{rel} is missing")
        elif committed.read_bytes() != (fresh_root / rel).read_bytes():
            problems.append(f"{rel} is stale")
    return problems


def check() -> list[str]:
    """Problems with the committed generated code: stale, missing, or orphaned (its .proto is gone)."""
    with tempfile.TemporaryDirectory() as tmp:
        made = [*generated_files(Path(tmp)), *shipped_protos(Path(tmp)), *example_files(Path(tmp))]
        fresh = {path.relative_to(tmp) for path in made}
        problems = stale(Path(tmp), fresh)
    committed = [ROOT / folder for folder in [*PACKAGE_DIRS.values(), *EXAMPLES]]
    for path in sorted(p for folder in committed for pattern in GENERATED_GLOBS for p in folder.rglob(pattern)):
        if path.relative_to(ROOT) not in fresh:
            problems.append(f"{path.relative_to(ROOT)} has no .proto any more")
    for path in sorted((ROOT / SHIPPED_DIR).rglob("*.proto")):
        if path.relative_to(ROOT) not in fresh:
            problems.append(f"{path.relative_to(ROOT)} has no .proto any more")
    return problems


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=ROOT, help="output root (default: the repository)")
    parser.add_argument("--check", action="store_true", help="only check the committed generated code")
    args = parser.parse_args()
    if args.check:
        problems = check()
        for problem in problems:
            print(f"gen-protos: {problem}: run scripts/gen-protos.py (and delete orphans)", file=sys.stderr)
        return 1 if problems else 0
    for path in [*generated_files(args.out), *shipped_protos(args.out), *example_files(args.out)]:
        print(path.relative_to(args.out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
