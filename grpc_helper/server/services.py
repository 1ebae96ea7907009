"""Managers of the default services: `srv` (RpcServerService), `config` and `log`."""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

from grpc_helper.api import (
    ConfigItem,
    ConfigStatus,
    ConfigUpdate,
    Event,
    EventProperty,
    Filter,
    LoggerStatus,
    LoggerUpdate,
    MultiServiceInfo,
    ProxyRegisterRequest,
    ResultCode,
    ResultStatus,
    ServiceInfo,
    ShutdownRequest,
)
from grpc_helper.api.config_pb2_grpc import ConfigServiceServicer
from grpc_helper.api.logger_pb2_grpc import LoggerServiceServicer
from grpc_helper.api.server_pb2_grpc import RpcServerServiceServicer
from grpc_helper.config.items import Config
from grpc_helper.errors import RpcException
from grpc_helper.manager import RpcManager

if TYPE_CHECKING:
    from grpc_helper.descriptor import RpcServiceDescriptor
    from grpc_helper.server.server import RpcServer


class _DefaultManager(RpcManager):
    server: RpcServer

    def _select(self, names: Iterable[str], ignore_unknown: bool = False) -> list[RpcServiceDescriptor]:
        """Descriptors by name (all if none given)."""
        descriptors = self.server.descriptors
        names = list(names)
        if not names:
            return list(descriptors)
        by_name = {d.name: d for d in descriptors}
        unknown = [n for n in names if n not in by_name]
        if unknown and not ignore_unknown:
            raise RpcException(f"Unknown service(s): {', '.join(unknown)}", ResultCode.ERROR_ITEM_UNKNOWN)
        return [by_name[n] for n in names if n in by_name]


class ServerServiceManager(RpcServerServiceServicer, _DefaultManager):
    """`srv`: server information, remote shutdown, proxy registrations."""

    def info(self, request: Filter) -> MultiServiceInfo:
        items = []
        for d in self._select(request.names, request.ignore_unknown):
            info = ServiceInfo(
                name=d.name,
                version=d.version_string,
                current_api_version=d.current_version,
                supported_api_version=d.supported_version,
                is_proxy=d.is_proxy,
            )
            if d.is_proxy:
                target = self.server.proxies.target(d.name)
                info.version = target.version if target else ""
                if target is not None:
                    info.proxy_host, info.proxy_port = target.host, target.port
            items.append(info)
        return MultiServiceInfo(items=items)

    def shutdown(self, request: ShutdownRequest) -> ResultStatus:
        self.logger.info("Remote shutdown requested (timeout %s)", request.timeout)
        self.server.shutdown_remotely(request.timeout)
        return ResultStatus()

    def _proxied(self, names: Iterable[str]) -> list[str]:
        names = list(names)
        if not names or any(not n for n in names):
            raise RpcException("Missing service names", ResultCode.ERROR_PARAM_MISSING)
        for d in self._select(names):
            if not d.is_proxy:
                raise RpcException(f"Service {d.name} is not a proxied service", ResultCode.ERROR_PARAM_INVALID)
        return names

    def proxy_register(self, request: ProxyRegisterRequest) -> ResultStatus:
        if not request.version:
            raise RpcException("Missing version", ResultCode.ERROR_PARAM_MISSING)
        if not request.port:
            raise RpcException("Missing port", ResultCode.ERROR_PARAM_MISSING)
        names = self._proxied(request.names)
        target = self.server.proxies.register(names, request.version, request.host, request.port)
        self.logger.info("Proxied services %s registered at %s:%s (%s)", names, target.host, target.port, target.version)
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


class ConfigServiceManager(ConfigServiceServicer, _DefaultManager):
    """`config`: user config items of this server, merged with those of its registered proxied servers."""

    def get(self, request: Filter) -> ConfigStatus:
        local = self.server.config.get_user(request.names, ignore_unknown=True)
        merged = self._merge(local, [c.config.get(Filter(names=request.names, ignore_unknown=True), timeout=self._timeout) for c in self._remotes()])
        self._check_unknown(request.names, merged, request.ignore_unknown)
        return ConfigStatus(items=list(merged.values()))

    def set(self, request: ConfigUpdate) -> ConfigStatus:
        updates = [(u.name, u.value) for u in request.items]
        remotes = self._remotes()
        if not remotes:
            return ConfigStatus(items=self.server.config.set_user(updates, request.ignore_unknown))
        if not updates:
            raise RpcException("No config item to update", ResultCode.ERROR_PARAM_MISSING)
        with self.lock:
            # Validate everything first, everywhere: nothing applies unless every update is valid
            names = [n for n, _ in updates]
            known = [(c, {i.name: i for i in c.config.get(Filter(names=names, ignore_unknown=True), timeout=self._timeout).items}) for c in remotes]
            self.server.config.validate_updates([u for u in updates if u[0] in self.server.config.user_items], True)
            for name, value in updates:
                if not name:
                    raise RpcException("Missing config item name", ResultCode.ERROR_PARAM_MISSING)
                for _, items in known:
                    if name in items:
                        _validate_remote(items[name], value)
            self._check_unknown(
                names, {n: None for n in names if n in self.server.config.user_items or any(n in i for _, i in known)},
                request.ignore_unknown,
            )
            out = self._merge(self.server.config.set_user(updates, True) if any(n in self.server.config.user_items for n in names) else [], [])
            for client, items in known:
                mine = [u for u in updates if u[0] in items]
                if mine:
                    status = client.config.set(
                        ConfigUpdate(items=[{"name": n, "value": v} for n, v in mine], ignore_unknown=True),
                        timeout=self._timeout,
                    )
                    out.update({i.name: i for i in status.items})
            return ConfigStatus(items=list(out.values()))

    def reset(self, request: Filter) -> ConfigStatus:
        remotes = self._remotes()
        if not remotes:
            return ConfigStatus(items=self.server.config.reset_user(request.names, request.ignore_unknown))
        if not request.names:
            raise RpcException("No config item to reset", ResultCode.ERROR_PARAM_MISSING)
        with self.lock:
            names = list(request.names)
            known = [(c, {i.name for i in c.config.get(Filter(names=names, ignore_unknown=True), timeout=self._timeout).items}) for c in remotes]
            local = [n for n in names if n in self.server.config.user_items]
            self._check_unknown(
                names, {n: None for n in names if n in local or any(n in k for _, k in known)}, request.ignore_unknown
            )
            out = self._merge(self.server.config.reset_user(local, True) if local else [], [])
            for client, items in known:
                mine = [n for n in names if n in items]
                if mine:
                    status = client.config.reset(Filter(names=mine, ignore_unknown=True), timeout=self._timeout)
                    out.update({i.name: i for i in status.items})
            return ConfigStatus(items=list(out.values()))

    # --- helpers ---
    @property
    def _timeout(self) -> float:
        from grpc_helper.config.static import RpcStaticConfig

        return RpcStaticConfig.CLIENT_TIMEOUT.float_val

    def _remotes(self) -> list:
        return self.server.proxies.config_clients()

    @staticmethod
    def _merge(local: list[ConfigItem], remote_statuses: list[ConfigStatus]) -> dict[str, ConfigItem]:
        merged = {i.name: i for i in local}
        for status in remote_statuses:
            for item in status.items:
                seen = merged.get(item.name)
                if seen is not None and seen.value != item.value:
                    raise RpcException(
                        f"Config item {item.name} has different values across servers: {seen.value!r} != {item.value!r}",
                        ResultCode.ERROR_ITEM_CONFLICT,
                    )
                merged.setdefault(item.name, item)
        return merged

    @staticmethod
    def _check_unknown(names: Iterable[str], found: dict, ignore_unknown: bool) -> None:
        unknown = [n for n in names if n and n not in found]
        if unknown and not ignore_unknown:
            raise RpcException(f"Unknown config item(s): {', '.join(unknown)}", ResultCode.ERROR_ITEM_UNKNOWN)


def _validate_remote(item: ConfigItem, value: str) -> None:
    """Check a value against a remote item's declared validator (custom ones are checked by their server)."""
    from grpc_helper.api import ConfigValidator

    if item.validator == ConfigValidator.CONFIG_VALID_CUSTOM:
        if value == "" and not item.can_be_empty:
            raise RpcException(f"Empty value not allowed for {item.name}", ResultCode.ERROR_PARAM_INVALID)
        return
    probe = Config(item.name, default_value=item.default_value, can_be_empty=item.can_be_empty, validator=item.validator)
    try:
        probe.validate(item.name, value)
    except RpcException as exc:
        raise RpcException(str(exc), ResultCode.ERROR_PARAM_INVALID) from exc


class LoggerServiceManager(LoggerServiceServicer, _DefaultManager):
    """`log`: levels and enabled state of loggers, persisted in the workspace."""

    def get(self, request: Filter) -> LoggerStatus:
        return LoggerStatus(items=self.server.loggers.get(request.names))

    def set(self, request: LoggerUpdate) -> LoggerStatus:
        return LoggerStatus(items=self.server.loggers.set(request.items))

    def reset(self, request: Filter) -> LoggerStatus:
        return LoggerStatus(items=self.server.loggers.reset(request.names))
