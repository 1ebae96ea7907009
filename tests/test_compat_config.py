"""Config service and workspace config.json as grpc-helper 2.x behaves (issue 9, items 4 to 6).

Each service behaviour is checked on one server holding the items ("local") and through a main server
merging the items of a registered proxied backend ("merged").
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from logging.handlers import TimedRotatingFileHandler
from pathlib import Path

import pytest

from grpc_helper import Config, Folders, RpcClient, RpcException, RpcStaticConfig
from grpc_helper.api import ConfigItemUpdate, ConfigUpdate, ConfigValidator, Filter, ProxyRegisterRequest, ResultCode
from grpc_helper.testing import rc_of

from helpers import Servers, echo_descriptor

V = ConfigValidator
MISSING, INVALID, UNKNOWN = (
    ResultCode.ERROR_PARAM_MISSING,
    ResultCode.ERROR_PARAM_INVALID,
    ResultCode.ERROR_ITEM_UNKNOWN,
)


def only_ab(name: str, value: str) -> None:
    if value not in ("a", "b"):
        raise RpcException(f"{name}: {value!r} is neither a nor b", ResultCode.ERROR_PARAM_INVALID)


@dataclass
class Setup:
    """The client to call, and the items it reaches (held by the server itself or by its backend)."""

    client: RpcClient
    size: Config
    label: Config
    choice: Config


@pytest.fixture(params=["local", "merged"])
def setup(request: pytest.FixtureRequest, servers: Servers) -> Setup:
    # Fresh items for each test: values are process-wide
    size = Config("compat-size", "A size", "10", validator=V.CONFIG_VALID_POS_INT)
    label = Config("compat-label", "A label", "hello")
    choice = Config("compat-choice", "a or b", "a", validator=V.CONFIG_VALID_CUSTOM, custom_validator=only_ab)
    items = [size, label, choice]
    if request.param == "local":
        main = servers(0, [], user_items=items)
    else:
        main = servers(0, [echo_descriptor(is_proxy=True)])
        backend = servers(0, [echo_descriptor()], user_items=items)
        main.client.srv.proxy_register(
            ProxyRegisterRequest(names=["echo"], version="b-1", host="127.0.0.1", port=backend.port)
        )
    return Setup(main.client, size, label, choice)


def update(*pairs: tuple[str, str], ignore_unknown: bool = False) -> ConfigUpdate:
    return ConfigUpdate(items=[ConfigItemUpdate(name=n, value=v) for n, v in pairs], ignore_unknown=ignore_unknown)


class TestEmptyNames:
    """Item 4: an empty list (set/reset) or an empty name is ERROR_PARAM_MISSING, before unknown names."""

    def test_get(self, setup: Setup) -> None:
        get = setup.client.config.get
        assert {i.name for i in get(Filter()).items} == {"compat-size", "compat-label", "compat-choice"}
        assert rc_of(lambda: get(Filter(names=[""]))) == MISSING
        assert rc_of(lambda: get(Filter(names=["compat-size", ""]))) == MISSING
        assert rc_of(lambda: get(Filter(names=["nope", ""]))) == MISSING
        assert rc_of(lambda: get(Filter(names=["nope", ""], ignore_unknown=True))) == MISSING

    def test_set(self, setup: Setup) -> None:
        set_ = setup.client.config.set
        assert rc_of(lambda: set_(update())) == MISSING
        assert rc_of(lambda: set_(update(ignore_unknown=True))) == MISSING
        assert rc_of(lambda: set_(update(("", "1")))) == MISSING
        assert rc_of(lambda: set_(update(("nope", "1"), ("", "1")))) == MISSING
        assert (
            rc_of(lambda: set_(update(("compat-size", "5"), ("nope", "1"), ("", "1"), ignore_unknown=True))) == MISSING
        )
        assert setup.size.str_val == "10"  # nothing applied

    def test_reset(self, setup: Setup) -> None:
        config = setup.client.config
        config.set(update(("compat-size", "5")))
        assert rc_of(lambda: config.reset(Filter())) == MISSING
        assert rc_of(lambda: config.reset(Filter(ignore_unknown=True))) == MISSING
        assert rc_of(lambda: config.reset(Filter(names=[""]))) == MISSING
        assert rc_of(lambda: config.reset(Filter(names=[""], ignore_unknown=True))) == MISSING
        assert rc_of(lambda: config.reset(Filter(names=["nope", ""]))) == MISSING
        assert rc_of(lambda: config.reset(Filter(names=["compat-size", ""], ignore_unknown=True))) == MISSING
        assert setup.size.str_val == "5"  # nothing reset
        assert rc_of(lambda: config.reset(Filter(names=["nope"]))) == UNKNOWN
        assert [(i.name, i.value) for i in config.reset(Filter(names=["compat-size"])).items] == [("compat-size", "10")]


class TestValueCodes:
    """Item 5: empty where not allowed is ERROR_PARAM_MISSING, rejected is ERROR_PARAM_INVALID, wherever the item is."""

    @pytest.mark.parametrize(
        ("name", "value", "rc"),
        [
            ("compat-size", "", MISSING),
            ("compat-label", "", MISSING),
            ("compat-choice", "", MISSING),
            ("compat-size", "0", INVALID),
            ("compat-size", "x", INVALID),
            ("compat-choice", "c", INVALID),
        ],
    )
    def test_set_codes(self, setup: Setup, name: str, value: str, rc: int) -> None:
        assert rc_of(lambda: setup.client.config.set(update((name, value)))) == rc
        assert (setup.size.str_val, setup.label.str_val, setup.choice.str_val) == ("10", "hello", "a")

    def test_valid_values_apply(self, setup: Setup) -> None:
        out = setup.client.config.set(update(("compat-size", "3"), ("compat-choice", "b")))
        assert {(i.name, i.value) for i in out.items} == {("compat-size", "3"), ("compat-choice", "b")}
        assert (setup.size.str_val, setup.choice.str_val) == ("3", "b")


def test_python_api_codes() -> None:
    """`Config.validate`/`update` decide the same codes (API-NOTES)."""
    item = Config("py-size", default_value="1", validator=V.CONFIG_VALID_POS_INT)
    assert rc_of(lambda: item.update("")) == MISSING
    assert rc_of(lambda: item.validate("py-size", "-1")) == INVALID


# --- item 6: the workspace config.json at start ---


def write_json(path: Path, data: object) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data))


def workspace_handlers(folders: Folders) -> list[TimedRotatingFileHandler]:
    """The rolling file handlers a server opened in this workspace."""
    assert folders.workspace
    loggers = [logging.getLogger(), *logging.root.manager.loggerDict.values()]
    return [
        h
        for lg in loggers
        if isinstance(lg, logging.Logger)
        for h in lg.handlers
        if isinstance(h, TimedRotatingFileHandler) and h.baseFilename.startswith(str(folders.workspace))
    ]


def warnings_of(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]


class TestPersistedAtStart:
    def test_static_items_take_persisted_values(
        self, servers: Servers, folders: Folders, caplog: pytest.LogCaptureFixture
    ) -> None:
        assert folders.workspace
        assert folders.user
        write_json(folders.user / "config.json", {"rpc-logs-backup": "5"})
        write_json(
            folders.workspace / "config.json",
            {"rpc-logs-backup": "3", "rpc-logs-interval-unit": "s", "rpc-logs-interval": "0", "rpc-logs-folder": ""},
        )
        caplog.set_level(logging.WARNING)
        servers(0, [], folders=folders)
        backup, unit, interval = (
            RpcStaticConfig.LOGS_BACKUP,
            RpcStaticConfig.LOGS_ROLLOVER_INTERVAL_UNIT,
            RpcStaticConfig.LOGS_ROLLOVER_INTERVAL,
        )
        assert (backup.str_val, backup.default_value) == ("3", "5")  # the default still comes from the layers
        assert (unit.str_val, unit.default_value) == ("s", "H")
        assert (interval.str_val, interval.default_value) == ("1", "1")
        assert RpcStaticConfig.LOGS_FOLDER.str_val == "logs"
        warnings = warnings_of(caplog)
        for value, name in [("0", "rpc-logs-interval"), ("", "rpc-logs-folder")]:
            expected = f"Can't load invalid persisted value '{value}' for config item {name}; use default one"
            assert expected in warnings, warnings
        # The log files were opened with the persisted values
        handlers = workspace_handlers(folders)
        assert handlers
        assert {(h.when, h.interval, h.backupCount) for h in handlers} == {("S", 1, 3)}

    def test_invalid_persisted_user_value(
        self, servers: Servers, folders: Folders, caplog: pytest.LogCaptureFixture
    ) -> None:
        assert folders.workspace
        size = Config("compat-size", default_value="10", validator=V.CONFIG_VALID_POS_INT)
        write_json(folders.workspace / "config.json", {"compat-size": "-3"})
        caplog.set_level(logging.WARNING)
        srv = servers(0, [], folders=folders, user_items=[size])
        assert size.str_val == "10"
        assert srv.client.config.get(Filter(names=["compat-size"])).items[0].value == "10"
        expected = "Can't load invalid persisted value '-3' for config item compat-size; use default one"
        assert expected in warnings_of(caplog)

    def test_file_keeps_static_and_unknown_entries(self, servers: Servers, folders: Folders) -> None:
        assert folders.workspace
        path = folders.workspace / "config.json"
        kept = {"rpc-logs-backup": "3", "rpc-logs-interval": "0", "other-generation-item": "x"}
        write_json(path, {**kept, "compat-label": "old"})
        label = Config("compat-label", default_value="hello")
        size = Config("compat-size", default_value="10", validator=V.CONFIG_VALID_POS_INT)
        srv = servers(0, [], folders=folders, user_items=[label, size])
        assert label.str_val == "old"
        config = srv.client.config
        config.set(update(("compat-size", "4")))
        assert json.loads(path.read_text()) == {**kept, "compat-label": "old", "compat-size": "4"}
        config.reset(Filter(names=["compat-label"]))
        assert json.loads(path.read_text()) == {**kept, "compat-size": "4"}
        # Static items are not settable over the service, and the file is left alone
        assert rc_of(lambda: config.set(update(("rpc-logs-backup", "7")))) == UNKNOWN
        assert json.loads(path.read_text()) == {**kept, "compat-size": "4"}
        assert RpcStaticConfig.LOGS_BACKUP.str_val == "3"
