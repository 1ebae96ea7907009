"""Configuration items, holders and the layered config manager."""

from grpc_helper.config.items import Config, ConfigHolder
from grpc_helper.config.manager import ConfigManager
from grpc_helper.config.static import RpcStaticConfig

__all__ = ["Config", "ConfigHolder", "ConfigManager", "RpcStaticConfig"]
