"""Shared fixtures, thin wrappers over `grpc_helper.testing`: servers on port 0, temporary folders, and
process-wide state (config items, loggers) restored after each test. Helpers that test modules import
are in helpers.py."""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path

import pytest

from grpc_helper import Folders
from grpc_helper.testing import TemporaryFolders, restored_config

from helpers import Servers, refusing_port


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
    with restored_config():
        yield


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
    """system/user/workspace folders under the test's tmp_path."""
    return TemporaryFolders(tmp_path)


@pytest.fixture
def servers() -> Iterator[Servers]:
    """Starts servers for the test (see `Servers`), all shut down at teardown."""
    with ExitStack() as stack:
        yield Servers(stack)


@pytest.fixture
def refused_port() -> Iterator[int]:
    """A port that refuses connections for the whole test, that no other test can get (`helpers.refusing_port`)."""
    with refusing_port() as port:
        yield port
