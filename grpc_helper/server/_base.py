"""Base of the default services' managers."""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

from grpc_helper.api import ResultCode
from grpc_helper.errors import RpcException
from grpc_helper.manager import RpcManager

if TYPE_CHECKING:
    from grpc_helper.descriptor import RpcServiceDescriptor
    from grpc_helper.server.server import RpcServer


class _DefaultManager(RpcManager):
    server: RpcServer

    def _select(self, names: Iterable[str], ignore_unknown: bool = False) -> list[RpcServiceDescriptor]:
        """Descriptors by name (all if none given)."""
        descriptors = self.server.descriptors
        names = list(names)
        if not names:
            return list(descriptors)
        by_name = {d.name: d for d in descriptors}
        unknown = [n for n in names if n not in by_name]
        if unknown and not ignore_unknown:
            raise RpcException(f"Unknown service(s): {', '.join(unknown)}", ResultCode.ERROR_ITEM_UNKNOWN)
        return [by_name[n] for n in names if n in by_name]
