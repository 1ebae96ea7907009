"""Issue 9, items 7-10: the `log` service and `loggers.json` behave as in grpc-helper 2.x."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import pytest

from grpc_helper import Folders
from grpc_helper.api import Filter, LoggerConfig, LoggerLevel, LoggerUpdate

from helpers import Servers


def loggers_file(folders: Folders) -> Path:
    assert folders.workspace
    return folders.workspace / "loggers.json"


def persisted(folders: Folders) -> dict[str, str | bool]:
    data: dict[str, str | bool] = json.loads(loggers_file(folders).read_text())
    return data


def update(name: str, level: int, enabled: bool = True) -> LoggerUpdate:
    return LoggerUpdate(items=[LoggerConfig(name=name, enabled=enabled, level=level)])  # type: ignore[arg-type]


class TestGet:
    """Item 7: real names, "not disabled", and the logger's own level."""

    @pytest.mark.parametrize("asked", ["", "root"])
    def test_root_is_answered_as_root(self, servers: Servers, asked: str) -> None:
        c = servers(0, []).client
        logging.root.setLevel(logging.ERROR)
        assert c.log.get(Filter(names=[asked])).items == [
            LoggerConfig(name="root", enabled=True, level=LoggerLevel.LVL_ERROR)
        ]

    def test_own_level_not_the_inherited_one(self, servers: Servers) -> None:
        c = servers(0, []).client
        logging.getLogger("g7.parent").setLevel(logging.DEBUG)
        logging.getLogger("g7.parent.child").setLevel(logging.NOTSET)
        logging.getLogger("g7.odd").setLevel(15)  # not a LoggerLevel
        off = logging.getLogger("g7.off")
        off.setLevel(logging.WARNING)
        off.disabled = True
        out = c.log.get(Filter(names=["g7.parent", "g7.parent.child", "g7.odd", "g7.off"])).items
        assert out == [
            LoggerConfig(name="g7.parent", enabled=True, level=LoggerLevel.LVL_DEBUG),
            LoggerConfig(name="g7.parent.child", enabled=True, level=LoggerLevel.LVL_UNKNOWN),
            LoggerConfig(name="g7.odd", enabled=True, level=LoggerLevel.LVL_UNKNOWN),
            LoggerConfig(name="g7.off", enabled=False, level=LoggerLevel.LVL_WARNING),
        ]

    def test_get_creates_no_logger(self, servers: Servers) -> None:
        c = servers(0, []).client
        logging.getLogger("g7.holder.sub")  # makes "g7.holder" a PlaceHolder, not a logger
        out = c.log.get(Filter(names=["g7.never.seen", "g7.holder"])).items
        assert [(i.name, i.enabled, i.level) for i in out] == [
            ("g7.never.seen", True, LoggerLevel.LVL_UNKNOWN),
            ("g7.holder", True, LoggerLevel.LVL_UNKNOWN),
        ]
        assert "g7.never.seen" not in logging.root.manager.loggerDict
        assert not isinstance(logging.root.manager.loggerDict["g7.holder"], logging.Logger)


class TestSet:
    """Item 8: the given level becomes the own level; LVL_UNKNOWN clears it; persisted shapes."""

    def test_level_becomes_own_level(self, servers: Servers, folders: Folders) -> None:
        c = servers(0, [], folders=folders).client
        logging.getLogger("s8").setLevel(logging.ERROR)
        out = c.log.set(update("s8.a", LoggerLevel.LVL_DEBUG)).items
        assert out == [LoggerConfig(name="s8.a", enabled=True, level=LoggerLevel.LVL_DEBUG)]
        assert logging.getLogger("s8.a").level == logging.DEBUG
        assert persisted(folders) == {"s8.a": "DEBUG"}

    def test_unknown_clears_the_level(self, servers: Servers, folders: Folders) -> None:
        c = servers(0, [], folders=folders).client
        logging.getLogger("s8").setLevel(logging.ERROR)
        logging.getLogger("s8.b").setLevel(logging.DEBUG)
        out = c.log.set(update("s8.b", LoggerLevel.LVL_UNKNOWN)).items
        assert out == [LoggerConfig(name="s8.b", enabled=True, level=LoggerLevel.LVL_UNKNOWN)]
        child = logging.getLogger("s8.b")
        assert child.level == logging.NOTSET
        assert child.getEffectiveLevel() == logging.ERROR  # inherits again
        assert persisted(folders) == {"s8.b": "UNKNOWN"}

    def test_disabled_is_persisted_as_false(self, servers: Servers, folders: Folders) -> None:
        c = servers(0, [], folders=folders).client
        out = c.log.set(update("s8.c", LoggerLevel.LVL_WARNING, enabled=False)).items
        assert out == [LoggerConfig(name="s8.c", enabled=False, level=LoggerLevel.LVL_WARNING)]
        assert logging.getLogger("s8.c").disabled
        assert persisted(folders) == {"s8.c": False}

    def test_root_is_persisted_under_empty_key(self, servers: Servers, folders: Folders) -> None:
        c = servers(0, [], folders=folders).client
        out = c.log.set(update("root", LoggerLevel.LVL_WARNING)).items
        assert out == [LoggerConfig(name="root", enabled=True, level=LoggerLevel.LVL_WARNING)]
        assert persisted(folders) == {"": "WARNING"}
        out = c.log.set(update("", LoggerLevel.LVL_ERROR)).items
        assert out == [LoggerConfig(name="root", enabled=True, level=LoggerLevel.LVL_ERROR)]
        assert logging.root.level == logging.ERROR
        assert persisted(folders) == {"": "ERROR"}  # one entry for both spellings

    def test_unknown_in_file_clears_the_level_without_warning(
        self, servers: Servers, folders: Folders, caplog: pytest.LogCaptureFixture
    ) -> None:
        assert folders.user
        (folders.user / "loggers.json").write_text(json.dumps({"s8.d": "DEBUG"}))
        loggers_file(folders).write_text(json.dumps({"s8.d": "UNKNOWN"}))
        caplog.set_level(logging.WARNING)
        srv = servers(0, [], folders=folders)
        assert logging.getLogger("s8.d").level == logging.NOTSET
        assert not [r for r in caplog.records if r.levelno >= logging.WARNING and "s8.d" in r.getMessage()]
        # and a level cleared over RPC is cleared again after a restart
        srv.client.log.set(update("s8.e", LoggerLevel.LVL_UNKNOWN))
        srv.shutdown()
        logging.getLogger("s8.e").setLevel(logging.CRITICAL)
        servers(0, [], folders=folders)
        assert logging.getLogger("s8.e").level == logging.NOTSET


class TestReset:
    """Item 9: defaults are "no own level, enabled" (root: its level at server creation); file only if needed."""

    def test_non_root_gets_no_level_and_is_enabled(self, servers: Servers, folders: Folders) -> None:
        assert folders.user
        (folders.user / "loggers.json").write_text(json.dumps({"r9.a": "ERROR"}))
        srv = servers(0, [], folders=folders)
        srv.client.log.set(update("r9.a", LoggerLevel.LVL_DEBUG, enabled=False))
        assert persisted(folders) == {"r9.a": False}
        out = srv.client.log.reset(Filter(names=["r9.a"])).items
        assert out == [LoggerConfig(name="r9.a", enabled=True, level=LoggerLevel.LVL_UNKNOWN)]
        logger = logging.getLogger("r9.a")
        assert logger.level == logging.NOTSET
        assert not logger.disabled
        assert persisted(folders) == {}

    @pytest.mark.parametrize("asked", ["", "root"])
    def test_root_gets_its_level_at_server_creation(self, servers: Servers, folders: Folders, asked: str) -> None:
        logging.root.setLevel(logging.ERROR)
        loggers_file(folders).write_text(json.dumps({"": "DEBUG", "r9.keep": "INFO"}))
        srv = servers(0, [], folders=folders)
        assert logging.root.level == logging.DEBUG
        out = srv.client.log.reset(Filter(names=[asked])).items
        assert out == [LoggerConfig(name="root", enabled=True, level=LoggerLevel.LVL_ERROR)]
        assert logging.root.level == logging.ERROR
        assert persisted(folders) == {"r9.keep": "INFO"}

    def test_never_persisted_creates_no_file(self, servers: Servers, folders: Folders) -> None:
        srv = servers(0, [], folders=folders)
        logging.getLogger("r9.b").setLevel(logging.ERROR)
        out = srv.client.log.reset(Filter(names=["r9.b", "root"])).items
        assert [i.name for i in out] == ["r9.b", "root"]
        assert logging.getLogger("r9.b").level == logging.NOTSET
        assert not loggers_file(folders).exists()

    def test_never_persisted_leaves_the_file_untouched(self, servers: Servers, folders: Folders) -> None:
        path = loggers_file(folders)
        path.write_text('{"r9.c": "INFO"}')
        os.utime(path, (1_000_000_000, 1_000_000_000))
        srv = servers(0, [], folders=folders)
        srv.client.log.reset(Filter(names=["r9.d", ""]))
        assert path.read_text() == '{"r9.c": "INFO"}'
        assert path.stat().st_mtime == 1_000_000_000


def test_unknown_level_in_file_warns_and_is_skipped(
    servers: Servers, folders: Folders, caplog: pytest.LogCaptureFixture
) -> None:
    """Item 10: the exact warning, and the rest of the file still applies."""
    assert folders.user
    (folders.user / "loggers.json").write_text(json.dumps({"w10.a": "LOUD", "w10.b": "WARNING"}))
    caplog.set_level(logging.WARNING)
    servers(0, [], folders=folders)
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING and "w10" in r.getMessage()]
    assert [r.getMessage() for r in warnings] == ["Ignoring unknown level LOUD for logger w10.a"]
    assert logging.getLogger("w10.b").level == logging.WARNING
    assert "w10.a" not in logging.root.manager.loggerDict  # skipped entirely
