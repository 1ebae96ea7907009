"""Registrations of proxied services: who serves what, persisted in the workspace `proxy.json`."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import grpc

from grpc_helper.api import ConfigApiVersion, Result, ResultCode
from grpc_helper.api.config_pb2_grpc import ConfigServiceStub
from grpc_helper.auth import check_owner, check_service_names, current_identity
from grpc_helper.backoff import Backoff
from grpc_helper.balancing import Address
from grpc_helper.calls import VersionRange, remaining
from grpc_helper.client import RpcClient
from grpc_helper.config.static import RpcStaticConfig
from grpc_helper.errors import RpcException
from grpc_helper.generated import Handler, kind_of
from grpc_helper.metrics import ProxyMeter, endpoint_meter
from grpc_helper.persist import read_json_object, write_json
from grpc_helper.proxy.backend import READY, TRANSIENT_FAILURE, Acquired, Backend, backend_address
from grpc_helper.proxy.forward import Backends, make_forwarder
from grpc_helper.tls import ClientSecurity

if TYPE_CHECKING:
    from grpc_helper.descriptor import RpcServiceDescriptor

PROXY_FILE = "proxy.json"
# Endpoints forgotten on purpose (see `ProxyRegistry.forget`): a file of its own, proxy.json keeps 2.x's shape
FORGOTTEN_FILE = "proxy-forgotten.json"
# How many forgotten endpoints are remembered (the oldest dropped first): a renewing backend asks again within
# seconds of its forget, and stops renewing once refused, so only the newest ones matter
MAX_FORGOTTEN = 1000
# While a call waits for a registration, it says so at least this often (DEBUG, as the original did)
_WAIT_LOG_PERIOD = 0.5
# While a call waits for a registered backend to be connected, it checks the connection this often
_FIRST_POLL = 0.005
_MAX_POLL = 0.05
# How often the channels' states are read for health (gRPC sees a change at once: a Watch stream)
_WATCH_PERIOD = 0.25


class HealthSetter(Protocol):
    """Sets the server's health status of a service (by its descriptor name)."""

    def __call__(self, name: str, *, serving: bool) -> None: ...


Endpoint = tuple[str, int]  # a registered (host, port): the host as given, empty meaning `rpc-main-host`

# proxy.json: the key, inside a service's entry, listing its endpoints after the first (2.x ignores it)
REPLICAS_KEY = "replicas"
# proxy.json: the key marking the entry of a dynamic service (registered by its gRPC name, no descriptor in
# main): `"grpc_service": true`. 2.x reads only the entries of its descriptors' names: it ignores these
DYNAMIC_KEY = "grpc_service"


def endpoint_label(endpoint: Endpoint) -> str:
    """An endpoint's `endpoint` metrics label: "host:port", the host resolved (as its channel's `address`)."""
    host, port = backend_address(*endpoint)
    return f"{host}:{port}"


@dataclass(frozen=True)
class ProxyTarget:
    """One registered endpoint (replica) of a proxied service."""

    host: str  # as registered: empty means `rpc-main-host` (resolved only to connect)
    port: int
    version: str
    registrant: str | None = None  # the identity that registered it (with a policy on): only it may change it

    @property
    def endpoint(self) -> Endpoint:
        return self.host, self.port

    def as_json(self) -> dict[str, object]:
        """Its proxy.json entry: 2.x's `host`, `port` and `version` (2.x ignores any other key)."""
        entry: dict[str, object] = {"host": self.host, "port": self.port, "version": self.version}
        if self.registrant is not None:
            entry["registrant"] = self.registrant
        return entry

    @classmethod
    def from_json(cls, entry: object) -> ProxyTarget | None:
        """The endpoint of a proxy.json entry; None if it is not a valid one."""
        if not isinstance(entry, dict):
            return None
        try:
            registrant = entry.get("registrant")
            target = cls(
                str(entry["host"]),
                int(entry["port"]),
                str(entry["version"]),
                registrant if isinstance(registrant, str) else None,
            )
        except (KeyError, TypeError, ValueError):
            return None
        return target if 0 < target.port <= 65535 else None


ForgottenKey = tuple[str, str, int]  # (service, host, port)


@dataclass(frozen=True)
class Forgotten:
    """An endpoint forgotten on purpose (`proxy_forget`): its renewals are refused until it registers plainly."""

    by: str | None  # who forgot it (with a policy on)
    at: float  # when (seconds since the epoch)

    def describe(self) -> str:
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(self.at))
        return f"by {self.by} at {when}" if self.by else f"at {when}"


@dataclass(frozen=True)
class EndpointState:
    """An endpoint of a proxied service, as `srv.info` shows it."""

    target: ProxyTarget
    serving: bool
    channel_target: str = ""  # the gRPC target of main's channel to it alone (channelz), "" if none


class _ConfigLink:
    """A config-service client to a proxied server, borrowed by merged config calls like backends
    by forwarded calls: retired when no registration uses its server, closed once its last call ends."""

    def __init__(self, address: tuple[str, int], security: ClientSecurity | None) -> None:
        self.client = RpcClient(
            address[0],
            address[1],
            {"config": (ConfigServiceStub, ConfigApiVersion.CONFIG_API_CURRENT)},
            timeout=None,  # one attempt per call: the merged config bounds each call itself
            name="proxy-config",
            security=security,
        )
        self.users = 0
        self.retired = False

    def close(self) -> None:
        self.client.close()


ChannelKey = tuple[str, tuple[Address, ...]]  # (TLS name checked, the servers' addresses)


class ProxyRegistry:
    """Proxied services of one server, their registered endpoints (replicas) and backend channels.

    Each service has one balanced backend channel over all its endpoints (`Backend`: gRPC's
    round_robin and health checking), and each endpoint a monitor channel of its own whose state
    tells that endpoint's health (for `srv.info`, the logs and stale endpoints); a service with one
    endpoint uses its monitor as its backend. Channels are shared by key (TLS name, addresses).

    Calls borrow a backend with `acquire` and give it back with `release` (merged config calls borrow
    config clients with `config_clients`): a channel that nothing uses any more is closed only once
    its last call is over, so a registration change never closes a channel under a call.

    Health: a registered service is SERVING while its backend channel is READY (at least one endpoint
    connected and serving), NOT_SERVING while none is, and when unregistered. One thread reads the
    channels' states (gRPC does the health checking) every `_WATCH_PERIOD`, and has each endpoint's
    monitor answer a bounded health check every second (`Backend.probe`): an endpoint that vanished
    without a reset is not serving within `rpc-keepalive-timeout` + 1 s. A balanced channel of several
    endpoints is probed too, unrecorded: every connection of main's gets an answer from its server now and
    then, so that no server with gRPC's default ping enforcement ever strikes (see `options`).
    """

    def __init__(
        self,
        descriptors: list[RpcServiceDescriptor],
        *,
        workspace: Path | None,
        streams: ThreadPoolExecutor,
        set_health: HealthSetter,
        logger: logging.Logger,
        security: Callable[[str], ClientSecurity | None] | None = None,
    ) -> None:
        """`descriptors`: the proxied services; `workspace`: where `proxy.json` lives (None: not persisted);
        `streams`: the pool forwarded calls run on; `set_health(name, serving)`: the server's health of
        a service; `logger`: the server's; `security(service)`: how to reach the backends of `service`
        (TLS credentials and the name their certificates must carry; None: plaintext)."""
        self._descriptors = {d.name: d for d in descriptors}
        self._security = security or (lambda _service: None)
        self._streams = streams
        self._set_health = set_health
        self.logger = logger
        self._targets: dict[str, dict[Endpoint, ProxyTarget]] = {}  # endpoints in registration order
        self._versions: dict[str, str] = {}  # last registered version, kept after proxy_forget
        self._serving: dict[str, bool] = {}  # registered services' health, as last set
        self._channels: dict[ChannelKey, Backend] = {}
        self._server_names: dict[str, str] = {}  # the TLS name each service's backends are checked against
        self._retired: set[Backend] = set()  # unused, still used by calls
        self._config_clients: dict[Address, _ConfigLink] = {}  # by resolved address
        self._retired_links: set[_ConfigLink] = set()  # unregistered, still used by calls
        self._changed = threading.Condition()
        self._closed = False
        self._stop = threading.Event()
        self._watcher: threading.Thread | None = None
        # Any server may take dynamic registrations (see `register`): persisted wherever there is a workspace
        self._path = workspace / PROXY_FILE if workspace is not None else None
        self._forgotten_path = workspace / FORGOTTEN_FILE if workspace is not None else None
        self._forgotten: dict[ForgottenKey, Forgotten] = {}  # oldest first
        self._foreign: dict[str, object] = {}
        # Dynamic services: full gRPC service names registered (`register`'s `dynamic`) since the start or
        # restored, forwarded without a descriptor; kept after `forget`, as declared ones are (calls wait)
        self._dynamic: set[str] = set()
        # What a dynamic registration may not name: the gRPC services this server serves or declares itself
        self.reserved: frozenset[str] = frozenset()
        # Main's proxy families (`metrics`), with metrics on: nothing is measured (nor paid) otherwise
        self._meter = ProxyMeter() if RpcStaticConfig.METRICS_PORT.int_val > 0 else None

    # --- handlers ---
    def handlers(
        self, d: RpcServiceDescriptor, service: str, generated: dict[str, Handler], versions: VersionRange
    ) -> dict[str, Handler]:
        """Forwarders of a proxied service's methods to its backends."""
        return self._forwarders(d.name, service, generated, versions, self)

    def routed_handlers(
        self, service: str, generated: dict[str, Handler], versions: VersionRange | None, backends: Backends
    ) -> dict[str, Handler]:
        """Forwarders of a default service's methods to the server `backends` picks per call (routing); `versions`
        None: a service without our API versions (channelz), its errors plain gRPC statuses."""
        return self._forwarders("", service, generated, versions, backends)

    def _forwarders(
        self, name: str, service: str, generated: dict[str, Handler], versions: VersionRange | None, backends: Backends
    ) -> dict[str, Handler]:
        return {
            method: make_forwarder(name, service, method, kind_of(original), versions, backends, self._streams)
            for method, original in generated.items()
        }

    def dynamic_forwarder(self, service: str, method: str) -> Handler:
        """The forwarder of `/service/method` of a dynamic service: raw bytes of any kind (a stream_stream handler
        carries every kind on the wire), no version check (the backend checks)."""
        return make_forwarder(service, service, method, "stream_stream", None, self, self._streams)

    def is_proxied(self, name: str) -> bool:
        """Whether `name` is a proxied service: declared (a descriptor's name) or dynamic (a gRPC service name)."""
        return name in self._descriptors or name in self._dynamic

    def is_dynamic(self, name: str) -> bool:
        return name in self._dynamic

    def dynamic_services(self, *, registered: bool = False) -> list[str]:
        """The dynamic services known (registered since the start or restored), sorted; only those registered
        now with `registered`."""
        with self._changed:
            return sorted(n for n in self._dynamic if not registered or n in self._targets)

    def has_endpoint(self, name: str, endpoint: Endpoint) -> bool:
        with self._changed:
            return endpoint in self._targets.get(name, {})

    # --- channels (lock held) ---
    def _key(self, name: str, endpoints: Iterable[Endpoint]) -> ChannelKey:
        server_name = self._server_names.get(name)
        if server_name is None:  # once per service: this is on every forwarded call's path
            security = self._security(name)
            server_name = self._server_names[name] = (security.server_name or "") if security is not None else ""
        return server_name, tuple(backend_address(*e) for e in endpoints)

    def _channel(self, name: str, endpoints: Iterable[Endpoint]) -> Backend:
        """The channel to these endpoints of `name`, created on first use."""
        key = self._key(name, endpoints)
        channel = self._channels.get(key)
        if channel is None:
            channel = self._channels[key] = Backend(key[1], self._security(name))
        return channel

    def _current(self, name: str, endpoint: Endpoint | None = None) -> Backend | None:
        """The backend channel of `name` (of its `endpoint` only, if given); None when unregistered (that
        endpoint included) or shutting down."""
        endpoints = None if self._closed else self._targets.get(name)
        if not endpoints or (endpoint is not None and endpoint not in endpoints):
            return None
        return self._channel(name, endpoints if endpoint is None else [endpoint])

    # --- backends, for calls ---
    def acquire(
        self, name: str, method: str, context: grpc.ServicerContext, endpoint: Endpoint | None = None
    ) -> Acquired | Result:
        """The connected backend serving `name` (to `release` after the call) and the meter of its calls for
        `name` (None: metrics off), or an error `Result`; with `endpoint`, the channel to that one endpoint only.

        Waits up to `rpc-client-timeout` (bounded by the caller's deadline) for a registration and
        for an endpoint to be connected and serving, following registration changes meanwhile.
        Nothing is sent while waiting, so following a new registration can never send a request twice.
        """
        with self._changed:
            backend = self._current(name, endpoint)
            if backend is not None and backend.connected():  # the usual case: no wait
                backend.users += 1
                return backend, backend.meters.get(name)
        meter = self._meter
        if meter is None:
            return self._wait(name, method, context, endpoint)
        waiting = meter.waiting(name)
        waiting.inc()
        try:
            acquired = self._wait(name, method, context, endpoint)
        finally:
            waiting.dec()
        if isinstance(acquired, Result):
            meter.unforwarded(name, registered=acquired.code != ResultCode.ERROR_PROXY_UNREGISTERED)
        return acquired

    def _wait(
        self, name: str, method: str, context: grpc.ServicerContext, endpoint: Endpoint | None
    ) -> Acquired | Result:
        start = time.monotonic()
        limit = RpcStaticConfig.CLIENT_TIMEOUT.float_val
        left = remaining(context)
        deadline = start + (limit if left is None else min(limit, left))
        next_log = start
        poll = Backoff(_FIRST_POLL, _MAX_POLL)
        # A caller that cancels, or whose deadline passes, wakes the wait up at once: its thread is free
        context.add_callback(self._wake)
        with self._changed:
            while True:
                backend = self._current(name, endpoint)
                if backend is not None and backend.connected(try_to_connect=True):
                    backend.users += 1
                    return backend, backend.meters.get(name)
                now = time.monotonic()
                # Closed: no backend; caller gone (cancelled): no need to wait any longer
                if now >= deadline or self._closed or not context.is_active():
                    if backend is None:
                        msg = f"Proxied service {name} is not registered"
                        return Result(code=ResultCode.ERROR_PROXY_UNREGISTERED, msg=msg)
                    registered = ", ".join(f"{h}:{p}" for h, p in self._targets[name] if endpoint in (None, (h, p)))
                    msg = (
                        f"Proxied service {name}: can't connect to {backend.address}"
                        f" (registered as {registered}) within {now - start:.1f}s"
                    )
                    return Result(code=ResultCode.ERROR_RPC, msg=msg)
                if backend is None:
                    if now >= next_log:
                        self.logger.debug("Proxy not registered yet for method %s: wait a bit...", method)
                        next_log = now + _WAIT_LOG_PERIOD
                    wake = min(deadline, next_log)
                else:
                    # Connecting: look again soon (the channel reports no event to wait on)
                    wake = min(deadline, now + poll.next_delay())
                # Woken up early by a registration change or shutdown
                self._changed.wait(wake - now)

    def _wake(self) -> None:
        with self._changed:
            self._changed.notify_all()

    def release(self, backend: Backend) -> None:
        """Give back a backend that `acquire` returned; closes it if it was the last user of a retired one."""
        with self._changed:
            backend.users -= 1
            close = backend.retired and backend.users == 0
            if close:
                self._retired.discard(backend)
        if close:
            backend.close()

    # --- registrations ---
    def load(self) -> None:
        """Restore persisted registrations (so calls flow again without re-registration), and the endpoints
        forgotten on purpose."""
        if self._path is None:
            return
        self._load_forgotten()
        data = read_json_object(self._path, (dict,), "proxy")
        for name, entry in data.items():
            if name not in self._descriptors:
                if not (isinstance(entry, dict) and entry.get(DYNAMIC_KEY) is True and name not in self.reserved):
                    self._foreign[name] = entry  # not ours (any more): kept in the file as is
                    continue
                self._dynamic.add(name)
            replicas = entry.get(REPLICAS_KEY, []) if isinstance(entry, dict) else []
            # The top-level endpoint last: it is the service's newest registration (see `target`)
            for item in [*(replicas if isinstance(replicas, list) else [replicas]), entry]:
                target = ProxyTarget.from_json(item)
                if target is None:
                    self.logger.warning(
                        "Ignoring invalid persisted registration of %s in %s: %r", name, self._path, item
                    )
                    continue
                self._set([name], target)
                self.logger.info("Restored registration of %s at %s:%s", name, target.host, target.port)

    def register(
        self,
        names: list[str],
        version: str,
        host: str,
        port: int,
        *,
        renew: bool = False,
        dynamic: Iterable[str] = (),
    ) -> ProxyTarget:
        """Forward `names` (declared services) and `dynamic` (full gRPC service names main has no descriptor of)
        to host:port too from now on: one more endpoint for each (registering the same endpoint again refreshes
        it); the host is kept as given (empty: `rpc-main-host`). A dynamic name is one name like a declared one
        for everything below (ownership, grants, forgets, health, persistence); one this server serves or
        declares itself is refused (ERROR_PARAM_INVALID).
        With a policy on, a service's endpoints belong to their registrant: only it (or an admin)
        adds, replaces or removes one; and a name the policy grants (`services`) is registered by its
        grantees only, registered or not. A renewal (`renew`: a running backend registering again what
        this server lost) of an endpoint forgotten on purpose is refused (ERROR_PROXY_FORGOTTEN); a plain
        registration (a backend starting) makes it registrable again."""
        dynamic = list(dynamic)
        served = sorted(n for n in dynamic if n in self.reserved or n in self._descriptors)
        if served:
            raise RpcException(
                f"gRPC service(s) {', '.join(served)} served or declared by this server: not registrable as dynamic"
                " services (a declared proxied service registers by its name)",
                ResultCode.ERROR_PARAM_INVALID,
            )
        names = [*names, *dynamic]
        check_service_names(names)  # the names the policy grants the caller, whatever is registered now
        self._check_registrant(names)
        self._check_forgotten(names, (host, port), renew=renew)
        caller = current_identity()
        target = ProxyTarget(host, port, version, caller.name if caller is not None else None)
        with self._changed:
            self._dynamic.update(dynamic)
        self._set(names, target)
        self._persist()
        return target

    def _check_registrant(self, names: list[str], endpoint: Endpoint | None = None) -> None:
        for name in names:
            for target in self._targets.get(name, {}).values():
                if endpoint is None or target.endpoint == endpoint:
                    check_owner(target.registrant, f"The registration of {name}", admin_may=True)

    def forget(self, names: list[str], endpoint: Endpoint | None = None) -> None:
        """Stop forwarding `names` to `endpoint` (one replica going away), or to any of their endpoints
        (None, as 2.x: its backends forget names only). The endpoints are remembered as forgotten on purpose
        (by whom, when): their renewals are refused (see `register`)."""
        self._check_registrant(names, endpoint)
        caller = current_identity()
        mark = Forgotten(caller.name if caller is not None else None, time.time())
        with self._changed:
            for name in names:
                for host, port in [endpoint] if endpoint is not None else list(self._targets.get(name, {})):
                    self._forgotten.pop((name, host, port), None)  # the newest again
                    self._forgotten[name, host, port] = mark
            for key in list(self._forgotten)[: max(0, len(self._forgotten) - MAX_FORGOTTEN)]:
                del self._forgotten[key]
        self._remove(names, endpoint)
        self._persist()
        self._persist_forgotten()

    def _check_forgotten(self, names: list[str], endpoint: Endpoint, *, renew: bool) -> None:
        """Refuse a renewal of `endpoint` for a name it was forgotten on purpose for; a plain registration
        (a backend starting) clears those marks."""
        with self._changed:
            keys = [(name, *endpoint) for name in names if (name, *endpoint) in self._forgotten]
            if not keys:
                return
            if renew:
                forgotten = ", ".join(f"{key[0]} {self._forgotten[key].describe()}" for key in keys)
                raise RpcException(
                    f"{endpoint[0]}:{endpoint[1]} was forgotten on purpose ({forgotten}): a renewal does not register "
                    "it again, a plain registration (its server restarting) does",
                    ResultCode.ERROR_PROXY_FORGOTTEN,
                )
            for key in keys:
                del self._forgotten[key]
        self._persist_forgotten()

    def _load_forgotten(self) -> None:
        data = read_json_object(self._forgotten_path, (list,), "forgotten registrations")
        for item in data.get("forgotten", []):
            try:
                by = item.get("by")
                key = (str(item["service"]), str(item["host"]), int(item["port"]))
                self._forgotten[key] = Forgotten(by if isinstance(by, str) else None, float(item["at"]))
            except (AttributeError, KeyError, TypeError, ValueError):
                self.logger.warning("Ignoring invalid forgotten registration in %s: %r", self._forgotten_path, item)

    def _persist_forgotten(self) -> None:
        if self._forgotten_path is not None:
            with self._changed:
                forgotten = [
                    {"service": name, "host": host, "port": port, "by": mark.by, "at": mark.at}
                    for (name, host, port), mark in self._forgotten.items()
                ]
            write_json(self._forgotten_path, {"forgotten": forgotten})

    def _remove(self, names: Iterable[str], endpoint: Endpoint | None) -> None:
        with self._changed:
            for name in names:
                endpoints = self._targets.get(name, {})
                gone = list(endpoints) if endpoint is None else [endpoint] if endpoint in endpoints else []
                for e in gone:
                    del endpoints[e]
                    if self._meter is not None:
                        self._meter.removed(name, endpoint_label(e))
                if not endpoints:
                    self._targets.pop(name, None)
                    self._serving.pop(name, None)
                    # under the lock: the watcher can't interleave a stale status
                    self._set_health(name, serving=False)
            unused = self._release_unused()
            self._changed.notify_all()
        self._close(unused)

    def _set(self, names: list[str], target: ProxyTarget) -> None:
        with self._changed:
            for name in names:
                endpoints = self._targets.setdefault(name, {})
                endpoints.pop(target.endpoint, None)  # a refreshed endpoint becomes the newest
                endpoints[target.endpoint] = target
                if self._meter is not None:
                    self._meter.added(name, endpoint_label(target.endpoint))
                self._versions[name] = target.version
                if name not in self._serving:
                    # Until the watcher has seen its channel, trust the registration (it comes from the backend)
                    self._serving[name] = True
                    self._set_health(name, serving=True)
            unused = self._release_unused()
            self._changed.notify_all()
            if self._watcher is None and not self._closed:
                self._watcher = threading.Thread(target=self._watch, name="rpc-proxy-health", daemon=True)
                self._watcher.start()
        self._close(unused)

    def _release_unused(self) -> list[Backend | _ConfigLink]:
        """Retire channels and config clients that no registration uses; returns those to close now
        (outside the lock). Called with the lock held. The channels registrations use (one per service,
        one per endpoint) are created, unless shutting down."""
        used: set[ChannelKey] = set()
        for name, endpoints in self._targets.items():
            for group in (list(endpoints), *([e] for e in endpoints)):
                used.add(self._key(name, group))
                if not self._closed:
                    channel = self._channel(name, group)
                    if self._meter is not None and name not in channel.meters:
                        channel.meters[name] = endpoint_meter(name, channel.address)  # released by its close
        used_addresses = {backend_address(*e) for endpoints in self._targets.values() for e in endpoints}
        to_close: list[Backend | _ConfigLink] = []
        for key in [k for k in self._channels if k not in used]:
            backend = self._channels.pop(key)
            backend.retired = True
            if backend.users:
                self._retired.add(backend)  # closed by the last `release`
            else:
                to_close.append(backend)
        for address in [a for a in self._config_clients if a not in used_addresses]:
            link = self._config_clients.pop(address)
            link.retired = True
            if link.users:
                self._retired_links.add(link)  # closed once its last merged config call ends
            else:
                to_close.append(link)
        return to_close

    @staticmethod
    def _close(items: Iterable[Backend | _ConfigLink]) -> None:
        for item in items:
            item.close()

    def _persist(self) -> None:
        if self._path is not None:
            with self._changed:
                data = {
                    **self._foreign,
                    **{n: _entry(e.values(), dynamic=n in self._dynamic) for n, e in self._targets.items()},
                }
            write_json(self._path, data)

    # --- health ---
    def _watch(self) -> None:
        """The watcher thread: reads the channels' connectivity (gRPC connects, reconnects and health
        checks them) and sets the services' health and endpoints' states from it; forgets endpoints
        that have not served for `rpc-proxy-stale-timeout` while their service has other ones."""
        while not self._stop.wait(_WATCH_PERIOD):
            with self._changed:
                if self._closed:
                    return
                stale = self._observe(time.monotonic())
            for name, target in stale:
                if self._meter is not None:
                    self._meter.forgotten(name)
                self.logger.warning(
                    "Forgetting endpoint %s:%s of %s: not serving for over %gs, other endpoints registered",
                    target.host,
                    target.port,
                    name,
                    RpcStaticConfig.PROXY_STALE_TIMEOUT.float_val,
                )
                self._remove([name], target.endpoint)
            if stale:
                self._persist()

    def _observe(self, now: float) -> list[tuple[str, ProxyTarget]]:
        """One look at every channel (lock held); returns the stale endpoints (never a service's last)."""
        stale: list[tuple[str, ProxyTarget]] = []
        expiry = RpcStaticConfig.PROXY_STALE_TIMEOUT.float_val
        for name, endpoints in self._targets.items():
            down: list[tuple[float, ProxyTarget]] = []
            for endpoint, target in endpoints.items():
                monitor = self._channel(name, [endpoint])
                monitor.probe()
                if _update(monitor) is not None:
                    self.logger.log(
                        logging.INFO if monitor.serving else logging.WARNING,
                        "Proxied server %s (%s) is %s",
                        monitor.address,
                        name,
                        "serving" if monitor.serving else "unreachable or not serving",
                    )
                if self._meter is not None:
                    self._meter.health(name, monitor.address, serving=monitor.serving is not False)
                if monitor.down_since is not None and now - monitor.down_since > expiry:
                    down.append((monitor.down_since, target))
            if len(down) == len(endpoints):
                down.remove(max(down, key=lambda d: d[0]))  # all down: keep the one seen serving last
            stale.extend((name, target) for _, target in down)
            backend = self._channel(name, endpoints)
            if len(endpoints) > 1:  # its connections are not its monitors': the same traffic on them
                backend.probe(record=False)
            _update(backend)
            serving = backend.serving is not False  # unknown yet: as registered
            if serving != self._serving.get(name):
                self._serving[name] = serving
                self._set_health(name, serving=serving)
        return stale

    # --- queries ---
    def target(self, name: str) -> ProxyTarget | None:
        """The newest registered endpoint of `name` (what 2.x fields show: in 2.x, a registration replaced
        the previous one), None if unregistered."""
        with self._changed:
            endpoints = self._targets.get(name)
            return next(reversed(endpoints.values())) if endpoints else None

    def endpoints(self, name: str) -> list[EndpointState]:
        """Every registered endpoint of `name`, oldest registration first, with its health as last seen
        (unknown yet: serving)."""
        with self._changed:
            endpoints = self._targets.get(name, {})
            states = []
            for endpoint, target in endpoints.items():
                monitor = None if self._closed else self._channels.get(self._key(name, [endpoint]))
                serving = monitor is None or monitor.serving is not False
                states.append(EndpointState(target, serving, monitor.target if monitor is not None else ""))
            return states

    def channel_target(self, name: str) -> str:
        """The gRPC target of the balanced channel to every endpoint of `name` (channelz), "" when unregistered."""
        with self._changed:
            endpoints = self._targets.get(name)
            backend = None if self._closed or not endpoints else self._channels.get(self._key(name, endpoints))
            return backend.target if backend is not None else ""

    def version(self, name: str) -> str | None:
        """The version `name` last registered with (kept after `forget`), None if it never registered."""
        return self._versions.get(name)

    def has_targets(self) -> bool:
        return bool(self._targets)

    def is_registered(self, name: str) -> bool:
        return name in self._targets

    def proxied_servers(self) -> set[tuple[str, int]]:
        """Distinct (host, port) addresses of the registered proxied servers (empty host resolved)."""
        with self._changed:
            return {backend_address(*e) for endpoints in self._targets.values() for e in endpoints}

    @contextmanager
    def config_clients(self) -> Iterator[list[RpcClient]]:
        """A config-service client per registered server (every replica: for the merged config service),
        borrowed for the `with` block: a registration change meanwhile never closes one under the call."""
        with self._changed:
            links = []
            if not self._closed:
                served: dict[Address, str] = {}  # address -> a service it serves (for its TLS name)
                for name, endpoints in sorted(self._targets.items()):
                    for endpoint in endpoints:
                        served.setdefault(backend_address(*endpoint), name)
                for address, name in sorted(served.items()):
                    link = self._config_clients.get(address)
                    if link is None:
                        link = self._config_clients[address] = _ConfigLink(address, self._security(name))
                    link.users += 1
                    links.append(link)
        try:
            yield [link.client for link in links]
        finally:
            with self._changed:
                to_close = []
                for link in links:
                    link.users -= 1
                    if link.retired and link.users == 0:
                        self._retired_links.discard(link)
                        to_close.append(link)
            self._close(to_close)

    def shutdown(self) -> None:
        """Wake up waiting calls and close backend channels (cancelling the calls still on them)."""
        self._stop.set()
        with self._changed:
            self._closed = True
            self._changed.notify_all()
            if self._meter is not None:
                self._meter.close()
            to_close: list[Backend | _ConfigLink] = [
                *self._channels.values(),
                *self._retired,
                *self._config_clients.values(),
                *self._retired_links,
            ]
            self._channels.clear()
            self._retired.clear()
            self._config_clients.clear()
            self._retired_links.clear()
        self._close(to_close)


def _update(channel: Backend) -> bool | None:
    """Read `channel`'s state into its `serving` (READY and answering its probes: serving; TRANSIENT_FAILURE,
    or its last probe unanswered: not; else as it was); returns the new value when it changed."""
    state = channel.state(try_to_connect=True)
    if state == READY and channel.reached is not False:
        serving = True
    elif state == TRANSIENT_FAILURE or channel.reached is False:
        serving = False
    else:
        return None
    if serving == channel.serving:
        return None
    if channel.serving is None and serving:
        channel.serving = True
        return None  # first seen serving, as it was trusted to be: nothing to tell
    channel.serving = serving
    channel.down_since = None if serving else time.monotonic()
    return serving


def _entry(targets: Iterable[ProxyTarget], *, dynamic: bool) -> dict[str, object]:
    """A service's proxy.json entry: its newest endpoint at the top level (what 2.x reads), the others
    under `REPLICAS_KEY`, oldest first; a dynamic service's marked with `DYNAMIC_KEY`."""
    *others, newest = targets
    entry = newest.as_json()
    if dynamic:
        entry[DYNAMIC_KEY] = True
    if others:
        entry[REPLICAS_KEY] = [t.as_json() for t in others]
    return entry
