"""RpcServiceDescriptor: how a service is hooked into a server."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from types import ModuleType
from typing import Any

from google.protobuf.internal.enum_type_wrapper import EnumTypeWrapper


@dataclass
class RpcServiceDescriptor:
    """A service served by an `RpcServer`.

    - `module`: Python module whose `__title__`/`__version__` give the service version string
    - `name`: service name, used in `srv.info` and as the auto-client stub attribute
    - `api_version`: version enum; lowest non-zero value = supported version, highest = current
    - `manager`: the servicer instance calls are delegated to (for a proxied service, a plain generated servicer)
    - `register_method`: the generated `add_XxxServicer_to_server` function
    - `client_stub`: the generated `XxxStub` class
    - `is_proxy`: True when the service is served by another server that registers through `srv.proxy_register`
    """

    module: ModuleType | Any
    name: str
    api_version: EnumTypeWrapper
    manager: Any
    register_method: Callable[[Any, Any], None]
    client_stub: type
    is_proxy: bool = False  # positional in 2.x (the last field), so it stays positional

    @property
    def supported_version(self) -> int:
        values = [v for v in self.api_version.values() if v > 0]
        return min(values) if values else 0

    @property
    def current_version(self) -> int:
        return max(self.api_version.values(), default=0)

    @property
    def version_string(self) -> str:
        return f"{getattr(self.module, '__title__', self.name)}:{getattr(self.module, '__version__', '')}"
