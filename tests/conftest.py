"""Shared fixtures: real servers on dynamic ports, temp folders, and process-wide config restored after each test."""

from __future__ import annotations

import logging
import os
import shutil
import socket
import subprocess
import threading
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import pytest

import grpc_helper_samples
from grpc_helper import Folders, RpcException, RpcManager, RpcServer, RpcServiceDescriptor, RpcStaticConfig
from grpc_helper.api import ResultCode
from grpc_helper_samples.api import EchoApiVersion, EchoRequest, EchoResponse
from grpc_helper_samples.api.echo_pb2_grpc import (
    EchoServiceServicer,
    EchoServiceStub,
    add_EchoServiceServicer_to_server,
)


def rc_of(fn: Callable[[], Any]) -> int:
    """The `ResultCode` of the `RpcException` that `fn()` raises."""
    with pytest.raises(RpcException) as exc:
        fn()
    return exc.value.rc


def free_port() -> int:
    """A port nobody listens on (bound to find it, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class EchoManager(EchoServiceServicer, RpcManager):
    """Echo manager implementing all four call kinds; `text="fail:<rc>"` raises RpcException(rc)."""

    def __init__(self) -> None:
        super().__init__()
        self.loaded = False
        self.shut_down = False

    def _load(self) -> None:
        super()._load()
        self.loaded = True

    def _shutdown(self) -> None:
        self.shut_down = True
        super()._shutdown()

    def echo(self, request: EchoRequest) -> EchoResponse:
        if request.text.startswith("fail:"):
            raise RpcException("asked to fail", int(request.text.split(":", 1)[1]))
        if request.text == "crash":
            raise ValueError("unexpected crash")
        return EchoResponse(text=request.text, payload=request.payload)

    def repeat(self, request: EchoRequest) -> Iterable[EchoResponse]:
        for i in range(request.count):
            yield EchoResponse(text=request.text, index=i)
        if request.text == "crash":
            raise RpcException("stream failed", ResultCode.ERROR_ITEM_BUSY)

    def collect(self, request: Iterable[EchoRequest]) -> EchoResponse:
        texts = [r.text for r in request]
        return EchoResponse(text="".join(texts), index=len(texts))

    def chat(self, request: Iterable[EchoRequest]) -> Iterable[EchoResponse]:
        for i, r in enumerate(request):
            yield EchoResponse(text=r.text.upper(), index=i)


class BlockingEcho(EchoManager):
    """`echo` sets `started`, then blocks until `release` is set (30 s at most) and answers "done"."""

    def __init__(self) -> None:
        super().__init__()
        self.started, self.release = threading.Event(), threading.Event()

    def echo(self, request: EchoRequest) -> EchoResponse:
        self.started.set()
        self.release.wait(30)
        return EchoResponse(text="done")


def echo_descriptor(manager: Any = None, is_proxy: bool = False, name: str = "echo") -> RpcServiceDescriptor:
    if manager is None:
        manager = EchoServiceServicer() if is_proxy else EchoManager()
    return RpcServiceDescriptor(
        grpc_helper_samples, name, EchoApiVersion, manager, add_EchoServiceServicer_to_server, EchoServiceStub, is_proxy
    )


def docker_reachable() -> bool:
    if shutil.which("docker") is None:
        return False
    try:
        return subprocess.run(["docker", "info"], capture_output=True, timeout=60).returncode == 0
    except subprocess.TimeoutExpired:
        return False


@pytest.fixture(scope="session")
def docker_engine() -> None:
    """A reachable Docker engine: without one the test is skipped, or failed under CI=true (where it must run)."""
    if docker_reachable():
        return
    if os.environ.get("CI") == "true":
        pytest.fail("CI=true but no Docker engine is reachable: the container tests must run", pytrace=False)
    pytest.skip("no Docker engine reachable: container tests skipped")


@pytest.fixture(autouse=True)
def restore_static_config() -> Iterator[None]:
    """Static items are process-wide: undo whatever a test changed."""
    items = RpcStaticConfig.config_items()
    saved = [(i, i.item.default_value, i.item.value) for i in items]
    yield
    for item, default, value in saved:
        item.item.default_value, item.item.value = default, value


@pytest.fixture(autouse=True)
def restore_loggers() -> Iterator[None]:
    """Loggers are process-wide too: restore levels and enabled state."""
    names = ["", *logging.root.manager.loggerDict]
    saved = {n: (logging.getLogger(n).level, logging.getLogger(n).disabled) for n in names}
    yield
    for name, (level, disabled) in saved.items():
        logging.getLogger(name).setLevel(level)
        logging.getLogger(name).disabled = disabled


@pytest.fixture
def folders(tmp_path: Path) -> Folders:
    return Folders(system=tmp_path / "system", user=tmp_path / "user", workspace=tmp_path / "wks")


class Servers:
    """Creates servers and shuts every one of them down at teardown."""

    def __init__(self) -> None:
        self.all: list[RpcServer] = []

    def __call__(self, *args: Any, **kwargs: Any) -> RpcServer:
        kwargs.setdefault("with_debug_signal", False)
        srv = RpcServer(*args, **kwargs)
        self.all.append(srv)
        return srv


@pytest.fixture
def servers() -> Iterator[Servers]:
    s = Servers()
    yield s
    for srv in s.all:
        srv.shutdown()
