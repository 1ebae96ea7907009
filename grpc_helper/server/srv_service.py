"""Manager of the default `srv` service (RpcServerService): info, remote shutdown, proxy registrations, and the
live view of the calls served (stat)."""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable
from typing import Protocol

from grpc_helper.api import (
    Event,
    EventProperty,
    Filter,
    MethodStat,
    MultiServiceInfo,
    ProxyRegisterRequest,
    ResultCode,
    ResultStatus,
    ServiceInfo,
    ShutdownRequest,
    StatRequest,
    StatStatus,
)
from grpc_helper.api.server_pb2_grpc import RpcServerServiceServicer
from grpc_helper.config.static import RpcStaticConfig
from grpc_helper.descriptor import RpcServiceDescriptor
from grpc_helper.errors import RpcException
from grpc_helper.limits import check_request, quote, quote_names
from grpc_helper.live import DEFAULT_WINDOW, MAX_WINDOW, LiveStats
from grpc_helper.manager import RpcManager
from grpc_helper.proxy.registry import ProxyRegistry

_MAX_PORT = 65535
# A full gRPC service name: dot-separated proto identifiers (package, then service); scripts/stack_secrets.py
# checks the grants it writes with it too
GRPC_SERVICE_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*")
_DNS_LABEL = re.compile(r"[A-Za-z0-9_]([A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?")  # "_" too: docker service names have it


def _is_host(host: str) -> bool:
    """A registrable host: empty (`rpc-main-host`), an IPv4 or IPv6 address, or a DNS name (253 characters at most,
    dot-separated labels of letters, digits, `-` and `_`, a trailing dot allowed)."""
    if not host:
        return True
    try:
        ipaddress.ip_address(host)
        return True
    except ValueError:
        pass
    name = host.removesuffix(".")
    return 0 < len(name) <= 253 and all(_DNS_LABEL.fullmatch(label) for label in name.split("."))


class ServerControl(Protocol):
    """What the `srv` service needs of its server (RpcServer is one)."""

    @property
    def descriptors(self) -> list[RpcServiceDescriptor]: ...

    @property
    def live(self) -> LiveStats: ...

    def shutdown_remotely(self, timeout: int) -> None: ...

    def send_event(self, event: Event) -> None: ...


class ServerServiceManager(RpcServerServiceServicer, RpcManager):
    """`srv`: server information, remote shutdown, proxy registrations, live view."""

    def __init__(self, control: ServerControl, proxies: ProxyRegistry) -> None:
        super().__init__()
        self._control = control
        self._proxies = proxies

    def _select(self, names: Iterable[str], *, ignore_unknown: bool = False) -> list[RpcServiceDescriptor]:
        """Descriptors by name (all if none given)."""
        descriptors = self._control.descriptors
        names = list(names)
        if not names:
            return list(descriptors)
        by_name = {d.name: d for d in descriptors}
        unknown = [n for n in names if n not in by_name]
        if unknown and not ignore_unknown:
            raise RpcException(f"Unknown service(s): {quote_names(unknown)}", ResultCode.ERROR_ITEM_UNKNOWN)
        return [by_name[n] for n in names if n in by_name]

    def info(self, request: Filter) -> MultiServiceInfo:
        check_request(request)
        proxies = self._proxies
        names = list(request.names)
        # Dynamic services (by gRPC name, no descriptor): after the declared ones, all of them when none is named
        dynamic = [n for n in names if proxies.is_dynamic(n)] if names else proxies.dynamic_services()
        declared = [n for n in names if n not in dynamic]
        items = []
        if declared or not names:
            for d in self._select(declared, ignore_unknown=request.ignore_unknown):
                info = ServiceInfo(
                    name=d.name,
                    version=d.version_string,
                    current_api_version=d.current_version,
                    supported_api_version=d.supported_version,
                    is_proxy=d.is_proxy,
                )
                if d.is_proxy:
                    self._proxy_info(info, d.version_string)
                items.append(info)
        for name in dynamic:  # no API versions: main has none of them (0)
            items.append(self._proxy_info(ServiceInfo(name=name, is_proxy=True), ""))
        return MultiServiceInfo(items=items)

    def _proxy_info(self, info: ServiceInfo, default_version: str) -> ServiceInfo:
        """`info` of a proxied service completed with its registrations."""
        proxies = self._proxies
        # The registered version (kept after proxy_forget), the module's until a registration
        info.version = proxies.version(info.name) or default_version
        newest = proxies.target(info.name)
        if newest is not None:  # 2.x's two fields: one endpoint, the newest registration
            info.proxy_host, info.proxy_port = newest.host, newest.port
        for e in proxies.endpoints(info.name):
            t = e.target
            info.endpoints.add(
                host=t.host, port=t.port, version=t.version, serving=e.serving, channel_target=e.channel_target
            )
        info.channel_target = proxies.channel_target(info.name)
        info.renewable = True  # renewals of endpoints forgotten on purpose are refused here
        return info

    def stat(self, request: StatRequest) -> StatStatus:
        """The calls each method of the named services (all if none) ended within the last `window` seconds."""
        check_request(request)
        window = request.window or DEFAULT_WINDOW
        if window > MAX_WINDOW:
            raise RpcException(
                f"Window {window}s is over the {MAX_WINDOW}s a server keeps", ResultCode.ERROR_PARAM_INVALID
            )
        live = self._control.live
        # A service by its name or its full gRPC name (what a dynamic registration at main names it by); a dynamic
        # service of this main is known but has no window (its calls' paths come from callers): no rows
        names = [live.service_of(n) or n for n in request.names]
        unknown = [n for n in names if live.service_of(n) is None and not self._proxies.is_dynamic(n)]
        if unknown:
            raise RpcException(f"Unknown service(s): {quote_names(unknown)}", ResultCode.ERROR_ITEM_UNKNOWN)
        items = [
            MethodStat(
                service=f.service,
                method=f.method,
                seconds=f.seconds,
                calls=f.calls,
                failures=f.failures,
                p50=f.quantiles[0],
                p95=f.quantiles[1],
                p99=f.quantiles[2],
            )
            for f in live.figures(window, names or None, idle=request.idle)
        ]
        return StatStatus(items=items)

    def shutdown(self, request: ShutdownRequest) -> ResultStatus:
        # Bounded: a process that no longer listens but lingers for days is never restarted by its supervisor
        limit = RpcStaticConfig.SHUTDOWN_MAX_TIMEOUT.float_val
        if request.timeout > limit:
            raise RpcException(
                f"Shutdown timeout {request.timeout}s is over rpc-shutdown-max-timeout ({limit:g}s)",
                ResultCode.ERROR_PARAM_INVALID,
            )
        self.logger.info("Remote shutdown requested (timeout %s)", request.timeout)
        self._control.shutdown_remotely(request.timeout)
        return ResultStatus()

    def _proxied(self, names: Iterable[str], *, dynamic: bool = False) -> list[str]:
        """Check the names of a proxy_register/proxy_forget request, in the original's order:
        missing, unknown, then not proxied. `dynamic`: known dynamic services' names are fine too (a forget);
        none at all is fine when the registration names gRPC services (`grpc_services`) instead."""
        names = list(names)
        if (not names and not dynamic) or any(not n for n in names):
            raise RpcException("Missing service names", ResultCode.ERROR_PARAM_MISSING)
        declared = [n for n in names if not self._proxies.is_dynamic(n)]
        for d in self._select(declared) if declared else []:  # none: `_select` would take them all
            if not d.is_proxy:
                raise RpcException(f"Service {d.name} is not a proxied service", ResultCode.ERROR_PARAM_INVALID)
        return names

    def proxy_register(self, request: ProxyRegisterRequest) -> ResultStatus:
        check_request(request)
        grpc_services = self._grpc_services(request.grpc_services)
        # A plain (2.x) registration names declared services only: an unknown name is refused as in 2.x
        names = self._proxied(request.names, dynamic=bool(grpc_services)) if request.names or not grpc_services else []
        if not request.version:
            raise RpcException("Missing version", ResultCode.ERROR_PARAM_MISSING)
        if not request.port:
            raise RpcException("Missing port", ResultCode.ERROR_PARAM_MISSING)
        if request.port > _MAX_PORT:
            raise RpcException(f"Invalid port: {request.port} (1-{_MAX_PORT})", ResultCode.ERROR_PARAM_INVALID)
        if not _is_host(request.host):
            raise RpcException(
                f"Invalid host: {quote(request.host)} (expected a DNS name, an IPv4 or IPv6 address, or empty)",
                ResultCode.ERROR_PARAM_INVALID,
            )
        target = self._proxies.register(
            names, request.version, request.host, request.port, renew=request.renew, dynamic=grpc_services
        )
        names = [*names, *grpc_services]
        self.logger.info(
            "Proxied services %s registered%s at %s:%s (%s)",
            quote_names(names),
            " again (renewed by a running backend)" if request.renew else "",
            target.host,
            target.port,
            quote(target.version),
        )
        self._send_event(
            "RPC_PROXY_REGISTER",
            names=",".join(names),
            version=request.version,
            port=str(request.port),
            host=request.host,
        )
        return ResultStatus()

    @staticmethod
    def _grpc_services(names: Iterable[str]) -> list[str]:
        """The full gRPC service names of a registration (`grpc_services`), checked."""
        names = list(dict.fromkeys(names))
        invalid = [n for n in names if not GRPC_SERVICE_NAME.fullmatch(n)]
        if invalid:
            raise RpcException(
                f"Invalid gRPC service name(s): {quote_names(invalid)} (expected package.Service)",
                ResultCode.ERROR_PARAM_INVALID,
            )
        return names

    def proxy_forget(self, request: Filter) -> ResultStatus:
        check_request(request)
        names = self._proxied(request.names)
        # With an endpoint, one replica going away (its own endpoint only); without, every endpoint, as 2.x
        endpoint = (request.endpoint.host, request.endpoint.port) if request.HasField("endpoint") else None
        self._proxies.forget(names, endpoint)
        where = {} if endpoint is None else {"host": endpoint[0], "port": str(endpoint[1])}
        at = "" if endpoint is None else f" at {endpoint[0]}:{endpoint[1]}"
        self.logger.info("Proxied services %s forgotten%s", quote_names(names), at)
        self._send_event("RPC_PROXY_FORGET", names=",".join(names), **where)
        return ResultStatus()

    def _send_event(self, name: str, **properties: str) -> None:
        self._control.send_event(
            Event(name=name, properties=[EventProperty(name=k, value=v) for k, v in properties.items()])
        )
