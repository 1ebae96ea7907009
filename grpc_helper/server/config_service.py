"""Manager of the default `config` service, merging the items of registered proxied servers."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager

import grpc

from grpc_helper.api import (
    ConfigApiVersion,
    ConfigItem,
    ConfigItemUpdate,
    ConfigStatus,
    ConfigUpdate,
    Filter,
    ResultCode,
)
from grpc_helper.api.config_pb2_grpc import ConfigServiceServicer, ConfigServiceStub
from grpc_helper.auth import caller_metadata
from grpc_helper.client import RpcClient
from grpc_helper.config.items import builtin_validator, check_value
from grpc_helper.config.manager import ConfigManager, check_names
from grpc_helper.config.static import RpcStaticConfig
from grpc_helper.errors import RpcException, RpcTransportError, rpc_error_to_exception
from grpc_helper.limits import check_request, quote
from grpc_helper.manager import RpcManager
from grpc_helper.metadata import KEY_API_VERSION
from grpc_helper.proxy.registry import ProxyRegistry

# The longest a merged config call waits for one proxied server (seconds; `rpc-client-timeout` if
# shorter): one unreachable server must not hold the main server's config service
BACKEND_CONFIG_TIMEOUT = 5.0


class ConfigServiceManager(ConfigServiceServicer, RpcManager):
    """`config`: user config items of this server, merged with those of its registered proxied servers.

    `set`/`reset` apply to every server that knows an item, after validating every update everywhere
    (remote items are checked against their declared validator); `get` fails with ERROR_ITEM_CONFLICT
    where servers disagree on a value. Names are checked first, the same way with or without proxied servers
    (`check_names`), and values the same way for local and remote items (`check_value`).

    Each call to a proxied server is bounded by `BACKEND_CONFIG_TIMEOUT` (one attempt, never resent), and made
    for the caller: the server applies its own policy to it, as to the calls main forwards (see `_as_caller`).
    A server without a config service (UNIMPLEMENTED: not a grpc-helper server) has no items, and is left
    out of every call (one INFO line names it).
    `get` answers with what the reachable servers have (a WARNING names each unreachable one);
    `set`/`reset` fail with ERROR_RPC naming an unreachable server, before changing anything if it
    was unreachable while items were collected and validated.
    """

    def __init__(self, config: ConfigManager, proxies: ProxyRegistry) -> None:
        super().__init__()
        self._config = config
        self._proxies = proxies
        self._no_config: set[tuple[str, int]] = set()  # proxied servers answering UNIMPLEMENTED, told once

    def get(self, request: Filter) -> ConfigStatus:
        check_request(request)
        names = check_names(request.names, "get", all_if_empty=True)
        local = self._config.get_user(names, ignore_unknown=True)
        with self._proxies.config_clients() as clients:
            remote = self._remote_items(clients, names, skip_unreachable=True)
        merged = _merge([local, *(items.values() for _, items in remote)])
        _check_unknown(self._config, names, merged.keys(), ignore_unknown=request.ignore_unknown)
        return ConfigStatus(items=list(merged.values()))

    def set(self, request: ConfigUpdate) -> ConfigStatus:
        check_request(request)
        config = self._config
        updates = [(u.name, u.value) for u in request.items]
        names = check_names((name for name, _ in updates), "set")
        if not self._proxies.has_targets():
            return ConfigStatus(items=config.set_user(updates, ignore_unknown=request.ignore_unknown))
        with self.lock, self._proxies.config_clients() as clients:
            remote = self._remote_items(clients, names)
            _check_unknown(config, names, _known(config.user_items, remote), ignore_unknown=request.ignore_unknown)
            # Validate everything, everywhere, before anything changes
            local = [(item.name, value) for item, value in config.validate_updates(updates, ignore_unknown=True)]
            for name, value in updates:
                for _, items in remote:
                    if name in items:
                        _validate_remote(items[name], value)
            before = _values(config.get_user([name for name, _ in local])) if local else {}
            out = {i.name: i for i in config.set_user(local)} if local else {}
            changed: list[tuple[RpcClient, dict[str, str]]] = []  # the servers changed, with their values before
            try:
                for client, items in remote:
                    mine = [ConfigItemUpdate(name=n, value=v) for n, v in updates if n in items]
                    if mine:
                        with _naming(client):
                            status = _as_caller(client, "set", ConfigUpdate(items=mine, ignore_unknown=True))
                        changed.append((client, {u.name: items[u.name].value for u in mine}))
                        out.update({i.name: i for i in status.items})
            except RpcException:
                self._undo(before, changed)
                raise
            return ConfigStatus(items=list(out.values()))

    def reset(self, request: Filter) -> ConfigStatus:
        check_request(request)
        config = self._config
        names = check_names(request.names, "reset")
        if not self._proxies.has_targets():
            return ConfigStatus(items=config.reset_user(names, ignore_unknown=request.ignore_unknown))
        with self.lock, self._proxies.config_clients() as clients:
            remote = self._remote_items(clients, names)
            _check_unknown(config, names, _known(config.user_items, remote), ignore_unknown=request.ignore_unknown)
            local = [n for n in names if n in config.user_items]
            before = _values(config.get_user(local)) if local else {}
            out = {i.name: i for i in config.reset_user(local)} if local else {}
            changed: list[tuple[RpcClient, dict[str, str]]] = []
            try:
                for client, items in remote:
                    mine = [n for n in names if n in items]
                    if mine:
                        with _naming(client):
                            status = _as_caller(client, "reset", Filter(names=mine, ignore_unknown=True))
                        changed.append((client, {n: items[n].value for n in mine}))
                        out.update({i.name: i for i in status.items})
            except RpcException:
                self._undo(before, changed)
                raise
            return ConfigStatus(items=list(out.values()))

    def _undo(self, before: dict[str, str], changed: list[tuple[RpcClient, dict[str, str]]]) -> None:
        """A merged change refused by a server (its policy, an error): put back the values it had changed already,
        this server's and those of the servers that took it (as the same caller, who could change them), so that
        it changes all of them or none."""
        if before:
            self._config.set_user(list(before.items()))
        for client, values in changed:
            items = [ConfigItemUpdate(name=n, value=v) for n, v in values.items()]
            undo = ConfigUpdate(items=items, ignore_unknown=True)
            try:
                with _naming(client):
                    _as_caller(client, "set", undo)
            except RpcException as exc:  # unreachable since: say so, the refusal is what the caller gets
                self.logger.error("A refused config change could not be undone: %s", exc)

    def _remote_items(
        self, clients: list[RpcClient], names: Iterable[str], *, skip_unreachable: bool = False
    ) -> list[tuple[RpcClient, dict[str, ConfigItem]]]:
        """Each proxied server's client, with its items among `names` (all if empty). An unreachable
        server raises, or with `skip_unreachable` is left out (logged)."""
        flt = Filter(names=list(names), ignore_unknown=True)
        out = []
        for client in clients:
            try:
                with _naming(client):
                    out.append((client, {i.name: i for i in _as_caller(client, "get", flt).items}))
            except RpcTransportError as exc:
                if exc.status == grpc.StatusCode.UNIMPLEMENTED:  # no config service: a foreign server
                    self._without_config(client)
                    continue
                if not skip_unreachable:
                    raise
                self.logger.warning("%s: its items are left out", exc)
        return out

    def _without_config(self, client: RpcClient) -> None:
        """A proxied server without a config service (not a grpc-helper one) has no items: said once."""
        address = (client.host, client.port)
        if address not in self._no_config:
            self._no_config.add(address)
            self.logger.info("Proxied server %s:%s has no config service: left out of config calls", *address)


@contextmanager
def _naming(client: RpcClient) -> Iterator[None]:
    """Say which proxied server failed: the merge spans several servers."""
    try:
        yield
    except RpcTransportError as exc:  # keeps its status: UNIMPLEMENTED tells a server without config service
        where = f"Config service of proxied server {client.host}:{client.port}: {exc}"
        raise RpcTransportError(where, exc.status, exc.details) from exc
    except RpcException as exc:
        raise RpcException(f"Config service of proxied server {client.host}:{client.port}: {exc}", exc.rc) from exc


def _values(items: Iterable[ConfigItem]) -> dict[str, str]:
    return {i.name: i.value for i in items}


def _timeout() -> float:
    return min(RpcStaticConfig.CLIENT_TIMEOUT.float_val, BACKEND_CONFIG_TIMEOUT)


def _as_caller(client: RpcClient, method: str, request: Filter | ConfigUpdate) -> ConfigStatus:
    """`client.config.<method>(request)` (one attempt, bounded by `_timeout()`), made for the caller being served:
    with main's credentials (the client's) and the caller's `rpc-caller` (`auth.caller_metadata`), as a call main
    forwards. The proxied server then applies its own policy to that caller, never main's rights there: an admin
    of main who is a user on a backend can't set that backend's items through main. Main's own calls (its
    auto-client's) carry none: they are main's."""
    version = ((KEY_API_VERSION, str(int(ConfigApiVersion.CONFIG_API_CURRENT))),)
    metadata = client.metadata.as_metadata() + client.security.metadata() + version + caller_metadata()
    call = getattr(ConfigServiceStub(client.channel), method)
    try:
        status: ConfigStatus = call(request, timeout=_timeout(), metadata=metadata)
    except grpc.RpcError as exc:
        raise rpc_error_to_exception(exc, f"/ConfigService/{method}") from exc
    r = status.r
    if r.code != ResultCode.OK and r.code < ResultCode.ERROR_CUSTOM:  # as RpcClient checks a Result
        raise RpcException(r.msg, r.code)
    return status


def _known(local: Iterable[str], remote: list[tuple[RpcClient, dict[str, ConfigItem]]]) -> set[str]:
    return set(local).union(*(items.keys() for _, items in remote))


def _merge(sources: Iterable[Iterable[ConfigItem]]) -> dict[str, ConfigItem]:
    """Items by name; the same item with different values on two servers is a conflict."""
    merged: dict[str, ConfigItem] = {}
    for items in sources:
        for item in items:
            seen = merged.setdefault(item.name, item)
            if seen.value != item.value:
                raise RpcException(
                    f"Config item {item.name} differs across servers: {quote(seen.value)} != {quote(item.value)}",
                    ResultCode.ERROR_ITEM_CONFLICT,
                )
    return merged


def _check_unknown(config: ConfigManager, names: Iterable[str], found: Iterable[str], *, ignore_unknown: bool) -> None:
    known = set(found)
    unknown = [n for n in names if n not in known]
    if unknown and not ignore_unknown:
        raise config.unknown(unknown)


def _validate_remote(item: ConfigItem, value: str) -> None:
    """Check a value against a remote item's declaration, with the codes a local item gives.

    A custom validator is only known to its server, which checks the value when it is set there.
    """
    check_value(item.name, value, builtin_validator(item.validator), can_be_empty=item.can_be_empty)
