"""Registrations of proxied services: who serves what, persisted in the workspace `proxy.json`."""

from __future__ import annotations

import logging
import threading
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

import grpc

from grpc_helper._persist import read_json_object, write_json
from grpc_helper.api import ConfigApiVersion, Result, ResultCode
from grpc_helper.api.config_pb2_grpc import ConfigServiceStub
from grpc_helper.client import RpcClient
from grpc_helper.config.static import RpcStaticConfig
from grpc_helper.proxy.backend import Backend
from grpc_helper.proxy.forward import make_forwarder
from grpc_helper.server.dispatch import VersionRange

if TYPE_CHECKING:
    from grpc_helper.descriptor import RpcServiceDescriptor
    from grpc_helper.server.server import RpcServer

PROXY_FILE = "proxy.json"
_log = logging.getLogger("grpc_helper.proxy")


@dataclass(frozen=True)
class ProxyTarget:
    host: str
    port: int
    version: str


class ProxyRegistry:
    """Proxied services of one server, their registered targets and backend channels."""

    def __init__(self, server: RpcServer, descriptors: list[RpcServiceDescriptor]) -> None:
        self._server = server
        self._descriptors = {d.name: d for d in descriptors}
        self._targets: dict[str, ProxyTarget] = {}
        self._backends: dict[tuple[str, int], Backend] = {}
        self._config_clients: dict[tuple[str, int], RpcClient] = {}
        self._changed = threading.Condition()
        self._closed = False
        wks = server.folders.workspace
        self._path = wks / PROXY_FILE if wks is not None and descriptors else None
        self._foreign: dict[str, Any] = {}

    # --- handlers ---
    def handlers(
        self, d: RpcServiceDescriptor, service: str, generated: dict[str, Any], versions: VersionRange
    ) -> dict[str, grpc.RpcMethodHandler]:
        return {
            method: make_forwarder(d.name, service, method, original, versions, self._resolve, self._server.streams)
            for method, original in generated.items()
        }

    def _resolve(self, name: str, context: grpc.ServicerContext) -> Backend | Result:
        """The backend serving `name`, waiting up to `rpc-client-timeout` (bounded by the caller's
        deadline) for a registration."""
        target = self._targets.get(name)
        if target is None:
            timeout = RpcStaticConfig.CLIENT_TIMEOUT.float_val
            left = context.time_remaining()
            if left is not None:
                timeout = min(timeout, left)
            with self._changed:
                self._changed.wait_for(lambda: name in self._targets or self._closed, timeout)
                target = self._targets.get(name)
        backend = self._backends.get((target.host, target.port)) if target is not None else None
        if backend is None:  # never registered, forgotten meanwhile, or shutting down
            return Result(code=ResultCode.ERROR_PROXY_UNREGISTERED, msg=f"Proxied service {name} is not registered")
        return backend

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
                target = ProxyTarget(str(entry["host"]), int(entry["port"]), str(entry["version"]))
            except (KeyError, TypeError, ValueError):
                _log.warning("Ignoring invalid persisted registration of %s in %s: %r", name, self._path, entry)
                continue
            self._set(name, target)
            _log.info("Restored registration of %s at %s:%s", name, target.host, target.port)

    def register(self, names: list[str], version: str, host: str, port: int) -> ProxyTarget:
        target = ProxyTarget(host or RpcStaticConfig.MAIN_HOST.str_val, port, version)
        for name in names:
            self._set(name, target)
        self._persist()
        return target

    def forget(self, names: list[str]) -> None:
        with self._changed:
            for name in names:
                self._targets.pop(name, None)
            self._release_unused()
        for name in names:
            self._server.set_service_health(self._descriptors[name], False)
        self._persist()

    def _set(self, name: str, target: ProxyTarget) -> None:
        with self._changed:
            key = (target.host, target.port)
            if key not in self._backends:
                self._backends[key] = Backend(target.host, target.port)
            self._targets[name] = target
            self._release_unused()
            self._changed.notify_all()
        self._server.set_service_health(self._descriptors[name], True)

    def _release_unused(self) -> None:
        used = {(t.host, t.port) for t in self._targets.values()}
        for key in [k for k in self._backends if k not in used]:
            self._backends.pop(key).close()
            client = self._config_clients.pop(key, None)
            if client is not None:
                client.close()

    def _persist(self) -> None:
        if self._path is not None:
            with self._changed:
                data = {**self._foreign, **{n: asdict(t) for n, t in self._targets.items()}}
            write_json(self._path, data)

    # --- queries ---
    def target(self, name: str) -> ProxyTarget | None:
        return self._targets.get(name)

    def has_targets(self) -> bool:
        return bool(self._targets)

    def is_registered(self, name: str) -> bool:
        return name in self._targets

    def config_clients(self) -> list[RpcClient]:
        """A config-service client per registered backend (for the merged config service)."""
        with self._changed:
            for key in {(t.host, t.port) for t in self._targets.values()}:
                if key not in self._config_clients:
                    self._config_clients[key] = RpcClient(
                        key[0],
                        key[1],
                        {"config": (ConfigServiceStub, ConfigApiVersion.CONFIG_API_CURRENT)},
                        timeout=None,
                        name="proxy-config",
                    )
            return list(self._config_clients.values())

    def shutdown(self) -> None:
        """Wake up waiting calls and close backend channels."""
        with self._changed:
            self._closed = True
            self._changed.notify_all()
            for backend in self._backends.values():
                backend.close()
            for client in self._config_clients.values():
                client.close()
            self._backends.clear()
            self._config_clients.clear()
