"""RpcManager: base class for the objects that implement services."""

from __future__ import annotations

import logging
import threading
from typing import Any, Protocol

from grpc_helper.client import RpcClient
from grpc_helper.folders import Folders
from grpc_helper.tls import ClientSecurity


class ManagerHost(Protocol):
    """What a manager sees of the server serving it (`RpcServer` is one): the library's managers
    use nothing else, which keeps them below the server in the layers."""

    port: int
    folders: Folders
    client: RpcClient

    def proxied_servers(self) -> set[tuple[str, int]]: ...

    def client_security(self, server_name: str) -> ClientSecurity | None: ...

    def shutdown(self) -> None: ...


class RpcManager:
    """Base for service managers.

    `logger` is named after the manager's class; the server gives it a rolling file,
    `<logs>/<logger name>/<logger name>.log`, and traces the manager's calls on it at DEBUG.
    The server fills in, before calling `_load`:
    - `client`: the server's auto-client (reaches every service of the server)
    - `folders`: the server's `Folders`
    `lock` protects the manager's own state against concurrent calls.
    """

    def __init__(self) -> None:
        self.logger = logging.getLogger(type(self).__name__)
        self.lock = threading.RLock()
        self.folders = Folders()
        self.client: RpcClient | Any = None
        self.server: ManagerHost | None = None

    def _attach(self, server: ManagerHost, name: str) -> None:  # noqa: ARG002 - `name`: for subclasses
        """Called by the server when it starts serving this manager under the service `name`.

        The logger keeps its name (the class name, as in grpc-helper 2.x), whatever the service name.
        """
        self.server = server
        self.folders = server.folders
        self.client = server.client

    def _load(self) -> None:
        """Called once every service of the server is alive."""

    def _withdraw(self) -> None:
        """Called first when the server shuts down, while it still serves: a manager known elsewhere says
        it is leaving (`RpcProxiedManager` forgets its endpoint on main), so that no new call is sent
        to this server once it stops taking them. Then calls in progress end, then `_shutdown`."""

    def _shutdown(self) -> None:
        """Called when the server shuts down: finalize, and interrupt long-running operations."""

    @property
    def _proxied_servers(self) -> set[tuple[str, int]]:
        """(host, port) of each distinct server registered for this server's proxied services (an empty
        registered host given as `rpc-main-host`); empty when not attached to a server."""
        if self.server is None:
            return set()
        return self.server.proxied_servers()
