"""grpc-helper: run Python gRPC services.

Server lifecycle and default services, clients with retries and API versioning, layered
configuration, rolling logs, proxied services and events.

The public names below are imported on first use (PEP 562): `from grpc_helper import RpcServer`
works as usual, but a program that only needs the client side, like the `grpc-helper health`
probe run every few seconds by container health checks, never pays for importing the server.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

from grpc_helper._version import TITLE, installed_version

if TYPE_CHECKING:
    from grpc_helper.auth import current_identity
    from grpc_helper.calls import current_call
    from grpc_helper.cli import RpcCliParser
    from grpc_helper.client import RpcClient
    from grpc_helper.config import Config, ConfigHolder, ConfigManager, RpcStaticConfig
    from grpc_helper.descriptor import RpcServiceDescriptor
    from grpc_helper.errors import RpcException, RpcTransportError
    from grpc_helper.events.listener import EventsListener
    from grpc_helper.folders import Folders
    from grpc_helper.manager import RpcManager
    from grpc_helper.metadata import RpcMetadata
    from grpc_helper.proxy.manager import RpcProxiedManager
    from grpc_helper.server import RpcServer
    from grpc_helper.signals import graceful_exit
    from grpc_helper.tls import ClientSecurity

__title__ = TITLE
__version__: str  # the installed distribution's version, read on first use (importlib.metadata is slow to import)

# Public name -> module defining it
_EXPORTS = {
    "ClientSecurity": "grpc_helper.tls",
    "Config": "grpc_helper.config",
    "ConfigHolder": "grpc_helper.config",
    "ConfigManager": "grpc_helper.config",
    "EventsListener": "grpc_helper.events.listener",
    "Folders": "grpc_helper.folders",
    "RpcCliParser": "grpc_helper.cli",
    "RpcClient": "grpc_helper.client",
    "RpcException": "grpc_helper.errors",
    "RpcManager": "grpc_helper.manager",
    "RpcMetadata": "grpc_helper.metadata",
    "RpcProxiedManager": "grpc_helper.proxy.manager",
    "RpcServer": "grpc_helper.server",
    "RpcServiceDescriptor": "grpc_helper.descriptor",
    "RpcStaticConfig": "grpc_helper.config",
    "RpcTransportError": "grpc_helper.errors",
    "current_call": "grpc_helper.calls",
    "current_identity": "grpc_helper.auth",
    "graceful_exit": "grpc_helper.signals",
}

__all__ = [
    "ClientSecurity",
    "Config",
    "ConfigHolder",
    "ConfigManager",
    "EventsListener",
    "Folders",
    "RpcCliParser",
    "RpcClient",
    "RpcException",
    "RpcManager",
    "RpcMetadata",
    "RpcProxiedManager",
    "RpcServer",
    "RpcServiceDescriptor",
    "RpcStaticConfig",
    "RpcTransportError",
    "__title__",
    "__version__",
    "current_call",
    "current_identity",
    "graceful_exit",
]


def __getattr__(name: str) -> Any:
    if name == "__version__":
        value: Any = installed_version()
    elif name in _EXPORTS:
        value = getattr(import_module(_EXPORTS[name]), name)
    else:
        raise AttributeError(f"module 'grpc_helper' has no attribute {name!r}")
    globals()[name] = value  # imported once: later lookups don't come back here
    return value


def __dir__() -> list[str]:
    # The public surface (and the submodules imported so far), not this module's own helpers
    return sorted({*__all__, *(n for n, v in globals().items() if type(v).__name__ == "module" and n[0] != "_")})
