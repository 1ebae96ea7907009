"""RpcProxiedManager: a manager that registers its services on a main proxying server."""

from __future__ import annotations

from grpc_helper.api import Endpoint, EventApiVersion, Filter, ProxyRegisterRequest, ServerApiVersion
from grpc_helper.api.events_pb2_grpc import EventServiceStub
from grpc_helper.api.server_pb2_grpc import RpcServerServiceStub
from grpc_helper.client import RpcClient, StubsMap
from grpc_helper.config.static import RpcStaticConfig, bool_value
from grpc_helper.errors import RpcException
from grpc_helper.manager import RpcManager
from grpc_helper.metadata import ip_towards


class RpcProxiedManager(RpcManager):
    """Base for managers of services that a main server (`rpc-main-host`:`rpc-main-port`) proxies.

    At `_load`, the services named by `_proxied_services()` are registered on the main server with
    `_proxied_version()` and this server's port (retrying while the main server is not up yet, up to
    `rpc-client-timeout`); at shutdown (`_withdraw`, before the server stops taking calls) they are
    forgotten at this endpoint only (other replicas of
    them, other servers registering the same names, stay registered). `proxy_client` reaches the main server
    (`srv`, `events`, plus `_proxy_stubs()`).
    """

    proxy_client: RpcClient
    _endpoint: Endpoint  # where this server registered (its own host and port)
    _withdrawn = False  # its endpoint forgotten on main (see `_withdraw`)

    def _proxied_services(self) -> list[str]:
        """Names of the services to register (as declared in the main server's descriptors)."""
        raise NotImplementedError

    def _proxied_version(self) -> str:
        """Version string shown by the main server's `srv.info` for these services."""
        raise NotImplementedError

    def _proxy_stubs(self) -> StubsMap:
        """Extra stubs for `proxy_client`."""
        return {}

    def _proxy_use_current_host(self) -> bool:
        """True to register this host's own IP (when the main server runs on another host)."""
        return False

    def _registered_host(self) -> str:
        """The host registered on main: `rpc-proxy-host` when set; else as 2.x does, this host's IP as seen
        on the route to main when `_proxy_use_current_host` says so, else `rpc-main-host` (main runs on
        this same host)."""
        # A method here; 2.x declared it as a property, which its subclasses may still override
        use_current: object = self._proxy_use_current_host
        if callable(use_current):
            use_current = use_current()
        if RpcStaticConfig.PROXY_HOST.str_val:  # set by the deployment: it knows the address best
            return RpcStaticConfig.PROXY_HOST.str_val
        main_host = RpcStaticConfig.MAIN_HOST.str_val
        return ip_towards(main_host) if use_current else main_host

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
            # With TLS, this server's own certificate (its identity on main), main's checked as rpc-main-host
            security=self.server.client_security(RpcStaticConfig.MAIN_HOST.str_val),
            direct=bool_value(RpcStaticConfig.CLIENT_DIRECT),  # _proxy_stubs' services past main
        )
        names = self._proxied_services()
        self._endpoint = Endpoint(host=self._registered_host(), port=self.server.port)
        self.proxy_client.srv.proxy_register(
            ProxyRegisterRequest(
                names=names, version=self._proxied_version(), host=self._endpoint.host, port=self._endpoint.port
            )
        )
        self.logger.info(
            "Registered %s on main server %s:%s",
            names,
            RpcStaticConfig.MAIN_HOST.str_val,
            RpcStaticConfig.MAIN_PORT.int_val,
        )

    def _withdraw(self) -> None:
        """Forget this server's endpoint on main before it stops taking calls: main sends it no more (a
        call it sent meanwhile is still served, within the grace period). Once only."""
        client = getattr(self, "proxy_client", None)
        if client is None or self._withdrawn:
            return
        self._withdrawn = True
        try:
            # One quick attempt: a main server that is gone must not delay this shutdown
            # This server's own endpoint only: other replicas of these services stay registered
            client.srv.proxy_forget(Filter(names=self._proxied_services(), endpoint=self._endpoint), timeout=5)
        except RpcException as exc:
            self.logger.warning("Could not forget proxied services on main server: %s", exc)
        super()._withdraw()

    def _shutdown(self) -> None:
        self._withdraw()  # if the server did not (a manager shut down on its own)
        client = getattr(self, "proxy_client", None)
        if client is not None:
            client.close()
        super()._shutdown()
