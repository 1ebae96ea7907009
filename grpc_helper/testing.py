"""Helpers to test managers built on grpc-helper: a real server in the test's process, temporary folders.

Everything here works as a plain context manager and is easy to wrap in a pytest fixture::

    @pytest.fixture
    def served(tmp_path):
        with serve([my_descriptor()], folders=TemporaryFolders(tmp_path)) as served:
            yield served


    def test_it(served):
        server, client = served
        assert client.my_service.my_method(MyRequest()).r.code == ResultCode.OK

The server binds port 0 (a free port the system picks, read back in `server.port`), so tests never
collide on ports, even when run in parallel.

This module sits on top of the library (it imports the server); nothing in the library imports it.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from types import TracebackType
from typing import NamedTuple

from grpc_helper.client import RpcClient
from grpc_helper.config import Config, ConfigHolder, RpcStaticConfig
from grpc_helper.config.items import ConfigItems
from grpc_helper.descriptor import RpcServiceDescriptor
from grpc_helper.errors import RpcException
from grpc_helper.folders import Folders
from grpc_helper.server import RpcServer

__all__ = ["Served", "TemporaryFolders", "rc_of", "restored_config", "serve"]


class TemporaryFolders(Folders):
    """`Folders` for a test: `system`, `user` and `workspace` sub-directories of one root, all three created.

    - `TemporaryFolders(tmp_path)` uses (and keeps) the given root, e.g. pytest's `tmp_path`.
    - `with TemporaryFolders() as folders:` uses a fresh temporary directory, removed on exit (or by
      `cleanup()`).

    Unlike a program's `system` folder, this one exists: a test can put shared config files there.
    """

    def __init__(self, root: str | Path | None = None) -> None:
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        if root is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="grpc-helper-test-")
            root = self._tmp.name
        self.root = Path(root).resolve()
        paths = [self.root / name for name in ("system", "user", "workspace")]
        for path in paths:
            path.mkdir(parents=True, exist_ok=True)
        super().__init__(*paths)

    def cleanup(self) -> None:
        """Remove the root if this object created it (a given root is kept); idempotent."""
        if self._tmp is not None:
            self._tmp.cleanup()

    def __enter__(self) -> TemporaryFolders:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.cleanup()


class Served(NamedTuple):
    """What `serve` yields: the running server, and a client reaching every service it serves."""

    server: RpcServer
    client: RpcClient


@contextmanager
def serve(
    descriptors: Iterable[RpcServiceDescriptor] = (),
    *,
    folders: Folders | None = None,
    cli_config: Mapping[str, str] | None = None,
    static_items: ConfigItems | None = None,
    user_items: ConfigItems | None = None,
    with_events: bool = False,
    with_debug_signal: bool = False,
    port: int = 0,
    client_name: str = "test-client",
) -> Iterator[Served]:
    """Run an `RpcServer` for `descriptors` in this process; yield it with a client; shut both down on exit.

    The arguments are those of `RpcServer`, with test-friendly defaults: port 0 (a free port picked
    by the system: read it in `server.port`; give a port only to start a server where a client is
    already waiting), no folders unless given (nothing read or written on disk: pass
    `TemporaryFolders(...)` to test persistence), no SIGUSR2 handler.

    The client is a separate `RpcClient` named `client_name`, like a program talking to the server:
    one stub per service (`srv`, `config`, `log`, `events` with `with_events`, then one per
    descriptor name) at its current API version, retrying for `rpc-client-timeout` while the
    server is unavailable. On exit the client is closed, then the server shut down (gracefully: a
    call still running delays it for up to `rpc-shutdown-grace`).
    """
    server = RpcServer(
        port,
        list(descriptors),
        folders,
        cli_config,
        static_items,
        user_items,
        with_events=with_events,
        with_debug_signal=with_debug_signal,
    )
    try:
        client = RpcClient(
            "127.0.0.1",
            server.port,
            {d.name: (d.client_stub, d.current_version) for d in server.descriptors},
            timeout=RpcStaticConfig.CLIENT_TIMEOUT.float_val,
            name=client_name,
        )
        try:
            yield Served(server, client)
        finally:
            client.close()
    finally:
        server.shutdown()


def rc_of(call: Callable[[], object]) -> int:
    """The result code (`RpcException.rc`) of the `RpcException` that `call()` raises.

    Raises `AssertionError` if it raises none. For example
    `assert rc_of(lambda: client.notes.get(NoteKey(key="x"))) == ResultCode.ERROR_ITEM_UNKNOWN`;
    a streaming call raises when iterated: `rc_of(lambda: list(client.echo.repeat(EchoRequest())))`.
    """
    try:
        call()
    except RpcException as exc:
        return int(exc.rc)
    raise AssertionError("no RpcException raised")


@contextmanager
def restored_config(*items: type[ConfigHolder] | Config) -> Iterator[None]:
    """Restore the values and defaults of config items on exit (default: `RpcStaticConfig`'s).

    Config values are process-wide: a server constructed with `cli_config` or config files, a
    `config.set` call, or `Config.update` changes them for the whole process. Wrap each test in
    this (e.g. in an autouse fixture) so that no test sees another one's values. Accepts
    `ConfigHolder` classes and `Config` items.
    """
    configs: list[Config] = []
    for entry in items or (RpcStaticConfig,):
        configs.extend([entry] if isinstance(entry, Config) else entry.config_items())
    saved = [(config, config.item.default_value, config.item.value) for config in configs]
    try:
        yield
    finally:
        for config, default, value in saved:
            config.item.default_value, config.item.value = default, value
