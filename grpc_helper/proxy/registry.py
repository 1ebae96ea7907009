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
from grpc_helper.auth import check_owner, current_identity
from grpc_helper.backoff import Backoff
from grpc_helper.calls import VersionRange, remaining
from grpc_helper.client import RpcClient
from grpc_helper.config.static import RpcStaticConfig
from grpc_helper.generated import Handler
from grpc_helper.persist import read_json_object, write_json
from grpc_helper.proxy.backend import Backend, backend_address
from grpc_helper.proxy.forward import make_forwarder
from grpc_helper.tls import ClientSecurity

if TYPE_CHECKING:
    from grpc_helper.descriptor import RpcServiceDescriptor

PROXY_FILE = "proxy.json"
# While a call waits for a registration, it says so at least this often (DEBUG, as the original did)
_WAIT_LOG_PERIOD = 0.5
# While a call waits for a registered backend to be connected, it checks the connection this often
_FIRST_POLL = 0.005
_MAX_POLL = 0.05


class HealthSetter(Protocol):
    """Sets the server's health status of a service (by its descriptor name)."""

    def __call__(self, name: str, *, serving: bool) -> None: ...


@dataclass(frozen=True)
class ProxyTarget:
    host: str  # as registered: empty means `rpc-main-host` (resolved only to connect)
    port: int
    version: str
    registrant: str | None = None  # the identity that registered it (with a policy on): only it may change it

    def as_json(self) -> dict[str, object]:
        """The entry of proxy.json: 2.x's `host`, `port` and `version` (it ignores any other key)."""
        entry: dict[str, object] = {"host": self.host, "port": self.port, "version": self.version}
        if self.registrant is not None:
            entry["registrant"] = self.registrant
        return entry


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


class ProxyRegistry:
    """Proxied services of one server, their registered targets and backend channels.

    Calls borrow a backend with `acquire` and give it back with `release` (merged config calls borrow
    config clients with `config_clients`): a backend that no registration uses any more is closed only
    once its last call is over, so a re-registration never closes a channel under a call.

    Health: a registered service is SERVING while its backend's own health service says so, and
    NOT_SERVING while the backend is unreachable or not serving (each backend is watched by a
    thread of its own, see `Backend`); NOT_SERVING when unregistered.
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
        a service; `logger`: the server's; `security(service)`: how to reach the backend of `service`
        (TLS credentials and the name its certificate must carry; None: plaintext)."""
        self._descriptors = {d.name: d for d in descriptors}
        self._security = security or (lambda _service: None)
        self._streams = streams
        self._set_health = set_health
        self.logger = logger
        self._targets: dict[str, ProxyTarget] = {}
        self._versions: dict[str, str] = {}  # last registered version, kept after proxy_forget
        self._backends: dict[tuple[str, int], Backend] = {}  # by registered (host, port)
        self._retired: set[Backend] = set()  # unregistered, still used by calls
        self._config_clients: dict[tuple[str, int], _ConfigLink] = {}  # by resolved address
        self._retired_links: set[_ConfigLink] = set()  # unregistered, still used by calls
        self._changed = threading.Condition()
        self._closed = False
        self._path = workspace / PROXY_FILE if workspace is not None and descriptors else None
        self._foreign: dict[str, object] = {}

    # --- handlers ---
    def handlers(
        self, d: RpcServiceDescriptor, service: str, generated: dict[str, Handler], versions: VersionRange
    ) -> dict[str, Handler]:
        return {
            method: make_forwarder(d.name, service, method, original, versions, self, self._streams)
            for method, original in generated.items()
        }

    # --- backends, for calls ---
    def acquire(self, name: str, method: str, context: grpc.ServicerContext) -> Backend | Result:
        """The connected backend serving `name` (to `release` after the call), or an error `Result`.

        Waits up to `rpc-client-timeout` (bounded by the caller's deadline) for a registration and
        for its backend to be connected, following registration changes meanwhile. Nothing is sent
        while waiting, so following a new registration can never send a request twice.
        """
        with self._changed:
            backend = self._current(name)
            if backend is not None and backend.connected():  # the usual case: no wait
                backend.users += 1
                return backend
        return self._wait(name, method, context)

    def _current(self, name: str) -> Backend | None:
        """The backend registered for `name` (lock held); None when unregistered or shutting down."""
        target = None if self._closed else self._targets.get(name)
        return self._backends[(target.host, target.port)] if target is not None else None

    def _wait(self, name: str, method: str, context: grpc.ServicerContext) -> Backend | Result:
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
                backend = self._current(name)
                if backend is not None and backend.connected(try_to_connect=True):
                    backend.users += 1
                    return backend
                now = time.monotonic()
                # Closed: no backend; caller gone (cancelled): no need to wait any longer
                if now >= deadline or self._closed or not context.is_active():
                    if backend is None:
                        msg = f"Proxied service {name} is not registered"
                        return Result(code=ResultCode.ERROR_PROXY_UNREGISTERED, msg=msg)
                    msg = (
                        f"Proxied service {name}: can't connect to {backend.address}"
                        f" (registered as {backend.host}:{backend.port}) within {now - start:.1f}s"
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
        """Restore persisted registrations (so calls flow again without re-registration)."""
        if self._path is None:
            return
        data = read_json_object(self._path, (dict,), "proxy")
        for name, entry in data.items():
            if name not in self._descriptors:
                self._foreign[name] = entry  # not ours (any more): kept in the file as is
                continue
            try:
                registrant = entry.get("registrant")
                target = ProxyTarget(
                    str(entry["host"]),
                    int(entry["port"]),
                    str(entry["version"]),
                    registrant if isinstance(registrant, str) else None,
                )
            except (KeyError, TypeError, ValueError):
                target = None
            if target is None or target.port <= 0:
                self.logger.warning("Ignoring invalid persisted registration of %s in %s: %r", name, self._path, entry)
                continue
            self._set(name, target)
            self.logger.info("Restored registration of %s at %s:%s", name, target.host, target.port)

    def register(self, names: list[str], version: str, host: str, port: int) -> ProxyTarget:
        """Forward `names` to host:port from now on; the host is kept as given (empty: `rpc-main-host`).
        With a policy on, a registration belongs to its registrant: only it (or an admin) replaces it."""
        self._check_registrant(names)
        caller = current_identity()
        target = ProxyTarget(host, port, version, caller.name if caller is not None else None)
        for name in names:
            self._set(name, target)
        self._persist()
        return target

    def _check_registrant(self, names: list[str]) -> None:
        for name in names:
            current = self._targets.get(name)
            if current is not None:
                check_owner(current.registrant, f"The registration of {name}", admin_may=True)

    def forget(self, names: list[str]) -> None:
        self._check_registrant(names)
        with self._changed:
            for name in names:
                self._targets.pop(name, None)
            unused = self._release_unused()
            self._changed.notify_all()
            for name in names:  # under the lock: a backend's watch thread can't interleave a stale status
                self._set_health(name, serving=False)
        self._close(unused)
        self._persist()

    def _set(self, name: str, target: ProxyTarget) -> None:
        with self._changed:
            key = (target.host, target.port)
            if key not in self._backends and not self._closed:
                self._backends[key] = Backend(target.host, target.port, self._backend_state, self._security(name))
            self._targets[name] = target
            self._versions[name] = target.version
            unused = self._release_unused()
            self._changed.notify_all()
            backend = self._backends.get(key)
            # Until its watch thread has seen the backend, trust the registration (it comes from the backend)
            self._set_health(name, serving=backend is None or backend.serving is not False)
        self._close(unused)

    def _backend_state(self, backend: Backend, serving: bool) -> None:  # noqa: FBT001 - a state
        """A backend's health changed (from its watch thread): so does that of the services it serves."""
        with self._changed:
            if self._closed or self._backends.get((backend.host, backend.port)) is not backend:
                return  # retired meanwhile: its services are elsewhere, or unregistered
            names = [n for n, t in self._targets.items() if (t.host, t.port) == (backend.host, backend.port)]
            for name in names:
                self._set_health(name, serving=serving)
        self.logger.log(
            logging.INFO if serving else logging.WARNING,
            "Proxied server %s is %s (services %s)",
            backend.address,
            "serving again" if serving else "unreachable or not serving",
            names,
        )

    def _release_unused(self) -> list[Backend | _ConfigLink]:
        """Retire backends and config clients that no registration uses; returns those to close now
        (outside the lock). Called with the lock held."""
        used = {(t.host, t.port) for t in self._targets.values()}
        used_addresses = {backend_address(*key) for key in used}
        to_close: list[Backend | _ConfigLink] = []
        for key in [k for k in self._backends if k not in used]:
            backend = self._backends.pop(key)
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
                data = {**self._foreign, **{n: t.as_json() for n, t in self._targets.items()}}
            write_json(self._path, data)

    # --- queries ---
    def target(self, name: str) -> ProxyTarget | None:
        return self._targets.get(name)

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
            return {backend_address(t.host, t.port) for t in self._targets.values()}

    @contextmanager
    def config_clients(self) -> Iterator[list[RpcClient]]:
        """A config-service client per registered backend (for the merged config service), borrowed
        for the `with` block: a registration change meanwhile never closes one under the call."""
        with self._changed:
            links = []
            if not self._closed:
                served: dict[tuple[str, int], str] = {}  # address -> a service it serves (for its TLS name)
                for name, t in sorted(self._targets.items()):
                    served.setdefault(backend_address(t.host, t.port), name)
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
        with self._changed:
            self._closed = True
            self._changed.notify_all()
            to_close: list[Backend | _ConfigLink] = [
                *self._backends.values(),
                *self._retired,
                *self._config_clients.values(),
                *self._retired_links,
            ]
            self._backends.clear()
            self._retired.clear()
            self._config_clients.clear()
            self._retired_links.clear()
        self._close(to_close)
