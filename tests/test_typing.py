"""Typed client stubs: `RpcClient.stub(name, StubClass)` gives a stub that mypy checks (requests and
responses of every call kind, from the generated `_pb2_grpc.pyi`), and that is the client's own stub
at run time."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from grpc_helper.api import Filter, MultiServiceInfo
from grpc_helper.api.config_pb2_grpc import ConfigServiceStub
from grpc_helper.api.server_pb2_grpc import RpcServerServiceStub
from grpc_helper.testing import serve
from grpc_helper_samples.api import EchoRequest, EchoResponse
from grpc_helper_samples.api.echo_pb2_grpc import EchoServiceStub

from helpers import echo_descriptor

ROOT = Path(__file__).resolve().parent.parent

# Checked with the project's own mypy configuration (strict). Each line mypy must reject ends with
# `# E: <error code>`; every other line must be accepted.
SNIPPET = """\
from collections.abc import Iterator

from grpc_helper import RpcClient
from grpc_helper.api import Empty, Filter, MultiServiceInfo, ResultStatus
from grpc_helper.api.server_pb2_grpc import RpcServerServiceStub
from grpc_helper_samples.api import EchoRequest, EchoResponse
from grpc_helper_samples.api.echo_pb2_grpc import EchoServiceStub


def right(client: RpcClient) -> list[EchoResponse]:
    echo = client.stub("echo", EchoServiceStub)
    out = [echo.echo(EchoRequest(text="a"), timeout=5)]
    out += list(echo.repeat(EchoRequest(count=2)))
    out.append(echo.collect(iter([EchoRequest(text="b")])))
    out += list(echo.chat(iter([EchoRequest(text="c")])))
    info: MultiServiceInfo = client.stub("srv", RpcServerServiceStub).info(Filter())
    return out if info.items else []


def wrong(client: RpcClient, requests: Iterator[EchoRequest]) -> None:
    echo = client.stub("echo", EchoServiceStub)
    echo.echo(Empty())  # E: arg-type
    echo.echo(EchoRequest(), timeout="5")  # E: arg-type
    text: int = echo.echo(EchoRequest()).text  # E: assignment
    status: ResultStatus = echo.echo(EchoRequest())  # E: assignment
    echo.repeat(requests)  # E: arg-type
    echo.collect(EchoRequest())  # E: arg-type
    echo.nope(EchoRequest())  # E: attr-defined
    client.stub("srv", RpcServerServiceStub).info(EchoRequest())  # E: arg-type


def dynamic(client: RpcClient) -> None:
    client.echo.echo(Empty())  # the attribute stays dynamic (Any): no check
"""


def mypy_errors(tmp_path: Path, source: str) -> list[tuple[int, str]]:
    """(line, error code) of each error mypy reports on `source`, checked as the project checks its code."""
    # mypy finds the packages in their source folders (it can't follow the editable install's import
    # hook): grpc_helper in the repository, grpc_helper_samples (services/) through a link
    (tmp_path / "grpc_helper_samples").symlink_to(ROOT / "services", target_is_directory=True)
    (tmp_path / "snippet.py").write_text(source)
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "mypy",
            "--config-file",
            str(ROOT / "pyproject.toml"),
            "--follow-imports=silent",  # only the snippet's own errors
            "--cache-dir",
            str(tmp_path / ".mypy_cache"),
            "--no-error-summary",
            "snippet.py",
        ],
        cwd=tmp_path,
        env={**os.environ, "MYPYPATH": os.pathsep.join([str(ROOT), str(tmp_path)])},
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert run.returncode in (0, 1), run.stderr + run.stdout  # 2: mypy itself failed
    errors = re.findall(r"^snippet\.py:(\d+): error: .*\[([a-z-]+)\]$", run.stdout, re.MULTILINE)
    assert len(errors) == run.stdout.count(": error:"), run.stdout  # every error parsed
    return [(int(line), code) for line, code in errors]


def test_mypy_checks_typed_stub_calls(tmp_path: Path) -> None:
    """mypy rejects wrong request, timeout and response types on a typed stub, for every call kind, and
    accepts the right ones; the dynamic attribute stays unchecked."""
    expected = [
        (number, line.rsplit("# E: ", 1)[1])
        for number, line in enumerate(SNIPPET.splitlines(), start=1)
        if "# E: " in line
    ]
    assert mypy_errors(tmp_path, SNIPPET) == expected


def test_typed_stub_is_the_clients_own_stub() -> None:
    """The typed accessor returns the client's stub object, which calls the server as usual."""
    with serve([echo_descriptor()]) as (_server, client):
        echo = client.stub("echo", EchoServiceStub)
        assert echo is client.echo
        assert echo.echo(EchoRequest(text="hi"), timeout=10) == EchoResponse(text="hi")
        assert [r.index for r in echo.repeat(EchoRequest(text="x", count=3))] == [0, 1, 2]
        assert echo.collect(iter([EchoRequest(text="a"), EchoRequest(text="b")])).text == "ab"
        info = client.stub("srv", RpcServerServiceStub).info(Filter(names=["echo"]))
        assert isinstance(info, MultiServiceInfo)
        assert [i.name for i in info.items] == ["echo"]


def test_typed_stub_checks_name_and_class() -> None:
    """An unknown name or a stub class other than the one the client was given fails at once."""
    with serve([echo_descriptor()]) as (_server, client):
        with pytest.raises(KeyError, match="No stub 'nope'"):
            client.stub("nope", EchoServiceStub)
        with pytest.raises(TypeError, match="Stub 'echo' was given as EchoServiceStub, not ConfigServiceStub"):
            client.stub("echo", ConfigServiceStub)
        assert client.stub("echo", object) is client.echo  # a base class of the given one is fine
