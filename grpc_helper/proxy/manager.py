"""RpcProxiedManager: a manager that registers its services on a main proxying server, and keeps them registered."""

from __future__ import annotations

import logging
import threading

from grpc_helper.api import (
    Endpoint,
    EventApiVersion,
    Filter,
    ProxyRegisterRequest,
    ResultCode,
    ServerApiVersion,
)
from grpc_helper.api.events_pb2_grpc import EventServiceStub
from grpc_helper.api.server_pb2_grpc import RpcServerServiceStub
from grpc_helper.client import RpcClient, StubsMap
from grpc_helper.config.static import RpcStaticConfig, bool_value
from grpc_helper.errors import RpcException, RpcTransportError
from grpc_helper.manager import RpcManager
from grpc_helper.metadata import ip_towards

# How often a proxied manager looks whether main still has its endpoint (seconds), and how long one look, or
# one renewal, may take: main back with an empty workspace gets its registration again within about
# RENEW_PERIOD + RENEW_TIMEOUT of answering
RENEW_PERIOD = 1.0
RENEW_TIMEOUT = 2.0


class RpcProxiedManager(RpcManager):
    """Base for managers of services that a main server (`rpc-main-host`:`rpc-main-port`) proxies.

    At `_load`, the services named by `_proxied_services()` (declared in main's descriptors) and by
    `_proxied_grpc_services()` (full gRPC service names main has no descriptor of: dynamic services, registered
    in `ProxyRegisterRequest.grpc_services`) are registered on the main server with `_proxied_version()` and
    this server's port (retrying while the main server is not up yet, up to
    `rpc-client-timeout`); at shutdown (`_withdraw`, before the server stops taking calls) they are
    forgotten at this endpoint only (other replicas of
    them, other servers registering the same names, stay registered). `proxy_client` reaches the main server
    (`srv`, `events`, plus `_proxy_stubs()`).

    Meanwhile a thread looks every `RENEW_PERIOD` whether main still shows this endpoint for each service
    (`srv.info`), and registers the missing ones again, marked as a renewal (`renew`), so that a main that lost
    its workspace (a new node, a lost volume) or dropped the endpoint as stale (unreachable for a while) gets it
    back within seconds, without a restart. A deliberate `proxy_forget` is not undone: main remembers the
    endpoints forgotten on purpose, in its workspace, and refuses their renewals (`ERROR_PROXY_FORGOTTEN`); the
    manager then says so once (WARNING) and stops renewing until main shows the endpoint registered again (by
    anyone: e.g. `grpc-helper proxy register`); restarting its server, a plain registration, brings it back
    too. Main, not the manager, decides because only main knows who forgot what; and a main that lost that
    memory lost the registration with it, which is exactly when renewing is right. A main that does not refuse
    renewals (2.x: `ServiceInfo.renewable` unset) is never sent one. Logs once when main can't be reached,
    once when it answers again, once per renewal.
    """

    proxy_client: RpcClient
    _endpoint: Endpoint  # where this server registered (its own host and port)
    _withdrawn = False  # its endpoint forgotten on main (see `_withdraw`)
    _renewer: threading.Thread | None = None
    _stop_renewing: threading.Event
    _renew_state = ""  # what the renewal thread last logged (logged again only when it changes)
    _forgotten = False  # main refused a renewal: forgotten on purpose, not renewed until registered again

    def _proxied_services(self) -> list[str]:
        """Names of the services to register (as declared in the main server's descriptors); none by default,
        for a manager registering dynamic services only (`_proxied_grpc_services`)."""
        return []

    def _proxied_grpc_services(self) -> list[str]:
        """Full gRPC service names (e.g. `greeter.GreeterService`) to register as dynamic services: main forwards
        them with no descriptor of them (a 3.x main: 2.x ignores them). None by default."""
        return []

    def _registered_names(self) -> list[str]:
        """Every name this manager registers: declared services, then dynamic ones."""
        return [*self._proxied_services(), *self._proxied_grpc_services()]

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
        names = self._registered_names()
        if not names:
            raise RpcException(
                f"{type(self).__name__} registers no service: override _proxied_services or _proxied_grpc_services",
                ResultCode.ERROR_MODEL_INVALID,
            )
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
        self._endpoint = Endpoint(host=self._registered_host(), port=self.server.port)
        self._register(names)
        self.logger.info("Registered %s on main server %s", names, self._main())
        self._stop_renewing = threading.Event()
        self._renewer = threading.Thread(target=self._keep_registered, name="rpc-proxy-renewal", daemon=True)
        self._renewer.start()

    def _main(self) -> str:
        return f"{RpcStaticConfig.MAIN_HOST.str_val}:{RpcStaticConfig.MAIN_PORT.int_val}"

    def _register(self, names: list[str], timeout: float | None = None, *, renew: bool = False) -> None:
        """Register `names` (declared and dynamic ones, each in its own request field) at this endpoint."""
        dynamic = set(self._proxied_grpc_services())
        request = ProxyRegisterRequest(
            names=[n for n in names if n not in dynamic],
            grpc_services=[n for n in names if n in dynamic],
            version=self._proxied_version(),
            host=self._endpoint.host,
            port=self._endpoint.port,
            renew=renew,
        )
        self.proxy_client.srv.proxy_register(request, timeout=timeout)

    # --- renewals ---
    def _keep_registered(self) -> None:
        """The renewal thread (see the class doc): one look every `RENEW_PERIOD` until `_withdraw`."""
        while not self._stop_renewing.wait(RENEW_PERIOD):
            try:
                self._renew_once()
            except RpcException as exc:
                if exc.rc == ResultCode.ERROR_PROXY_FORGOTTEN:
                    self._forgotten = True
                    why = "Not registering %s again on main server %s: %s"  # said once: no renewal until then
                    self._tell("forgotten", logging.WARNING, why, self._registered_names(), self._main(), exc)
                elif isinstance(exc, RpcTransportError):  # gRPC's own failure: main unreachable, or too slow
                    why = "Main server %s unreachable (%s): will register again there if it lost the registration"
                    self._tell("unreachable", logging.WARNING, why, self._main(), exc)
                else:  # refused otherwise (a policy change...): said once, tried again at each look
                    self._tell(f"refused: {exc}", logging.WARNING, "Could not register again on main: %s", exc)
            except Exception:  # never end the thread: the next look may go well
                self.logger.exception("Renewal of the registration on main failed")

    def _renew_once(self) -> None:
        """One look at main: register again the services main does not show this endpoint for."""
        names = self._registered_names()
        info = self.proxy_client.srv.info(Filter(names=names, ignore_unknown=True), timeout=RENEW_TIMEOUT)
        if self._renew_state == "unreachable":
            self._tell("", logging.INFO, "Main server %s reachable again", self._main())
        own = (self._endpoint.host, self._endpoint.port)
        # Unknown there (a main serving other services) or not renewable (2.x): nothing to do
        items = [i for i in info.items if i.renewable]
        missing = [i.name for i in items if own not in {(e.host, e.port) for e in i.endpoints}]
        # ... but main knows a dynamic service from its registrations only: one it doesn't show, it lost
        shown = {i.name for i in info.items}
        missing += [n for n in self._proxied_grpc_services() if n not in shown]
        if not missing:
            if self._forgotten and items:
                self._forgotten = False
                self._tell("", logging.INFO, "Registered on main server %s again: renewed from now on", self._main())
            return
        if self._forgotten:
            return  # forgotten on purpose: never renewed (see the class doc)
        self._register(missing, RENEW_TIMEOUT, renew=True)
        self._tell("", logging.INFO, "Registered %s again on main server %s: it had lost them", missing, self._main())

    def _tell(self, state: str, level: int, msg: str, *args: object) -> None:
        """Log `msg` when entering `state` ("" being the normal state: always logged), once per state."""
        if state and state == self._renew_state:
            return
        self._renew_state = state
        self.logger.log(level, msg, *args)

    def _withdraw(self) -> None:
        """Forget this server's endpoint on main before it stops taking calls: main sends it no more (a
        call it sent meanwhile is still served, within the grace period). Once only."""
        client = getattr(self, "proxy_client", None)
        if client is None or self._withdrawn:
            return
        self._withdrawn = True
        if self._renewer is not None:
            # Stopped first: no renewal after this forget (the look in progress is bounded by RENEW_TIMEOUT)
            self._stop_renewing.set()
            self._renewer.join(2 * RENEW_TIMEOUT + 1)
        try:
            # One quick attempt: a main server that is gone must not delay this shutdown
            # This server's own endpoint only: other replicas of these services stay registered
            client.srv.proxy_forget(Filter(names=self._registered_names(), endpoint=self._endpoint), timeout=5)
        except RpcException as exc:
            self.logger.warning("Could not forget proxied services on main server: %s", exc)
        super()._withdraw()

    def _shutdown(self) -> None:
        self._withdraw()  # if the server did not (a manager shut down on its own)
        client = getattr(self, "proxy_client", None)
        if client is not None:
            client.close()
        super()._shutdown()
