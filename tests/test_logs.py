"""Rolling logs and the logger service."""

from __future__ import annotations

import json
import logging
import logging.handlers
import subprocess
import sys
from pathlib import Path

import pytest

from grpc_helper import Folders, RpcException, RpcStaticConfig
from grpc_helper.api import Filter, LoggerConfig, LoggerLevel, LoggerUpdate, ResultCode
from grpc_helper.testing import rc_of
from grpc_helper_samples.api import EchoRequest, EchoResponse

from helpers import EchoManager, Servers, echo_descriptor


def flush_all() -> None:
    for logger in [logging.getLogger(), *[logging.getLogger(n) for n in logging.root.manager.loggerDict]]:
        for h in getattr(logger, "handlers", []):
            h.flush()


class Talker(EchoManager):
    def echo(self, request: EchoRequest) -> EchoResponse:
        self.logger.info("talking: %s", request.text)
        return EchoResponse()


class TestRollingLogs:
    @pytest.fixture(autouse=True)
    def info_root(self) -> None:
        # Manager loggers inherit root's level (restored by conftest's restore_loggers)
        logging.getLogger().setLevel(logging.INFO)

    def test_manager_and_root_files(self, servers: Servers, folders: Folders) -> None:
        srv = servers(0, [echo_descriptor(Talker())], folders=folders)
        srv.client.echo.echo(EchoRequest(text="first line"))
        flush_all()
        assert folders.workspace
        logs = folders.workspace / "logs"
        manager_log = (logs / "Talker" / "Talker.log").read_text()
        assert "talking: first line" in manager_log
        # records carry the thread and logger names
        assert "[rpc-worker" in manager_log
        assert " Talker: " in manager_log
        assert "talking: first line" in (logs / "root" / "root.log").read_text()

    def test_absolute_logs_folder(self, servers: Servers, folders: Folders, tmp_path: Path) -> None:
        target = tmp_path / "abs-logs"
        srv = servers(0, [echo_descriptor(Talker())], folders=folders, cli_config={"rpc-logs-folder": str(target)})
        srv.client.echo.echo(EchoRequest(text="abs"))
        flush_all()
        assert "talking: abs" in (target / "Talker" / "Talker.log").read_text()

    def test_rotation_settings_come_from_config(self, servers: Servers, folders: Folders) -> None:
        servers(
            0,
            [echo_descriptor(Talker())],
            folders=folders,
            cli_config={"rpc-logs-interval-unit": "m", "rpc-logs-interval": "5", "rpc-logs-backup": "3"},
        )
        handlers = [
            h for h in logging.getLogger("Talker").handlers if isinstance(h, logging.handlers.TimedRotatingFileHandler)
        ]
        assert len(handlers) == 1
        assert (handlers[0].when, handlers[0].interval, handlers[0].backupCount) == ("M", 5 * 60, 3)

    def test_files_rotate(self, servers: Servers, folders: Folders) -> None:
        servers(0, [echo_descriptor(Talker())], folders=folders, cli_config={"rpc-logs-interval-unit": "S"})
        handler = next(
            h for h in logging.getLogger("Talker").handlers if isinstance(h, logging.handlers.TimedRotatingFileHandler)
        )
        logging.getLogger("Talker").info("before rollover")
        handler.doRollover()  # the same rollover the time trigger performs
        logging.getLogger("Talker").info("after rollover")
        flush_all()
        assert folders.workspace
        files = sorted(p.name for p in (folders.workspace / "logs" / "Talker").iterdir())
        assert len(files) == 2
        assert "Talker.log" in files

    def test_handlers_removed_at_shutdown(self, servers: Servers, folders: Folders) -> None:
        before = len(logging.getLogger().handlers)
        srv = servers(0, [echo_descriptor(Talker())], folders=folders)
        assert len(logging.getLogger().handlers) == before + 1
        srv.shutdown()
        assert len(logging.getLogger().handlers) == before
        assert not logging.getLogger("Talker").handlers
        srv2 = servers(0, [echo_descriptor(Talker())], folders=folders)
        srv2.client.echo.echo(EchoRequest(text="once"))
        flush_all()
        assert folders.workspace
        assert (folders.workspace / "logs" / "Talker" / "Talker.log").read_text().count("talking: once") == 1

    def test_no_workspace_no_files(self, servers: Servers, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.chdir(tmp_path)
        srv = servers(0, [echo_descriptor(Talker())])
        srv.client.echo.echo(EchoRequest(text="x"))
        assert list(tmp_path.iterdir()) == []


class TestLoggerService:
    def test_get(self, servers: Servers) -> None:
        c = servers(0, []).client
        logging.getLogger("some.logger").setLevel(logging.WARNING)
        out = c.log.get(Filter(names=["some.logger", ""])).items
        assert out[0] == LoggerConfig(name="some.logger", enabled=True, level=LoggerLevel.LVL_WARNING)
        assert out[1].name == "root"
        assert out[1].level == LoggerLevel.Value(f"LVL_{logging.getLevelName(logging.root.level)}")
        assert rc_of(lambda: c.log.get(Filter())) == ResultCode.ERROR_PARAM_MISSING

    def test_set_persists_and_reloads(self, servers: Servers, folders: Folders) -> None:
        srv = servers(0, [], folders=folders)
        out = srv.client.log.set(
            LoggerUpdate(
                items=[
                    LoggerConfig(name="a.b", enabled=True, level=LoggerLevel.LVL_DEBUG),
                    LoggerConfig(name="c", enabled=False, level=LoggerLevel.LVL_ERROR),
                ]
            )
        ).items
        assert [(i.name, i.enabled, i.level) for i in out] == [("a.b", True, 10), ("c", False, 40)]
        assert logging.getLogger("a.b").level == logging.DEBUG
        assert logging.getLogger("c").disabled
        assert folders.workspace
        assert json.loads((folders.workspace / "loggers.json").read_text()) == {"a.b": "DEBUG", "c": False}
        srv.shutdown()
        logging.getLogger("a.b").setLevel(logging.NOTSET)
        logging.getLogger("c").disabled = False
        servers(0, [], folders=folders)
        assert logging.getLogger("a.b").level == logging.DEBUG
        assert logging.getLogger("c").disabled

    def test_set_errors_are_atomic(self, servers: Servers) -> None:
        c = servers(0, []).client
        assert rc_of(lambda: c.log.set(LoggerUpdate())) == ResultCode.ERROR_PARAM_MISSING
        logging.getLogger("x1").setLevel(logging.INFO)
        bad = LoggerUpdate(items=[LoggerConfig(name="x1", enabled=True, level=10), LoggerConfig(name="x2", level=15)])
        assert rc_of(lambda: c.log.set(bad)) == ResultCode.ERROR_PARAM_INVALID
        assert logging.getLogger("x1").level == logging.INFO

    def test_reset(self, servers: Servers, folders: Folders) -> None:
        assert folders.user
        (folders.user / "loggers.json").write_text(json.dumps({"r.x": "ERROR"}))
        srv = servers(0, [], folders=folders)
        assert logging.getLogger("r.x").level == logging.ERROR
        srv.client.log.set(LoggerUpdate(items=[LoggerConfig(name="r.x", enabled=False, level=LoggerLevel.LVL_DEBUG)]))
        out = srv.client.log.reset(Filter(names=["r.x"])).items
        # back to no own level (as in 2.x), not to the user file's level
        assert out[0] == LoggerConfig(name="r.x", enabled=True, level=LoggerLevel.LVL_UNKNOWN)
        assert folders.workspace
        assert json.loads((folders.workspace / "loggers.json").read_text()) == {}
        assert rc_of(lambda: srv.client.log.reset(Filter())) == ResultCode.ERROR_PARAM_MISSING

    def test_files_load_in_order(self, servers: Servers, folders: Folders) -> None:
        assert folders.system
        assert folders.user
        assert folders.workspace
        (folders.system / "loggers.json").write_text(json.dumps({"o.a": "DEBUG", "o.b": "DEBUG", "o.c": "DEBUG"}))
        (folders.user / "loggers.json").write_text(json.dumps({"o.b": "INFO", "o.c": "INFO"}))
        (folders.workspace / "loggers.json").write_text(json.dumps({"o.c": False}))
        servers(0, [], folders=folders)
        assert logging.getLogger("o.a").level == logging.DEBUG
        assert logging.getLogger("o.b").level == logging.INFO
        assert logging.getLogger("o.c").disabled
        assert logging.getLogger("o.c").level == logging.INFO

    def test_unknown_level_in_file_is_ignored(
        self, servers: Servers, folders: Folders, caplog: pytest.LogCaptureFixture
    ) -> None:
        assert folders.user
        (folders.user / "loggers.json").write_text(json.dumps({"u.a": "LOUD", "u.b": "WARNING"}))
        servers(0, [], folders=folders)
        assert logging.getLogger("u.b").level == logging.WARNING
        assert any("LOUD" in r.getMessage() and "u.a" in r.getMessage() for r in caplog.records)

    @pytest.mark.parametrize("content", ["{bad", "[]", '{"a": 3}'])
    def test_malformed_file_stops_the_server(self, servers: Servers, folders: Folders, content: str) -> None:
        assert folders.user
        (folders.user / "loggers.json").write_text(content)
        with pytest.raises(RpcException) as exc:
            servers(0, [], folders=folders)
        assert exc.value.rc == ResultCode.ERROR_MODEL_INVALID
        assert "loggers.json" in str(exc.value)


def test_logs_folder_item_is_static() -> None:
    assert RpcStaticConfig.LOGS_FOLDER.str_val == "logs"


# A program written from the README's example (RpcCliParser, RpcServer, wait_shutdown), configuring no logging;
# SETUP is replaced by the test. It calls itself once, then shuts down.
PROGRAM = """
import logging, sys, threading
import grpc_helper_samples
from grpc_helper import RpcCliParser, RpcClient, RpcManager, RpcServer, RpcServiceDescriptor
from grpc_helper_samples.api import EchoApiVersion, EchoRequest, EchoResponse
from grpc_helper_samples.api import echo_pb2_grpc as pb

class Shouter(pb.EchoServiceServicer, RpcManager):
    def echo(self, request: EchoRequest) -> EchoResponse:
        self.logger.info("shouting %s", request.text)
        return EchoResponse(text=request.text.upper())

SETUP
args = RpcCliParser("My server", "1.0.0").with_rpc_args(0).parse(exit_on_error=True)
descriptor = RpcServiceDescriptor(
    grpc_helper_samples, "shout", EchoApiVersion, Shouter(), pb.add_EchoServiceServicer_to_server, pb.EchoServiceStub
)
srv = RpcServer(args.port, [descriptor], args.folders, args.config)
client = RpcClient("localhost", srv.port, {"shout": (pb.EchoServiceStub, EchoApiVersion.ECHO_API_CURRENT)})
client.shout.echo(EchoRequest(text="hello"))
threading.Thread(target=srv.shutdown).start()
srv.wait_shutdown()
"""


def run_program(tmp_path: Path, setup: str = "") -> tuple[str, str]:
    """Run PROGRAM with its workspace in tmp_path; its stdout, and its root rolling log."""
    script = tmp_path / "program.py"
    script.write_text(PROGRAM.replace("SETUP", setup))
    cmd = [sys.executable, str(script), "-w", str(tmp_path / "wks"), "--system", str(tmp_path), "--user", str(tmp_path)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    root_log = tmp_path / "wks" / "logs" / "root" / "root.log"
    return done.stdout, root_log.read_text() if root_log.exists() else ""


class TestDefaultConsole:
    def test_unconfigured_program_logs_info(self, tmp_path: Path) -> None:
        """No logging configured: INFO and above on stdout, and in the rolling files."""
        stdout, root_log = run_program(tmp_path)
        assert " INFO    [" in stdout
        assert "Shouter: shouting hello" in stdout
        assert "Shouter: shouting hello" in root_log
        assert "shouting hello" in (tmp_path / "wks" / "logs" / "Shouter" / "Shouter.log").read_text()

    def test_own_config_is_kept(self, tmp_path: Path) -> None:
        """A program's own logging config wins: here, warnings only, on stderr."""
        stdout, root_log = run_program(tmp_path, "logging.basicConfig(level=logging.WARNING, stream=sys.stderr)")
        assert stdout == ""
        assert "shouting hello" not in root_log
