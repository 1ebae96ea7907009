"""grpc-helper: run Python gRPC services.

Server lifecycle and default services, clients with retries and API versioning, layered
configuration, rolling logs, proxied services and events.
"""

from importlib.metadata import PackageNotFoundError, version

from grpc_helper.cli import RpcCliParser
from grpc_helper.client import RpcClient
from grpc_helper.config import Config, ConfigHolder, ConfigManager, RpcStaticConfig
from grpc_helper.descriptor import RpcServiceDescriptor
from grpc_helper.errors import RpcException
from grpc_helper.events import EventsListener
from grpc_helper.folders import Folders
from grpc_helper.manager import RpcManager
from grpc_helper.metadata import RpcMetadata
from grpc_helper.proxy.manager import RpcProxiedManager
from grpc_helper.server import RpcServer, current_call

__title__ = "grpc-helper"
try:
    __version__ = version(__title__)
except PackageNotFoundError:  # running from a source tree that was not installed
    __version__ = "0.0.0+unknown"

__all__ = [
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
    "__title__",
    "__version__",
    "current_call",
]
