"""Routing: the default services (srv, config, log, events) and channelz of a proxied service's server, through main.

Only main is published, so an operator reaches a backend's own `srv`/`config`/`log`/`events`/channelz through it:
a call to a default service carrying the `route-service` metadata key (a proxied service's name, and
optionally `route-endpoint`, one of its endpoints as "host:port") is forwarded, as a proxied call is,
to that service's server. Without the key, main answers itself, as before.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import TypeAlias

import grpc

from grpc_helper.api import Result, ResultCode
from grpc_helper.generated import Handler
from grpc_helper.metadata import KEY_ROUTE_ENDPOINT, KEY_ROUTE_SERVICE
from grpc_helper.proxy.backend import Acquired, Backend
from grpc_helper.proxy.registry import Endpoint, ProxyRegistry

_MAX_PORT = 65535


def parse_endpoint(text: str) -> Endpoint | None:
    """("host", port) of "host:port" ("[v6]:port" too; an empty host is `rpc-main-host`'s); None if invalid."""
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) <= _MAX_PORT:
        return None
    return host.removeprefix("[").removesuffix("]"), int(port)


class RoutedBackends:
    """Where routed calls go (the `Backends` of their forwarders): the server the metadata names."""

    def __init__(self, registry: ProxyRegistry) -> None:
        self._registry = registry
        self.logger: logging.Logger = registry.logger

    def acquire(self, _name: str, method: str, context: grpc.ServicerContext) -> Acquired | Result:
        route = {k: v for k, v in context.invocation_metadata() if k in (KEY_ROUTE_SERVICE, KEY_ROUTE_ENDPOINT)}
        service = str(route.get(KEY_ROUTE_SERVICE, ""))
        if not self._registry.is_proxied(service):
            return Result(code=ResultCode.ERROR_ITEM_UNKNOWN, msg=f"No proxied service {service!r} to route to")
        endpoint = None
        if KEY_ROUTE_ENDPOINT in route:
            endpoint = parse_endpoint(str(route[KEY_ROUTE_ENDPOINT]))
            if endpoint is None:
                msg = f"Invalid {KEY_ROUTE_ENDPOINT} {route[KEY_ROUTE_ENDPOINT]!r} (expected host:port)"
                return Result(code=ResultCode.ERROR_PARAM_INVALID, msg=msg)
            if not self._registry.has_endpoint(service, endpoint):
                msg = f"Endpoint {endpoint[0]}:{endpoint[1]} is not registered for {service}"
                return Result(code=ResultCode.ERROR_ITEM_UNKNOWN, msg=msg)
        return self._registry.acquire(service, method, context, endpoint)

    def release(self, backend: Backend) -> None:
        self._registry.release(backend)


HandlerLookup: TypeAlias = "Callable[[grpc.HandlerCallDetails], Handler | None]"


class RouteInterceptor(grpc.ServerInterceptor):
    """Sends the calls of default services that carry `route-service` to their routed forwarders.

    `routes` (full method path -> handler) is filled as the default services are registered."""

    def __init__(self, routes: Mapping[str, Handler]) -> None:
        self._routes = routes

    def intercept_service(
        self, continuation: HandlerLookup, handler_call_details: grpc.HandlerCallDetails
    ) -> Handler | None:
        handler = self._routes.get(handler_call_details.method)
        if handler is not None:
            for key, _ in handler_call_details.invocation_metadata:
                if key == KEY_ROUTE_SERVICE:
                    return handler
        return continuation(handler_call_details)
