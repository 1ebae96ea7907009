"""The README stays true: its example runs, and its config table matches the code."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from grpc_helper import RpcStaticConfig

README = (Path(__file__).resolve().parent.parent / "README.md").read_text()


# Every example marked <!-- test: readme-example --> runs as a script
EXAMPLES = re.findall(r"<!-- test: readme-example -->\n```python\n(.*?)```", README, re.DOTALL)


def test_examples_are_marked() -> None:
    assert len(EXAMPLES) >= 2, "the usage and testing examples are marked with <!-- test: readme-example -->"


@pytest.mark.parametrize("example", EXAMPLES, ids=[f"example-{i}" for i in range(len(EXAMPLES))])
def test_example_runs(example: str, tmp_path: Path) -> None:
    script = tmp_path / "example.py"
    script.write_text(example)
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert done.returncode == 0, done.stderr


def test_config_table_matches_static_items() -> None:
    rows = re.findall(r"^\| `(rpc-[a-z-]+)` \| `([A-Z_]+)` \|.*\| `([^`]*)` \|$", README, re.MULTILINE)
    table = {name: (attr, default) for name, attr, default in rows}
    items = {i.name: i for i in RpcStaticConfig.config_items()}
    assert set(table) == set(items)
    for name, (attr, default) in table.items():
        assert getattr(RpcStaticConfig, attr) is items[name]
        assert items[name].hard_coded_default == default, name
