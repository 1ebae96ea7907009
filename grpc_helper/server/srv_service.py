"""Manager of the default `srv` service (RpcServerService): info, remote shutdown, proxy registrations."""

from __future__ import annotations

from collections.abc import Iterable

from grpc_helper.api import (
    Event,
    EventProperty,
    Filter,
    MultiServiceInfo,
    ProxyRegisterRequest,
    ResultCode,
    ResultStatus,
    ServiceInfo,
    ShutdownRequest,
)
from grpc_helper.api.server_pb2_grpc import RpcServerServiceServicer
from grpc_helper.errors import RpcException
from grpc_helper.server._base import _DefaultManager


class ServerServiceManager(RpcServerServiceServicer, _DefaultManager):
    """`srv`: server information, remote shutdown, proxy registrations."""

    def info(self, request: Filter) -> MultiServiceInfo:
        items = []
        proxies = self.server.proxies
        for d in self._select(request.names, request.ignore_unknown):
            info = ServiceInfo(
                name=d.name,
                version=d.version_string,
                current_api_version=d.current_version,
                supported_api_version=d.supported_version,
                is_proxy=d.is_proxy,
            )
            if d.is_proxy:
                # The registered version (kept after proxy_forget), the module's until a registration
                info.version = proxies.version(d.name) or d.version_string
                target = proxies.target(d.name)
                if target is not None:
                    info.proxy_host, info.proxy_port = target.host, target.port
            items.append(info)
        return MultiServiceInfo(items=items)

    def shutdown(self, request: ShutdownRequest) -> ResultStatus:
        self.logger.info("Remote shutdown requested (timeout %s)", request.timeout)
        self.server.shutdown_remotely(request.timeout)
        return ResultStatus()

    def _proxied(self, names: Iterable[str]) -> list[str]:
        """Check the names of a proxy_register/proxy_forget request, in the original's order:
        missing, unknown, then not proxied."""
        names = list(names)
        if not names or any(not n for n in names):
            raise RpcException("Missing service names", ResultCode.ERROR_PARAM_MISSING)
        for d in self._select(names):
            if not d.is_proxy:
                raise RpcException(f"Service {d.name} is not a proxied service", ResultCode.ERROR_PARAM_INVALID)
        return names

    def proxy_register(self, request: ProxyRegisterRequest) -> ResultStatus:
        names = self._proxied(request.names)
        if not request.version:
            raise RpcException("Missing version", ResultCode.ERROR_PARAM_MISSING)
        if not request.port:
            raise RpcException("Missing port", ResultCode.ERROR_PARAM_MISSING)
        target = self.server.proxies.register(names, request.version, request.host, request.port)
        self.logger.info(
            "Proxied services %s registered at %s:%s (%s)", names, target.host, target.port, target.version
        )
        self._send_event(
            "RPC_PROXY_REGISTER",
            names=",".join(names),
            version=request.version,
            port=str(request.port),
            host=request.host,
        )
        return ResultStatus()

    def proxy_forget(self, request: Filter) -> ResultStatus:
        names = self._proxied(request.names)
        self.server.proxies.forget(names)
        self.logger.info("Proxied services %s forgotten", names)
        self._send_event("RPC_PROXY_FORGET", names=",".join(names))
        return ResultStatus()

    def _send_event(self, name: str, **properties: str) -> None:
        events = self.server.managers.get("events")
        if events is not None:
            events.send(Event(name=name, properties=[EventProperty(name=k, value=v) for k, v in properties.items()]))
