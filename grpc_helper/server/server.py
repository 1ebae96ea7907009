"""RpcServer: lifecycle of a gRPC server and its default services."""

from __future__ import annotations

import enum
import importlib
import logging
import signal
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

import grpc
from google.protobuf.internal.enum_type_wrapper import EnumTypeWrapper
from grpc_channelz.v1 import channelz, channelz_pb2, channelz_pb2_grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection, reflection_pb2_grpc

from grpc_helper import client as client_module
from grpc_helper import metrics, tracing
from grpc_helper.api import ConfigApiVersion, Event, EventApiVersion, LoggerApiVersion, ResultCode, ServerApiVersion
from grpc_helper.api.config_pb2_grpc import ConfigServiceStub, add_ConfigServiceServicer_to_server
from grpc_helper.api.events_pb2_grpc import EventServiceStub, add_EventServiceServicer_to_server
from grpc_helper.api.logger_pb2_grpc import LoggerServiceStub, add_LoggerServiceServicer_to_server
from grpc_helper.api.server_pb2_grpc import RpcServerServiceStub, add_RpcServerServiceServicer_to_server
from grpc_helper.auth import Authorizer
from grpc_helper.calls import CallSite, LoadGate, VersionRange, implemented_method, is_pushed_stream, wrap_method
from grpc_helper.client import RpcClient
from grpc_helper.config.items import ConfigItems
from grpc_helper.config.manager import ConfigManager
from grpc_helper.config.static import RpcStaticConfig, bool_value
from grpc_helper.descriptor import RpcServiceDescriptor
from grpc_helper.errors import RpcException
from grpc_helper.events.service import EventsManager
from grpc_helper.folders import Folders
from grpc_helper.generated import (
    KINDS,
    Behavior,
    Handler,
    capture_service,
    generated_default,
    kind_of,
    make_handler,
    method_handler,
    non_blocking,
    response_class,
    run_on,
    sending_serialized,
)
from grpc_helper.live import LiveStats
from grpc_helper.logs import LoggersConfig, RollingLogs, default_console
from grpc_helper.manager import RpcManager
from grpc_helper.options import server_options
from grpc_helper.proxy.reflection import ProxiedReflection
from grpc_helper.proxy.registry import ProxyRegistry
from grpc_helper.proxy.route import RoutedBackends, RouteInterceptor
from grpc_helper.server import debug
from grpc_helper.server.config_service import ConfigServiceManager
from grpc_helper.server.fairness import CALLS_ITEM, STREAMS_ITEM, WATCHES_ITEM, Fairness
from grpc_helper.server.health import NOT_SERVING, SERVING, HealthService
from grpc_helper.server.logger_service import LoggerServiceManager
from grpc_helper.server.srv_service import ServerServiceManager
from grpc_helper.signals import SignalHandler, graceful_exit
from grpc_helper.threads import IdlePool
from grpc_helper.tls import PLAINTEXT, SELF_NAME, ClientSecurity, ServerTls, backend_name, resolve

_log = logging.getLogger("grpc_helper.server")

# Logger names of the default managers: those of grpc-helper 2.x (named after its manager classes),
# which existing loggers.json files and `log.set` calls address
DEFAULT_LOGGERS = {"srv": "RpcServer", "config": "ConfigManager", "log": "LogsManager", "events": "EventsManager"}
# Threads of a server's control pool: health checks and watches, `srv.info`, `srv.stat`, `srv.shutdown` and
# channelz run there, so that they answer while every worker is busy (when an operator looks); so do the
# rejections of calls over `rpc-max-calls`
_CONTROL_THREADS = 4
# Methods of the default services served on the control pool (by descriptor name)
_CONTROL_METHODS = {"srv": ("info", "shutdown", "stat")}
# Forwarders of dynamic services' methods kept at most (made again when dropped)
_MAX_DYNAMIC = 1024
# How often wait_shutdown() lets the main thread run pending signal handlers (seconds)
_SIGNAL_POLL = 0.2


class ServerState(enum.Enum):
    """The lifecycle of an `RpcServer`; `RpcServer._advance` is the one place it changes."""

    STARTING = "starting"  # listening, managers loading: a call waits for its own service's manager
    SERVING = "serving"
    STOPPING = "stopping"  # no new calls, managers told, pending calls given their grace
    STOPPED = "stopped"  # finalized; a remote shutdown's requested wait may still be running
    TERMINATED = "terminated"  # over: wait_shutdown() returns, is_running is False


_NEXT_STATES: dict[ServerState, tuple[ServerState, ...]] = {
    ServerState.STARTING: (ServerState.SERVING, ServerState.STOPPING),  # STOPPING: a failed start
    ServerState.SERVING: (ServerState.STOPPING,),
    ServerState.STOPPING: (ServerState.STOPPED,),
    ServerState.STOPPED: (ServerState.TERMINATED,),
    ServerState.TERMINATED: (),
}


class _CallLimit(grpc.ServerInterceptor):
    """Bounds the calls waiting for or running on the workers: beyond `limit`, RESOURCE_EXHAUSTED at once.

    grpcio's sync server runs interceptors on its polling thread, just before it submits the call to
    the method's pool, one call at a time: comparing the worker pool's `pending` count to the limit
    here is exact. Calls run on another pool (long-lived streams, health, `srv.info`...) are not
    counted; their rejection handlers run on the control pool, never waiting for a worker.
    """

    def __init__(self, workers: IdlePool, limit: int, control: IdlePool) -> None:
        self._workers, self._limit = workers, limit
        details = f"Too many concurrent calls (rpc-max-calls={limit})"
        self._rejects = {
            kind: reject_handler(kind, grpc.StatusCode.RESOURCE_EXHAUSTED, details, control) for kind in KINDS.values()
        }

    def intercept_service(
        self, continuation: Callable[[grpc.HandlerCallDetails], Handler | None], details: grpc.HandlerCallDetails
    ) -> Handler | None:
        handler = continuation(details)
        if handler is None or self._workers.pending < self._limit:  # the common case: one comparison
            return handler
        kind = kind_of(handler)
        if hasattr(getattr(handler, kind), "experimental_thread_pool"):  # not run on the workers
            return handler
        metrics.refused(grpc.StatusCode.RESOURCE_EXHAUSTED)
        return self._rejects[kind]


def reject_handler(kind: str, code: grpc.StatusCode, details: str, pool: IdlePool) -> Handler:
    """A handler of `kind` aborting with `code` and `details` at once, on `pool` (never on the workers)."""

    def reject(_request: Any, context: grpc.ServicerContext) -> Any:
        context.abort(code, details)

    run_on(reject, pool)
    return method_handler(kind, reject)  # no deserializer: the request is never read


class _DynamicServices(grpc.GenericRpcHandler):
    """Forwarders of the dynamic services' calls: `/<service>/<method>` for a service registered by its gRPC name
    (see `ProxyRegistry.register`), any method, made on a call's first use and kept (up to `_MAX_DYNAMIC`)."""

    def __init__(self, registry: ProxyRegistry, fairness: Fairness, traced: tracing.Tracing | None) -> None:
        self._registry, self._fairness, self._tracing = registry, fairness, traced
        self._handlers: dict[str, Handler] = {}

    def service(self, handler_call_details: grpc.HandlerCallDetails) -> Handler | None:
        path = handler_call_details.method
        handler = self._handlers.get(path)
        if handler is not None:
            return handler
        service, _, method = path.removeprefix("/").partition("/")
        if not method or not self._registry.is_dynamic(service):
            return None  # UNIMPLEMENTED, as for any unknown service
        if len(self._handlers) >= _MAX_DYNAMIC:  # the paths come from callers: bounded
            self._handlers.clear()
        # Counted in the caller's share of the streams like any forwarded call (not measured: no metrics
        # labels made of whatever method a caller names)
        handler = self._fairness.wrap(path, self._registry.dynamic_forwarder(service, method))
        if self._tracing is not None:  # traced like any forwarded call (a span's name is no label: any method)
            handler = self._tracing.instrument(handler, service, method, results=False)
        self._handlers[path] = handler
        return handler


def _delegate(method: Callable[..., Any]) -> Behavior:
    """A behavior of its own calling `method`: grpcio options can then be set on it alone."""

    def behavior(request: Any, context: grpc.ServicerContext, *args: Any) -> Any:
        return method(request, context, *args)  # args: a non-blocking Watch's send_response_callback

    return behavior


class RpcServer:
    """A gRPC server running in its own threads, with the default services `srv`, `config`, `log`
    (and `events` when `with_events`) plus the given descriptors.

    Lifecycle (`ServerState`): the constructor opens the port, then loads the managers in the
    order of the descriptors (default services first); a call arriving before its service's
    manager is loaded waits for it (bounded by its deadline and `rpc-client-timeout`). Once
    loaded, the constructor returns. `shutdown()` stops it (idempotent, thread safe);
    `wait_shutdown()` blocks until it is over (Ctrl-C / SIGTERM trigger a shutdown meanwhile).
    """

    def __init__(
        self,
        port: int,
        descriptors: list[RpcServiceDescriptor] | None = None,
        folders: Folders | None = None,
        cli_config: Mapping[str, str] | None = None,
        static_items: ConfigItems | None = None,
        user_items: ConfigItems | None = None,
        # Positional in 2.x (documented in this order), so they stay positional
        with_events: bool = False,  # noqa: FBT001, FBT002
        with_debug_signal: bool = True,  # noqa: FBT001, FBT002
    ) -> None:
        self.folders = folders or Folders()
        self.port = port  # the bound one once listening
        self._state = ServerState.STARTING
        self._state_changed = threading.Condition()
        self._starter = threading.get_ident()  # the thread running the constructor (and the managers' _load)
        self._linger = 0.0  # seconds a remote shutdown asked to wait once stopped, before terminating
        self._gates: dict[str, LoadGate] = {}  # by descriptor name: opened once its manager is loaded
        self._logs: RollingLogs | None = None
        self._grpc: grpc.Server | None = None
        self._previous_usr2: SignalHandler = None
        self.client: RpcClient | Any = None
        self.descriptors: list[RpcServiceDescriptor] = []
        self._service_names: dict[str, str] = {}  # descriptor name -> full gRPC service name
        self._loaded: list[RpcManager] = []  # managers whose _load ran, to shut down in reverse
        self._metrics: tuple[str, int] | None = None  # the metrics endpoint's (address, port), once serving
        self.tracing: tracing.Tracing | None = None  # OpenTelemetry's, when configured (see grpc_helper.tracing)
        try:
            self._start(port, list(descriptors or []), cli_config, static_items, user_items, with_events=with_events)
        except BaseException as exc:
            # A failed start (bad config, busy port, a manager's _load...) leaves nothing running, and
            # answers the calls waiting for a manager that will never be loaded
            self._advance(ServerState.STOPPING)
            self._shut_down(None, f"the server on port {self.port} failed to start: {exc}", logging.DEBUG)
            raise
        if with_debug_signal and threading.current_thread() is threading.main_thread():
            self._previous_usr2 = signal.signal(signal.SIGUSR2, lambda *_: self.dump_debug())
        self._advance(ServerState.SERVING)

    # --- start ---
    def _start(
        self,
        port: int,
        descriptors: list[RpcServiceDescriptor],
        cli_config: Mapping[str, str] | None,
        static_items: ConfigItems | None,
        user_items: ConfigItems | None,
        *,
        with_events: bool,
    ) -> None:
        self.config = ConfigManager(self.folders, cli_config, [RpcStaticConfig, *(static_items or [])], user_items)
        self.tls = ServerTls.from_config(self.folders.workspace)  # None: plaintext
        default_console()  # before the rolling files' handler on root, and before `log reset`'s root level is read
        self._logs = RollingLogs(self.folders)
        self.loggers = LoggersConfig(self.folders)
        self.logger = self._logs.add_manager(logging.getLogger(DEFAULT_LOGGERS["srv"]))

        # Manager calls run on a bounded pool; long-lived streams (event listeners, proxied calls)
        # get a separate pool so they can never starve the workers; health and the server's own
        # control calls a small third one, so they answer however busy the others are. Idle threads
        # end (IdlePool): a burst of listeners leaves no threads behind.
        self._workers = IdlePool(RpcStaticConfig.MAX_WORKERS.int_val, thread_name_prefix="rpc-worker")
        self.streams = IdlePool(RpcStaticConfig.MAX_STREAMS.int_val, thread_name_prefix="rpc-stream")
        self._control = IdlePool(_CONTROL_THREADS, thread_name_prefix="rpc-control")
        limit = _CallLimit(self._workers, RpcStaticConfig.MAX_CALLS.int_val, self._control)
        # Each caller's share of the workers and of the streams: counted inside the behaviors (wrapped as
        # they are registered), where the identity of a certificate caller is known
        shares = {
            CALLS_ITEM: RpcStaticConfig.MAX_CALLS_PER_CALLER.int_val,
            STREAMS_ITEM: RpcStaticConfig.MAX_STREAMS_PER_CALLER.int_val,
            WATCHES_ITEM: RpcStaticConfig.MAX_WATCHES_PER_CALLER.int_val,
        }
        self.fairness = Fairness(self.streams, shares, self.logger)
        self.authorizer = self._authorizer()
        # The live view of the calls served (`srv.stat`): a window per registered method, fed by `metrics.instrument`
        self.live = LiveStats()
        # Decided once, here: unconfigured, no call is wrapped (and OpenTelemetry is not even imported)
        self.tracing = tracing.configured()
        # Authorization first: a refused call is never counted against the limit
        # Routed calls (a backend's default services, through main) are forwarded, never counted as ours;
        # `_routes` is filled once the default services are registered
        self._routes: dict[str, Handler] = {}
        router = RouteInterceptor(self._routes)
        interceptors: list[grpc.ServerInterceptor] = [i for i in (self.authorizer, router, limit) if i is not None]
        self._grpc = grpc.server(self._workers, interceptors=interceptors, options=server_options())

        self.proxies = ProxyRegistry(
            [d for d in descriptors if d.is_proxy],
            workspace=self.folders.workspace,
            streams=self.streams,
            set_health=self._set_health,
            logger=self.logger,
            security=lambda service: self.client_security(backend_name(service)),
        )
        defaults = self._default_descriptors(with_events=with_events)
        self._defaults = len(defaults)
        self.descriptors = defaults + descriptors
        names = [d.name for d in self.descriptors]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise RpcException(f"Duplicate service names: {', '.join(duplicates)}", ResultCode.ERROR_MODEL_INVALID)

        services = [self._register(d) for d in self.descriptors]
        self._register_routes(defaults)
        twice = sorted({s for s in services if services.count(s) > 1})
        if twice:
            raise RpcException(f"gRPC services served twice: {', '.join(twice)}", ResultCode.ERROR_MODEL_INVALID)

        # Health and reflection answer at once; until its manager is loaded, a service is NOT_SERVING,
        # and so is the server as a whole ("") until all are.
        self.health = HealthService()
        self.health.set("", NOT_SERVING)
        for d in self.descriptors:
            self._set_health(d.name, serving=False)
        self._register_health()
        self._register_channelz()
        own = [
            *services,
            health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
            channelz_pb2.DESCRIPTOR.services_by_name["Channelz"].full_name,
            reflection.SERVICE_NAME,
        ]
        self._register_reflection(own)
        # Dynamic services (registered by their gRPC names): whatever no handler above serves, looked up per call
        self.proxies.reserved = frozenset([*own, *names])
        self._grpc.add_generic_rpc_handlers((_DynamicServices(self.proxies, self.fairness, self.tracing),))
        # Persisted registrations are restored before the port opens: forwarded calls have no gap
        self.proxies.load()

        self.port = self._bind(port)
        self._grpc.start()
        _log.info("RPC server listening on port %s", self.port)
        self._expose_metrics()

        self.client = self.auto_client = RpcClient(
            "127.0.0.1",
            self.port,
            {d.name: (d.client_stub, d.current_version) for d in self.descriptors},
            timeout=RpcStaticConfig.CLIENT_TIMEOUT.float_val,
            name="auto-client",
            security=self._own_security(),
            # Direct mode: main's replicas are called as main calls its backends, never with the auto-client's
            # token, which makes its holder this server's admin
            route_security=lambda service: self.client_security(backend_name(service)) or PLAINTEXT,
            # Its routes are read once every service is loaded (see below): srv answers only then
        )
        managers = self.managers
        for name, manager in managers.items():
            if isinstance(manager, RpcManager):
                manager._attach(self, name)
        # In order: a manager's _load may call the services loaded before its own. The default services
        # open together, once all are loaded (srv's proxy_register sends events, for one)
        names = list(managers)
        for batch in [names[: self._defaults], *([name] for name in names[self._defaults :])]:
            for name in batch:
                manager = managers[name]
                if isinstance(manager, RpcManager):
                    manager._load()
                    self._loaded.append(manager)
            for name in batch:
                self._gates[name].open()
                self._set_health(name, serving=True)
        self.health.set("", SERVING)
        if bool_value(RpcStaticConfig.CLIENT_DIRECT):
            self.auto_client.direct = True
            self.auto_client.refresh_routes()  # proxied services restored from proxy.json, if any

    def _default_descriptors(self, *, with_events: bool) -> list[RpcServiceDescriptor]:
        """The default services, each manager given only what it needs of this server."""
        defaults: list[tuple[str, EnumTypeWrapper, RpcManager, Callable[[Any, Any], None], type[Any]]] = [
            (
                "srv",
                ServerApiVersion,
                ServerServiceManager(self, self.proxies),
                add_RpcServerServiceServicer_to_server,
                RpcServerServiceStub,
            ),
            (
                "config",
                ConfigApiVersion,
                ConfigServiceManager(self.config, self.proxies),
                add_ConfigServiceServicer_to_server,
                ConfigServiceStub,
            ),
            (
                "log",
                LoggerApiVersion,
                LoggerServiceManager(self.loggers),
                add_LoggerServiceServicer_to_server,
                LoggerServiceStub,
            ),
        ]
        if with_events:
            defaults.append(
                ("events", EventApiVersion, EventsManager(), add_EventServiceServicer_to_server, EventServiceStub)
            )
        module = importlib.import_module("grpc_helper")  # the library's title and version
        out = []
        for name, version, manager, register, stub in defaults:
            manager.logger = logging.getLogger(DEFAULT_LOGGERS[name])
            out.append(RpcServiceDescriptor(module, name, version, manager, register, stub))
        return out

    def _register(self, d: RpcServiceDescriptor) -> str:
        """Hook one descriptor into the gRPC server; returns the full service name."""
        service, generated = capture_service(d.register_method, d.manager)
        versions = VersionRange(d.supported_version, d.current_version)
        if d.is_proxy:
            handlers = self.proxies.handlers(d, service, generated, versions)
        else:
            logger = self._manager_logger(d.manager)
            long_lived = getattr(d.manager, "_long_lived_methods", ())
            gate = self._gates[d.name] = LoadGate(d.name)
            handlers = {}
            for method, original in generated.items():
                fn = implemented_method(d.manager, service, method)
                if fn is None:
                    handlers[method] = make_handler(original, generated_default(d.manager, method))
                    continue
                site = CallSite(
                    id(self), f"/{service}/{method}", response_class(service, method), versions, logger, gate
                )
                behavior = wrap_method(
                    site,
                    fn,
                    request_streaming=original.request_streaming,
                    response_streaming=original.response_streaming,
                )
                if method in long_lived:
                    run_on(behavior, self.streams)
                elif method in _CONTROL_METHODS.get(d.name, ()):
                    run_on(behavior, self._control)
                # A pushed stream may send messages built once for many streams (the events service does)
                wrap = sending_serialized if is_pushed_stream(fn) else make_handler
                handlers[method] = wrap(original, behavior)
        handlers = self.fairness.wrap_service(service, handlers)
        # Every registered method is measured (its labels and live window bound here, once), its fairness refusals
        # included; forwarded bytes have no `Result`. The Prometheus families only with a metrics port (else nothing
        # reads them: nothing is paid for them); the live window always (`srv.stat`)
        prometheus = RpcStaticConfig.METRICS_PORT.int_val > 0
        handlers = {
            m: metrics.instrument(
                h,
                service,
                m,
                results=not d.is_proxy,
                window=self.live.window(d.name, m, service),
                prometheus=prometheus,
            )
            for m, h in handlers.items()
        }
        traced = self.tracing
        if traced is not None:  # outermost: the span is current while the call is checked, counted and served
            handlers = {m: traced.instrument(h, service, m, results=not d.is_proxy) for m, h in handlers.items()}
        self._add_service(service, handlers)
        self._service_names[d.name] = service
        return service

    def _register_routes(self, defaults: list[RpcServiceDescriptor]) -> None:
        """Forwarders of the default services' methods, and channelz's, for calls routed to a proxied service's
        server."""
        backends = RoutedBackends(self.proxies)
        services: list[tuple[Callable[[Any, Any], None], object, VersionRange | None]] = [
            (d.register_method, d.manager, VersionRange(d.supported_version, d.current_version)) for d in defaults
        ]
        services.append((channelz_pb2_grpc.add_ChannelzServicer_to_server, channelz.ChannelzServicer(), None))
        for register, servicer, versions in services:
            service, generated = capture_service(register, servicer)
            routed = self.proxies.routed_handlers(service, generated, versions, backends)
            routed = self.fairness.wrap_service(service, routed)
            if self.tracing is not None:
                routed = {m: self.tracing.instrument(h, service, m, results=False) for m, h in routed.items()}
            self._routes.update({f"/{service}/{method}": handler for method, handler in routed.items()})

    def _add_service(self, service: str, handlers: dict[str, Handler]) -> None:
        """Serve `handlers` (by method name) as `service`: registered methods (grpcio's fast lookup), and a generic
        handler for callers that name them otherwise."""
        assert self._grpc is not None
        self._grpc.add_registered_method_handlers(service, handlers)
        self._grpc.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(service, handlers),))

    def _library_service(
        self, register: Callable[[Any, Any], None], servicer: object, pool: IdlePool, *, pushed: str = ""
    ) -> tuple[str, dict[str, Handler]]:
        """The handlers of a library's servicer (health, channelz, reflection) as `register` (its generated
        `add_*_to_server`) makes them, each with a behavior of its own run on `pool`; `pushed`: the method made
        non-blocking (grpcio's `experimental_non_blocking`: it holds no thread while its stream is open)."""
        service, generated = capture_service(register, servicer)
        handlers = {}
        for name, original in generated.items():
            behavior = _delegate(getattr(servicer, name))
            if name == pushed:
                non_blocking(behavior)
            run_on(behavior, pool)
            handlers[name] = make_handler(original, behavior)
        return service, handlers

    def _register_health(self) -> None:
        """Serve `self.health` on the control pool: Check and Watch never wait for a worker. Watch is non-blocking:
        it registers its stream and returns, holding no thread meanwhile, but its call's memory: bounded per caller
        (health is open to anybody)."""
        add = health_pb2_grpc.add_HealthServicer_to_server
        service, handlers = self._library_service(add, self.health, self._control, pushed="Watch")
        handlers["Watch"] = self.fairness.wrap_watch(f"/{service}/Watch", handlers["Watch"])
        self._add_service(service, handlers)

    def _register_channelz(self) -> None:
        """grpcio-channelz's servicer (the process's channels, subchannels, servers and sockets, from gRPC's core),
        on the control pool: it answers however busy the workers are. The policy gives it to admins only."""
        add = channelz_pb2_grpc.add_ChannelzServicer_to_server
        self._add_service(*self._library_service(add, channelz.ChannelzServicer(), self._control))

    def _register_reflection(self, services: list[str]) -> None:
        """grpcio-reflection's servicer for `services`, extended to the dynamic services (`ProxiedReflection`),
        on the streams pool: a request about a dynamic service waits for its backend's answer. A reflection
        stream holds a thread of that pool for its whole life, read or not: counted in its caller's share of
        streams (`rpc-max-streams-per-caller`), as a proxied stream is."""
        servicer = ProxiedReflection(reflection.ReflectionServicer(services), self.proxies)
        add = reflection_pb2_grpc.add_ServerReflectionServicer_to_server
        service, handlers = self._library_service(add, servicer, self.streams)
        self._add_service(service, self.fairness.wrap_service(service, handlers))

    def _manager_logger(self, manager: object) -> logging.Logger:
        """The logger a manager's calls are traced on, given its rolling file: an `RpcManager`'s
        `logger`, else (a plain servicer) one named after the manager's class."""
        logger = getattr(manager, "logger", None)
        if not isinstance(logger, logging.Logger):
            logger = logging.getLogger(type(manager).__name__)
        assert self._logs is not None
        return self._logs.add_manager(logger)

    def _bind(self, port: int) -> int:
        assert self._grpc is not None
        host = RpcStaticConfig.BIND_ADDRESS.str_val
        # Every interface by default: IPv6 and IPv4, or IPv4 only when the host has no IPv6
        addresses = (
            [f"[{host}]:{port}" if ":" in host else f"{host}:{port}"] if host else [f"[::]:{port}", f"0.0.0.0:{port}"]
        )
        errors = []
        for address in addresses:
            try:
                if self.tls is not None:
                    return self._grpc.add_secure_port(address, self.tls.credentials())
                return self._grpc.add_insecure_port(address)
            except RuntimeError as exc:
                errors.append(f"{address}: {exc}")
        raise RpcException(f"Can't listen on port {port}: {'; '.join(errors)}", ResultCode.ERROR_PORT_BUSY)

    def _expose_metrics(self) -> None:
        """Serve the process's metrics on `rpc-metrics-port` (0: not), on `rpc-bind-address`: HTTPS with this
        server's certificate, requiring a client certificate issued by its CA, when it serves TLS."""
        port = RpcStaticConfig.METRICS_PORT.int_val
        if port <= 0:
            return
        # The RpcClients of the process made from now on are measured too (the operator CLI's never are: it
        # stays a light probe, without prometheus_client; see client.METERS)
        client_module.METERS = metrics.ClientMethodMetrics
        tls = self.tls.exposition() if self.tls is not None else None
        try:
            self._metrics = metrics.expose(RpcStaticConfig.BIND_ADDRESS.str_val, port, tls)
        except OSError as exc:
            msg = f"Can't serve metrics on port {port} (rpc-metrics-port): {exc.strerror or exc}"
            raise RpcException(msg, ResultCode.ERROR_PORT_BUSY) from exc

    @property
    def metrics_port(self) -> int | None:
        """The port the metrics are served on (None: not served, `rpc-metrics-port` is 0)."""
        return self._metrics[1] if self._metrics is not None else None

    def _authorizer(self) -> Authorizer | None:
        """The call gate of `rpc-auth-policy` (None: no policy, every call is let through, as 2.x)."""
        path = RpcStaticConfig.AUTH_POLICY.str_val
        if not path:
            return None
        # Absolute (a mounted secret), or relative to the workspace, else the user, else the system folder
        f = self.folders
        candidates = [resolve(path, folder) for folder in (f.workspace, f.user, f.system) if folder is not None]
        found = next((c for c in candidates if c.is_file()), candidates[0] if candidates else resolve(path, None))
        control = self._control

        def reject(kind: str, code: grpc.StatusCode, details: str) -> Handler:
            return reject_handler(kind, code, details, control)

        mtls = self.tls is not None and self.tls.client_auth == "required"
        return Authorizer(found, certificates=mtls, reject=reject, logger=self.logger)

    def _own_security(self) -> ClientSecurity | None:
        """The auto-client's: this server's certificate, verified as `localhost`, and the token only this
        server's authorizer knows."""
        security = self.client_security(SELF_NAME) or PLAINTEXT
        if self.authorizer is not None:
            security = replace(security, token=self.authorizer.own_token)
        return security

    def client_security(self, server_name: str) -> ClientSecurity | None:
        """What this server's own clients use to reach `server_name`: its certificate, CA and
        `rpc-auth-token-file` token with TLS (None when it serves plaintext)."""
        return self.tls.client_security(server_name) if self.tls is not None else None

    # --- state ---
    @property
    def managers(self) -> dict[str, Any]:
        return {d.name: d.manager for d in self.descriptors if not d.is_proxy}

    @property
    def is_running(self) -> bool:
        """True until shutdown has completed, i.e. until `wait_shutdown()` returns (after a remote
        shutdown, that includes the wait its request asked for)."""
        return self._state is not ServerState.TERMINATED

    def _advance(self, to: ServerState) -> bool:
        """The one place the state changes: to `to` if it follows the current state (True), else
        nothing (False: another thread got there first). Waiters on `_state_changed` are woken."""
        with self._state_changed:
            current = self._state
            if to not in _NEXT_STATES[current]:
                return False
            self._state = to
            self._state_changed.notify_all()
        _log.debug("RPC server on port %s: %s -> %s", self.port, current.name, to.name)
        return True

    def _wait_state(self, done: Callable[[], bool], timeout: float | None) -> bool:
        with self._state_changed:
            return self._state_changed.wait_for(done, timeout)

    def _set_health(self, name: str, *, serving: bool) -> None:
        """The health status of the service named `name` (a descriptor's name)."""
        # A dynamic service has no descriptor: its name is its gRPC service name
        self.health.set(self._service_names.get(name, name), SERVING if serving else NOT_SERVING)

    def send_event(self, event: Event) -> None:
        """Send `event` on this server's events service, if it runs one (else nothing)."""
        events = self.managers.get("events")
        if isinstance(events, EventsManager):
            events.send(event)

    def proxied_servers(self) -> set[tuple[str, int]]:
        """(host, port) of every server registered for this server's proxied services."""
        return self.proxies.proxied_servers()

    # --- shutdown ---
    def shutdown(self) -> None:
        """Stop accepting calls, notify managers, wait up to `rpc-shutdown-grace` for pending calls, finalize.

        Idempotent and thread safe: a concurrent caller returns once the first shutdown is complete.
        Asked from another thread while the server starts, it runs once the start is over.
        """
        self._stop(None, terminate=False)

    def stop(self, grace: float | None = None) -> None:
        """Shut down for good: `shutdown()` with `grace` seconds for pending calls (None:
        `rpc-shutdown-grace`), also ending a remote shutdown's requested wait (`wait_shutdown()`
        returns). Called while a shutdown runs, a shorter `grace` cuts its wait short (0: pending
        calls are cancelled now). What SIGINT/SIGTERM do, through `graceful_exit`."""
        self._stop(grace, terminate=True)

    def _stop(self, grace: float | None, *, terminate: bool) -> None:
        with self._state_changed:
            if self._state is ServerState.STARTING:
                if threading.get_ident() == self._starter:  # waiting for our own start would never end
                    raise RpcException(
                        "The server can't be shut down while it starts: raise from _load() to abort the start",
                        ResultCode.ERROR_STATE_UNEXPECTED,
                    )
                self._state_changed.wait_for(lambda: self._state is not ServerState.STARTING)
        if self._advance(ServerState.STOPPING):
            self._shut_down(grace, f"the server on port {self.port} is shutting down", logging.INFO)
        else:
            if grace is not None and self._grpc is not None:
                self._grpc.stop(grace)  # a shorter grace than the running shutdown's cuts it short (gRPC's rule)
            self._wait_state(lambda: self._state in (ServerState.STOPPED, ServerState.TERMINATED), None)
        if terminate:
            self._advance(ServerState.TERMINATED)

    def _shut_down(self, grace: float | None, reason: str, level: int) -> None:
        """STOPPING -> STOPPED, then TERMINATED unless a remote shutdown asked to wait. `reason`: what
        calls still waiting for a manager's load are told; `level`: of the log lines (a failed start
        is reported by its exception)."""
        _log.log(level, "RPC server on port %s shutting down", self.port)
        for gate in self._gates.values():
            gate.fail(reason)  # calls still waiting for a manager's _load (a failed start) answer now
        stopped = None
        self._withdraw_managers()  # first: nothing new is sent here once gRPC stops taking calls
        if self._grpc is not None:
            if hasattr(self, "health"):
                self.health.enter_graceful_shutdown()  # every status NOT_SERVING, sent to watchers
                self.health.end_watches()  # a connected watcher must not hold the shutdown for the grace period
            stopped = self._grpc.stop(RpcStaticConfig.SHUTDOWN_GRACE.float_val if grace is None else grace)
        self._shutdown_managers()
        if hasattr(self, "proxies"):
            self.proxies.shutdown()
        if stopped is not None:
            stopped.wait()
        self._finalize()
        _log.log(level, "RPC server on port %s shut down", self.port)
        self._advance(ServerState.STOPPED)
        if self._linger <= 0:
            self._advance(ServerState.TERMINATED)

    def _withdraw_managers(self) -> None:
        for manager in reversed(self._loaded):
            try:
                manager._withdraw()
            except Exception:
                _log.exception("Manager %s failed to withdraw", manager.logger.name)

    def _shutdown_managers(self) -> None:
        while self._loaded:
            manager = self._loaded.pop()
            try:
                manager._shutdown()
            except Exception:
                _log.exception("Manager %s failed to shut down", manager.logger.name)

    def _finalize(self) -> None:
        # The auto-client is deliberately left open: it outlives the server (managers and user code
        # hold it), and closing it would cancel whatever runs through it at that moment (the remote
        # shutdown call being answered, a call retrying until a new server is up on this port, an
        # events listener). With no server to talk to, its channel just stays idle, without a connection.
        for pool in ("_workers", "streams", "_control"):
            if hasattr(self, pool):
                getattr(self, pool).shutdown(wait=False, cancel_futures=True)
        authorizer: Authorizer | None = getattr(self, "authorizer", None)  # None: no policy, or a failed start
        if authorizer is not None:
            authorizer.close()
        if self._logs is not None:
            self._logs.close()
        if self._metrics is not None:
            metrics.unexpose(self._metrics)
            self._metrics = None
        if self._previous_usr2 is not None and threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGUSR2, self._previous_usr2)
            self._previous_usr2 = None

    def shutdown_remotely(self, timeout: int) -> None:
        """The `srv.shutdown` RPC: shut down in the background, then wait `timeout` seconds
        (`rpc-shutdown-timeout` if 0, none if < 0) before the process may end."""
        delay = float(timeout) if timeout > 0 else RpcStaticConfig.SHUTDOWN_TIMEOUT.float_val if timeout == 0 else 0
        self._linger = delay  # read once stopped: set before the shutdown starts below
        if delay > 0:
            # Logged now, while the server's log files are still open
            self.logger.warning("!!! Will shutdown in %ds !!!", int(delay))

        def run() -> None:
            self.shutdown()
            # stop() (a signal) may end the wait early
            self._wait_state(self._terminated, delay)
            self._advance(ServerState.TERMINATED)

        threading.Thread(target=run, name="rpc-remote-shutdown", daemon=True).start()

    def wait_shutdown(self, timeout: float | None = None) -> bool:
        """Block until the server is shut down (True) or `timeout` expires (False).

        On the main thread, SIGINT and SIGTERM trigger a graceful shutdown meanwhile, a second one
        an immediate stop (`graceful_exit`); the previous handlers are restored afterwards.
        """
        with graceful_exit(self):
            if threading.current_thread() is not threading.main_thread():
                return self._wait_state(self._terminated, timeout)
            # Wake up regularly: the kernel may deliver SIGTERM to one of gRPC's threads, and Python
            # then runs the handler only once the main thread executes bytecode again
            deadline = None if timeout is None else time.monotonic() + timeout
            while True:
                step = _SIGNAL_POLL if deadline is None else min(_SIGNAL_POLL, deadline - time.monotonic())
                if step <= 0:
                    return self._terminated()
                if self._wait_state(self._terminated, step):
                    return True

    def _terminated(self) -> bool:
        return self._state is ServerState.TERMINATED

    # --- debug ---
    def dump_debug(self) -> Path:
        """Write `RpcServerDump-YYYYMMDDhhmmss.txt` (threads' stacks and pending calls) in the logs folder."""
        folder = self._logs.folder if self._logs and self._logs.folder else Path.cwd()
        path = debug.write_dump(folder, id(self))
        _log.warning("Debug dump written to %s", path)
        return path
