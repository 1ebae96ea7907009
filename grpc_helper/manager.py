"""RpcManager: base class for the objects that implement services."""

from __future__ import annotations

import logging
import threading
from typing import TYPE_CHECKING, Any

from grpc_helper.folders import Folders

if TYPE_CHECKING:
    from grpc_helper.client import RpcClient
    from grpc_helper.server.server import RpcServer


class RpcManager:
    """Base for service managers.

    The server fills in, before calling `_load`:
    - `logger`: this manager's logger, writing to `<logs>/<name>/<name>.log`
    - `client`: the server's auto-client (reaches every service of the server)
    - `folders`: the server's `Folders`
    `lock` protects the manager's own state against concurrent calls.
    """

    def __init__(self) -> None:
        self.logger = logging.getLogger(type(self).__name__)
        self.lock = threading.RLock()
        self.folders = Folders()
        self.client: RpcClient | Any = None
        self.server: RpcServer | None = None

    def _attach(self, server: RpcServer, name: str) -> None:
        """Called by the server when it starts serving this manager under `name`."""
        self.server = server
        self.logger = logging.getLogger(name)
        self.folders = server.folders
        self.client = server.client

    def _load(self) -> None:
        """Called once every service of the server is alive."""

    def _shutdown(self) -> None:
        """Called when the server shuts down: finalize, and interrupt long-running operations."""
