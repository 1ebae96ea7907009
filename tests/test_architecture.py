"""The layers hold: every module imports on its own, first, in a fresh interpreter (no cycle hidden by
import order), and the import contracts of pyproject.toml are kept (also a CI step of its own)."""

from __future__ import annotations

import pkgutil
import subprocess
import sys
from pathlib import Path

import grpc_helper

ROOT = Path(__file__).resolve().parent.parent
MODULES = sorted(
    m.name
    for m in pkgutil.walk_packages(grpc_helper.__path__, "grpc_helper.")
    if not m.name.endswith(("_pb2", "_pb2_grpc"))
)

# Run by one child interpreter: imports each named module first, in a grandchild of its own
IMPORT_EACH_FIRST = """
import subprocess, sys
for name in sys.argv[1:]:
    run = subprocess.run([sys.executable, "-c", "import importlib, sys; importlib.import_module(sys.argv[1])", name],
                         capture_output=True, text=True)
    if run.returncode:
        print(name, "->", run.stderr.strip().splitlines()[-1])
"""


def test_every_module_imports_first() -> None:
    """Importing any module first works: a cycle would show as a partially initialized module."""
    assert {"grpc_helper.proxy.registry", "grpc_helper.events.service", "grpc_helper.calls"} <= set(MODULES)
    run = subprocess.run(
        [sys.executable, "-c", IMPORT_EACH_FIRST, *MODULES], capture_output=True, text=True, timeout=300
    )
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == "", run.stdout


def test_import_contracts() -> None:
    """Layers, no cycles at any depth, a self-contained wire API, a light CLI (see pyproject.toml)."""
    lint = Path(sys.executable).parent / "lint-imports"  # installed beside pytest (scripts/dev-setup.sh)
    run = subprocess.run([str(lint), "--no-cache"], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert run.returncode == 0, run.stdout + run.stderr
