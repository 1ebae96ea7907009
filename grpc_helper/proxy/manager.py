"""RpcProxiedManager: a manager that registers its services on a main proxying server."""

from __future__ import annotations

from typing import Any

from grpc_helper.api import EventApiVersion, Filter, ProxyRegisterRequest, ServerApiVersion
from grpc_helper.api.events_pb2_grpc import EventServiceStub
from grpc_helper.api.server_pb2_grpc import RpcServerServiceStub
from grpc_helper.client import RpcClient
from grpc_helper.config.static import RpcStaticConfig
from grpc_helper.errors import RpcException
from grpc_helper.manager import RpcManager
from grpc_helper.metadata import local_ip


class RpcProxiedManager(RpcManager):
    """Base for managers of services that a main server (`rpc-main-host`:`rpc-main-port`) proxies.

    At `_load`, the services named by `_proxied_services()` are registered on the main server with
    `_proxied_version()` and this server's port (retrying while the main server is not up yet, up to
    `rpc-client-timeout`); at `_shutdown` they are forgotten. `proxy_client` reaches the main server
    (`srv`, `events`, plus `_proxy_stubs()`).
    """

    proxy_client: RpcClient

    def _proxied_services(self) -> list[str]:
        """Names of the services to register (as declared in the main server's descriptors)."""
        raise NotImplementedError

    def _proxied_version(self) -> str:
        """Version string shown by the main server's `srv.info` for these services."""
        raise NotImplementedError

    def _proxy_stubs(self) -> dict[str, tuple[type, Any]]:
        """Extra stubs for `proxy_client`."""
        return {}

    def _proxy_use_current_host(self) -> bool:
        """True to register this host's own IP (when the main server runs on another host)."""
        return False

    def _load(self) -> None:
        super()._load()
        assert self.server is not None
        self.proxy_client = RpcClient(
            RpcStaticConfig.MAIN_HOST.str_val,
            RpcStaticConfig.MAIN_PORT.int_val,
            {
                "srv": (RpcServerServiceStub, ServerApiVersion.SERVER_API_CURRENT),
                "events": (EventServiceStub, EventApiVersion.EVENT_API_CURRENT),
                **self._proxy_stubs(),
            },
            timeout=RpcStaticConfig.CLIENT_TIMEOUT.float_val,
            name=f"proxied-{self.logger.name}",
            logger=self.logger,
        )
        host = local_ip() if self._proxy_use_current_host() else ""
        names = self._proxied_services()
        self.proxy_client.srv.proxy_register(
            ProxyRegisterRequest(names=names, version=self._proxied_version(), host=host, port=self.server.port)
        )
        self.logger.info(
            "Registered %s on main server %s:%s",
            names,
            RpcStaticConfig.MAIN_HOST.str_val,
            RpcStaticConfig.MAIN_PORT.int_val,
        )

    def _shutdown(self) -> None:
        client = getattr(self, "proxy_client", None)
        if client is not None:
            try:
                # One quick attempt: a main server that is gone must not delay this shutdown
                client.srv.proxy_forget(Filter(names=self._proxied_services()), timeout=5)
            except RpcException as exc:
                self.logger.warning("Could not forget proxied services on main server: %s", exc)
            client.close()
        super()._shutdown()
