"""ConfigManager: layered defaults, static vs user items, persisted user values."""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Iterable, Mapping
from pathlib import Path

from grpc_helper.api import ConfigItem, ResultCode
from grpc_helper.config.items import CONFIG_NAME_RE, Config, ConfigItems, flatten_items
from grpc_helper.errors import RpcException
from grpc_helper.folders import Folders
from grpc_helper.limits import quote, quote_names
from grpc_helper.persist import read_json_object, write_json

CONFIG_FILE = "config.json"
_log = logging.getLogger("grpc_helper.config")


def env_name(item_name: str) -> str:
    """Environment variable of an item: `my-own-setting` -> `MY_OWN_SETTING`."""
    return item_name.upper().replace("-", "_")


def check_names(names: Iterable[str], what: str, *, all_if_empty: bool = False) -> list[str]:
    """The item names of a config `get`/`set`/`reset` request, checked as 2.x does.

    An empty name, or an empty list unless `all_if_empty` (`get`: all items), is ERROR_PARAM_MISSING; a name that no
    item could have (`CONFIG_NAME_RE`) is ERROR_PARAM_INVALID. Callers check
    this before unknown names, even with `ignore_unknown`; the merged (proxied) config service uses it too.
    """
    out = list(names)
    if not out and not all_if_empty:
        raise RpcException(f"No config item to {what}", ResultCode.ERROR_PARAM_MISSING)
    if any(not name for name in out):
        raise RpcException(f"Missing config item name to {what}", ResultCode.ERROR_PARAM_MISSING)
    for name in out:
        if CONFIG_NAME_RE.fullmatch(name) is None:
            raise RpcException(
                f"Invalid config item name to {what}: {quote(name)} (expected [a-z][a-z0-9-]*)",
                ResultCode.ERROR_PARAM_INVALID,
            )
    return out


def _index(items: list[Config], kind: str) -> dict[str, Config]:
    out: dict[str, Config] = {}
    for item in items:
        other = out.get(item.name)
        if other is not None and other is not item:
            raise RpcException(f"Config item {item.name} is declared twice as {kind}", ResultCode.ERROR_MODEL_INVALID)
        out[item.name] = item
    return out


class ConfigManager:
    """Holds a server's static and user items.

    Defaults are layered, each overriding the previous one: hard-coded value, system `config.json`,
    user `config.json`, environment, CLI (`-c`). Every item, static ones included, then takes its persisted
    workspace value as current value (as 2.x does), before the server builds anything that reads them.
    """

    def __init__(
        self,
        folders: Folders | None = None,
        cli_config: Mapping[str, str] | None = None,
        static_items: ConfigItems | None = None,
        user_items: ConfigItems | None = None,
    ) -> None:
        self.folders = folders or Folders()
        self.static_items = _index(flatten_items(static_items), "static")
        self.user_items = _index(flatten_items(user_items), "user")
        both = sorted(set(self.static_items) & set(self.user_items))
        if both:
            raise RpcException(
                f"Config items declared both static and user: {', '.join(both)}", ResultCode.ERROR_MODEL_INVALID
            )
        self._lock = threading.Lock()
        self._apply_defaults(dict(cli_config or {}))
        self._load_persisted()

    # --- start-up ---
    @property
    def all_items(self) -> dict[str, Config]:
        return {**self.static_items, **self.user_items}

    def _layers(self, cli_config: dict[str, str]) -> list[tuple[str, dict[str, str]]]:
        system = self.folders.system / CONFIG_FILE if self.folders.system else None
        user = self.folders.user / CONFIG_FILE if self.folders.user else None
        names = self.all_items
        env = {name: os.environ[env_name(name)] for name in names if env_name(name) in os.environ}
        unknown = sorted(set(cli_config) - set(names))
        if unknown:
            _log.warning("Ignoring unknown config items given on the command line: %s", ", ".join(unknown))
        return [
            (f"system config file {system}", read_json_object(system, (str,), "config")),
            (f"user config file {user}", read_json_object(user, (str,), "config")),
            ("environment", env),
            ("command line", cli_config),
        ]

    def _apply_defaults(self, cli_config: dict[str, str]) -> None:
        layers = self._layers(cli_config)
        for name, item in self.all_items.items():
            value, origin = item.hard_coded_default, "hard-coded default"
            for layer_name, layer in layers:
                if name in layer:
                    value, origin = layer[name], layer_name
            try:
                item.validate(name, value)
            except RpcException as exc:
                raise RpcException(
                    f"Invalid default value {value!r} for config item {name} (from {origin}): {exc}", exc.rc
                ) from exc
            item.set_default(value)

    def _persisted_path(self) -> Path | None:
        wks = self.folders.workspace
        return wks / CONFIG_FILE if wks is not None else None

    def _load_persisted(self) -> None:
        data = read_json_object(self._persisted_path(), (str,), "config")
        # Only user items are rewritten: entries for static items and for items this server doesn't know
        # (written by another server or the other generation) are written back as they were read
        self._foreign = {k: v for k, v in data.items() if k not in self.user_items}
        items = self.all_items
        for name, value in data.items():
            item = items.get(name)
            if item is None:
                continue
            try:
                item.update(value)  # the current value only: default_value stays the layers' one
            except RpcException:
                # 2.x's wording, which operators may grep for
                _log.warning("Can't load invalid persisted value '%s' for config item %s; use default one", value, name)

    # --- user items operations (used by the config service) ---
    def _persist(self) -> None:
        path = self._persisted_path()
        if path is None:
            return
        data = dict(self._foreign)
        data.update({n: i.str_val for n, i in self.user_items.items() if i.str_val != i.default_value})
        write_json(path, data)

    def get_user(self, names: Iterable[str], *, ignore_unknown: bool = False) -> list[ConfigItem]:
        """The named user items (all of them for no name)."""
        return [
            i.snapshot()
            for i in self._select(check_names(names, "get", all_if_empty=True), ignore_unknown=ignore_unknown)
        ]

    def _select(self, names: list[str], *, ignore_unknown: bool) -> list[Config]:
        """User items by (checked) names; all of them for no name."""
        if not names:
            return list(self.user_items.values())
        out = []
        for name in names:
            item = self.user_items.get(name)
            if item is not None:
                out.append(item)
            elif not ignore_unknown:
                raise self.unknown([name])
        return out

    def unknown(self, names: list[str]) -> RpcException:
        """The error for config service calls naming items it does not serve: ERROR_ITEM_UNKNOWN (2.x's code),
        saying which are static items, read at start only (2.x just said unknown)."""
        static = [n for n in names if n in self.static_items]
        msg = f"Unknown config item(s): {quote_names(names)}"
        if static:
            msg += f" ({quote_names(static)}: static, read at start only: set in a config file or with -c)"
        return RpcException(msg, ResultCode.ERROR_ITEM_UNKNOWN)

    def validate_updates(self, updates: Iterable[tuple[str, str]], *, ignore_unknown: bool) -> list[tuple[Config, str]]:
        """Check every update; returns (item, value) pairs to apply. Nothing is changed.

        Names first (empty, then unknown), then values, in the same order as the merged config service.
        """
        updates = list(updates)
        check_names((name for name, _ in updates), "set")
        known = [(self.user_items.get(name), name, value) for name, value in updates]
        unknown = [name for item, name, _ in known if item is None]
        if unknown and not ignore_unknown:
            raise self.unknown(unknown)
        checked = [(item, value) for item, _, value in known if item is not None]
        for item, value in checked:
            item.validate(item.name, value)
        return checked

    def set_user(self, updates: list[tuple[str, str]], *, ignore_unknown: bool = False) -> list[ConfigItem]:
        """Atomically validate and apply updates, then persist. Returns the updated items."""
        with self._lock:
            checked = self.validate_updates(updates, ignore_unknown=ignore_unknown)
            for item, value in checked:
                item.update(value)
            self._persist()
            return [item.snapshot() for item, _ in checked]

    def reset_user(self, names: Iterable[str], *, ignore_unknown: bool = False) -> list[ConfigItem]:
        """Atomically reset the named user items to their defaults, then persist. Returns the reset items."""
        names = check_names(names, "reset")
        with self._lock:
            items = self._select(names, ignore_unknown=ignore_unknown)
            for item in items:
                item.reset()
            self._persist()
            return [item.snapshot() for item in items]
