"""Rolling log files, and the logger configuration behind the logger service."""

from __future__ import annotations

import contextlib
import io
import logging
import logging.handlers
import os
import re
import sys
import threading
from collections.abc import Iterable
from pathlib import Path

from grpc_helper.api import LoggerConfig, LoggerLevel, ResultCode
from grpc_helper.config.static import RpcStaticConfig
from grpc_helper.errors import RpcException
from grpc_helper.folders import Folders
from grpc_helper.limits import quote
from grpc_helper.persist import read_json_object, write_json

LOGGERS_FILE = "loggers.json"
ROOT_LOG = "root"  # the complete log: <logs>/root/root.log, like any logger named "root"
LOG_FORMAT = "%(asctime)s.%(msecs)03d %(levelname)-7s [%(threadName)s] %(name)s: %(message)s"
DATE_FORMAT = "%Y-%m-%d %H:%M:%S"
_log = logging.getLogger("grpc_helper.logs")
# What `log` accepts as a logger name: Python's dotted names, parts of [A-Za-z0-9_-] ("" and "root": the root logger)
LOGGER_NAME_RE = re.compile(r"[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*")


def level_name(level: int) -> str:
    """LVL_INFO -> "INFO" (LVL_UNKNOWN -> "UNKNOWN", how a cleared level is persisted)."""
    return LoggerLevel.Name(level).removeprefix("LVL_")


def _level_from_name(name: str) -> int | None:
    """Level name to value: "INFO" -> LVL_INFO, "UNKNOWN" -> LVL_UNKNOWN; None for a name outside `LoggerLevel`."""
    try:
        return LoggerLevel.Value("LVL_" + name.upper())
    except ValueError:
        return None


def _is_root(name: str) -> bool:
    # logging.getLogger("") and logging.getLogger("root") are both the root logger
    return name in ("", logging.root.name)


def _key(name: str) -> str:
    """The loggers.json key of a logger: the original persisted the root logger under ""."""
    return "" if _is_root(name) else name


def _existing_logger(name: str) -> logging.Logger | None:
    """The logger of that name if it exists, without creating it (getLogger would)."""
    if _is_root(name):
        return logging.root
    found = logging.root.manager.loggerDict.get(name)
    return found if isinstance(found, logging.Logger) else None  # a PlaceHolder is not a logger yet


def default_console() -> None:
    """Log INFO and above on stdout, when the program configured no logging (the root logger has no handler).

    What users expect of a server program written from the documented example, which configures
    nothing: without it, Python's defaults show warnings only, and no INFO record reaches the rolling
    files. A program's own configuration (`logging.basicConfig`, `dictConfig`, a handler on the root
    logger, made before the server starts) is left alone, and so is a root level it set.
    """
    root = logging.getLogger()
    if root.handlers:
        return
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(logging.Formatter(LOG_FORMAT, DATE_FORMAT))
    root.addHandler(handler)
    if root.level == logging.WARNING:  # Python's default, not the program's choice
        root.setLevel(logging.INFO)


def logs_folder(folders: Folders) -> Path | None:
    """`rpc-logs-folder`, absolute or relative to the workspace (None: no workspace, no files)."""
    folder = Path(RpcStaticConfig.LOGS_FOLDER.str_val).expanduser()
    if folder.is_absolute():
        return folder
    wks = folders.workspace
    return wks / folder if wks is not None else None


PRIVATE_FILE_MODE = 0o600  # log files and dumps: readable by the server's user only
PRIVATE_FOLDER_MODE = 0o700


def private_folder(folder: Path) -> None:
    """Create `folder` (and its parents) if needed, and make it `0700` (an existing one too, if it is ours:
    a folder of another user, e.g. a shared absolute `rpc-logs-folder`, is left as it is)."""
    folder.mkdir(mode=PRIVATE_FOLDER_MODE, parents=True, exist_ok=True)
    with contextlib.suppress(PermissionError):
        folder.chmod(PRIVATE_FOLDER_MODE)


def private_opener(path: str, flags: int) -> int:
    """`open(..., opener=private_opener)`: a file created `0600` (an existing one made so too)."""
    fd = os.open(path, flags, PRIVATE_FILE_MODE)
    os.fchmod(fd, PRIVATE_FILE_MODE)
    return fd


class _PrivateRotatingFileHandler(logging.handlers.TimedRotatingFileHandler):
    """A rolling log whose files (the current one and each new one at rollover) are `0600`."""

    def _open(self) -> io.TextIOWrapper:
        # Appending, as TimedRotatingFileHandler always does (its mode is "a")
        return open(self.baseFilename, "a", encoding=self.encoding, errors=self.errors, opener=private_opener)


class RollingLogs:
    """The file handlers of one server: a complete root log and one log per manager logger,
    each in `<logs>/<logger name>/<logger name>.log` (the layout of grpc-helper 2.x); files `0600`
    in `0700` folders."""

    def __init__(self, folders: Folders) -> None:
        self.folder = logs_folder(folders)
        self._handlers: dict[str, tuple[logging.Logger, logging.Handler]] = {}  # by logger name
        self._attach(logging.getLogger(), ROOT_LOG)

    def _attach(self, logger: logging.Logger, name: str) -> None:
        # Once per logger name: managers sharing a logger must not write each line twice
        if self.folder is None or name in self._handlers:
            return
        path = self.folder / name / f"{name}.log"
        private_folder(self.folder)
        private_folder(path.parent)
        handler = _PrivateRotatingFileHandler(
            path,
            when=RpcStaticConfig.LOGS_ROLLOVER_INTERVAL_UNIT.str_val.upper(),
            interval=RpcStaticConfig.LOGS_ROLLOVER_INTERVAL.int_val,
            backupCount=RpcStaticConfig.LOGS_BACKUP.int_val,
            encoding="utf-8",
            delay=True,
        )
        handler.setFormatter(logging.Formatter(LOG_FORMAT, DATE_FORMAT))
        logger.addHandler(handler)
        self._handlers[name] = (logger, handler)

    def add_manager(self, logger: logging.Logger) -> logging.Logger:
        """Give a manager's logger its rolling file (its records also reach the root log).

        No level is set: the logger inherits from root unless configured (loggers.json, `log.set`).
        """
        self._attach(logger, logger.name)
        return logger

    def close(self) -> None:
        """Remove and close every handler, so a later server in this process doesn't duplicate lines."""
        for logger, handler in self._handlers.values():
            logger.removeHandler(handler)
            handler.close()
        self._handlers.clear()


class LoggersConfig:
    """Levels and enabled state of named loggers: loaded from loggers.json files, changed over RPC.

    `LoggerLevel` values are the `logging` levels, LVL_UNKNOWN being NOTSET ("no own level, inherit").
    """

    def __init__(self, folders: Folders) -> None:
        self.folders = folders
        self._lock = threading.Lock()
        self._root_level = logging.root.level  # what `reset` gives back to the root logger
        for folder in (folders.system, folders.user):
            self._apply_file(folder / LOGGERS_FILE if folder else None)
        wks = folders.workspace
        self._persisted = self._apply_file(wks / LOGGERS_FILE if wks else None)  # key (see _key) -> file value

    @staticmethod
    def _apply_file(path: Path | None) -> dict[str, str | bool]:
        """Apply a loggers.json file; the entries applied, by key."""
        applied: dict[str, str | bool] = {}
        for name, value in read_json_object(path, (str, bool), "loggers").items():
            if isinstance(value, bool):
                logging.getLogger(name).disabled = not value
            else:
                level = _level_from_name(value)
                if level is None:
                    _log.warning("Ignoring unknown level %s for logger %s", value, name)
                    continue
                logger = logging.getLogger(name)
                logger.setLevel(level)  # "UNKNOWN" (NOTSET): no own level
                logger.disabled = False
            applied[_key(name)] = value
        return applied

    @staticmethod
    def describe(name: str) -> LoggerConfig:
        """The logger's real name, enabled state and own level (LVL_UNKNOWN: none, or not a `LoggerLevel`)."""
        logger = _existing_logger(name)
        if logger is None:  # never created: what getLogger would give, without creating it
            return LoggerConfig(name=name, enabled=True, level=LoggerLevel.LVL_UNKNOWN)
        level = logger.level if logger.level in LoggerLevel.values() else LoggerLevel.LVL_UNKNOWN
        # protoc's stubs type enum fields as the enum only, and level is an int (one of LoggerLevel's)
        return LoggerConfig(name=logger.name, enabled=not logger.disabled, level=level)  # type: ignore[arg-type]

    @staticmethod
    def _check_names(names: Iterable[str]) -> list[str]:
        """The logger names of a request: at least one, each a valid name (bounds: `check_request`)."""
        names = list(names)
        if not names:
            raise RpcException("No logger name given", ResultCode.ERROR_PARAM_MISSING)
        for name in names:
            if name and LOGGER_NAME_RE.fullmatch(name) is None:
                raise RpcException(
                    f"Invalid logger name: {quote(name)} (expected dot-separated parts of [A-Za-z0-9_-])",
                    ResultCode.ERROR_PARAM_INVALID,
                )
        return names

    def get(self, names: Iterable[str]) -> list[LoggerConfig]:
        return [self.describe(n) for n in self._check_names(names)]

    def set(self, items: Iterable[LoggerConfig]) -> list[LoggerConfig]:
        """Atomic: every item is checked before any logger changes. Persisted in the workspace."""
        items = list(items)
        if not items:
            raise RpcException("No logger configuration given", ResultCode.ERROR_PARAM_MISSING)
        self._check_names(item.name for item in items)
        for item in items:
            if item.level not in LoggerLevel.values():
                raise RpcException(
                    f"Invalid level {item.level} for logger {quote(item.name)}", ResultCode.ERROR_PARAM_INVALID
                )
        with self._lock:
            for item in items:
                logger = logging.getLogger(item.name)
                # Not setLevel: it clears the level cache of every logger of the process, which made
                # a set of n new loggers cost n^2; the cache is cleared once below instead
                logger.level = item.level  # LVL_UNKNOWN is NOTSET: the logger inherits again
                logger.disabled = not item.enabled
                self._persisted[_key(item.name)] = level_name(item.level) if item.enabled else False
            logging.root.manager._clear_cache()  # type: ignore[attr-defined]  # what setLevel does, once
            self._save()
        return [self.describe(item.name) for item in items]

    def reset(self, names: Iterable[str]) -> list[LoggerConfig]:
        """Non-root loggers: no own level, enabled; root: its level when the server was created.

        The workspace file is rewritten only when one of the names was persisted in it.
        """
        names = self._check_names(names)
        with self._lock:
            removed = False
            for name in names:
                logger = _existing_logger(name)  # a logger never created has nothing to reset
                if logger is not None:  # not setLevel, see `set`
                    logger.level = self._root_level if logger is logging.root else logging.NOTSET
                    logger.disabled = False
                removed |= self._persisted.pop(_key(name), None) is not None
            logging.root.manager._clear_cache()  # type: ignore[attr-defined]  # what setLevel does, once
            if removed:
                self._save()
        return [self.describe(n) for n in names]

    def _save(self) -> None:
        wks = self.folders.workspace
        if wks is not None:
            write_json(wks / LOGGERS_FILE, self._persisted)
