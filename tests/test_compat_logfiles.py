"""Issue 9, items 11-15: manager logger names, rolling files, call traces and the debug dump's pending calls."""

from __future__ import annotations

import json
import logging
import logging.handlers
import re
import threading
import time
from pathlib import Path

import grpc
import pytest

import grpc_helper_samples
from grpc_helper import Folders, RpcClient, RpcManager, RpcMetadata, RpcServer, RpcServiceDescriptor
from grpc_helper.api import Event, EventApiVersion, EventFilter, EventInterrupt, EventProperty, Filter, LoggerLevel
from grpc_helper.api.events_pb2_grpc import EventServiceStub
from grpc_helper_samples.api import EchoApiVersion, EchoRequest, EchoResponse
from grpc_helper_samples.api.echo_pb2_grpc import EchoServiceStub
from grpc_helper_samples.api.notes_pb2 import Note, NotesApiVersion, NoteStatus
from grpc_helper_samples.api.notes_pb2_grpc import (
    NotesServiceServicer,
    NotesServiceStub,
    add_NotesServiceServicer_to_server,
)

from helpers import BlockingEcho, EchoManager, Servers, echo_descriptor

CURRENT = int(EchoApiVersion.ECHO_API_CURRENT)
# A caller with every identity field set, so the expected peer text does not depend on this machine
CALLER = RpcMetadata(client="tester", user="alice", host="box", ip="10.1.2.3")
PEER = f"[tester]alice@box(10.1.2.3) api:{CURRENT}"


class SpeakingEcho(EchoManager):
    """An echo manager that logs each text at INFO on its own logger."""

    def echo(self, request: EchoRequest) -> EchoResponse:
        self.logger.info("speaking: %s", request.text)
        return EchoResponse(text=request.text)


class _Other:
    class SpeakingEcho(NotesServiceServicer, RpcManager):
        """Another service's manager whose class bears the same name (two packages may both have a `Manager`)."""

        def put(self, request: Note) -> NoteStatus:
            self.logger.info("speaking: %s", request.text)
            return NoteStatus(note=request)


class IdentBlockingEcho(BlockingEcho):
    """BlockingEcho that remembers the thread serving `echo`."""

    def echo(self, request: EchoRequest) -> EchoResponse:
        self.ident = threading.get_ident()
        return super().echo(request)


def client_of(srv: RpcServer, name: str | RpcMetadata = CALLER, **kwargs: object) -> RpcClient:
    return RpcClient("127.0.0.1", srv.port, {"echo": (EchoServiceStub, CURRENT)}, name=name, timeout=30, **kwargs)


def rpc_lines(caplog: pytest.LogCaptureFixture, logger: str) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == logger and r.getMessage().startswith("[RPC] ")]


@pytest.fixture
def debug_root() -> None:
    """Root at DEBUG (restored by conftest's restore_loggers): every manager logger inherits it."""
    logging.getLogger().setLevel(logging.DEBUG)


def logs_of(folders: Folders) -> Path:
    assert folders.workspace is not None
    return folders.workspace / "logs"


class TestLoggerNames:
    def test_default_and_user_manager_loggers(self, servers: Servers) -> None:
        srv = servers(0, [echo_descriptor(SpeakingEcho())], with_events=True)
        names = {name: m.logger.name for name, m in srv.managers.items()}
        assert names == {
            "srv": "RpcServer",
            "config": "ConfigManager",
            "log": "LogsManager",
            "events": "EventsManager",
            "echo": "SpeakingEcho",  # named after its class, not after the service
        }
        assert srv.logger is srv.managers["srv"].logger

    def test_server_sets_no_level_on_manager_loggers(self, servers: Servers) -> None:
        names = ["RpcServer", "ConfigManager", "LogsManager", "EventsManager", "SpeakingEcho"]
        for name in names:
            logging.getLogger(name).setLevel(logging.NOTSET)  # whatever an earlier test left (restored after)
        logging.getLogger().setLevel(logging.ERROR)
        srv = servers(0, [echo_descriptor(SpeakingEcho())], with_events=True)
        client_of(srv).echo.echo(EchoRequest(text="x"))
        loggers = [m.logger for m in srv.managers.values()]
        assert [lg.name for lg in loggers] == names
        assert [lg.level for lg in loggers] == [logging.NOTSET] * len(names)
        # they inherit from root, and the log service reports no own level
        assert [lg.getEffectiveLevel() for lg in loggers] == [logging.ERROR] * len(names)
        items = srv.client.log.get(Filter(names=names)).items
        assert [i.level for i in items] == [LoggerLevel.LVL_UNKNOWN] * len(names)


class TestLogFiles:
    @pytest.mark.usefixtures("debug_root")
    def test_one_folder_per_logger_and_root_folder(self, servers: Servers, folders: Folders) -> None:
        srv = servers(0, [echo_descriptor(SpeakingEcho())], folders=folders, with_events=True)
        client_of(srv).echo.echo(EchoRequest(text="hello"))
        srv.client.srv.info(Filter())
        srv.client.config.get(Filter())
        srv.client.log.get(Filter(names=["root"]))
        srv.client.events.send(Event(name="ping"))
        logs = logs_of(folders)
        expected = {
            "RpcServer": "RpcServerService.info",
            "ConfigManager": "ConfigService.get",
            "LogsManager": "LoggerService.get",
            "EventsManager": "EventService.send",
            "SpeakingEcho": "speaking: hello",
        }
        for name, needle in expected.items():
            assert needle in (logs / name / f"{name}.log").read_text(), name
        complete = (logs / "root" / "root.log").read_text()
        assert all(needle in complete for needle in expected.values())
        assert not (logs / "root.log").exists()
        assert not (logs / "echo").exists()
        assert not (logs / "srv").exists()

    def test_shared_logger_name_writes_each_line_once(self, servers: Servers, folders: Folders) -> None:
        logging.getLogger().setLevel(logging.INFO)
        notes = RpcServiceDescriptor(
            grpc_helper_samples,
            "notes",
            NotesApiVersion,
            _Other.SpeakingEcho(),
            add_NotesServiceServicer_to_server,
            NotesServiceStub,
        )
        srv = servers(0, [echo_descriptor(SpeakingEcho()), notes], folders=folders)
        assert srv.managers["echo"].logger is srv.managers["notes"].logger
        handlers = logging.getLogger("SpeakingEcho").handlers
        assert len([h for h in handlers if isinstance(h, logging.handlers.TimedRotatingFileHandler)]) == 1
        c = RpcClient(
            "127.0.0.1",
            srv.port,
            {"echo": (EchoServiceStub, CURRENT), "notes": (NotesServiceStub, NotesApiVersion.NOTES_API_CURRENT)},
            timeout=30,
        )
        c.echo.echo(EchoRequest(text="via-one"))
        c.notes.put(Note(key="k", text="via-two"))
        c.close()
        text = (logs_of(folders) / "SpeakingEcho" / "SpeakingEcho.log").read_text()
        assert text.count("speaking: via-one") == 1
        assert text.count("speaking: via-two") == 1
        assert (logs_of(folders) / "root" / "root.log").read_text().count("speaking: via-one") == 1

    def test_loggers_json_addresses_manager_logger_names(self, servers: Servers, folders: Folders) -> None:
        assert folders.workspace is not None
        folders.workspace.mkdir(parents=True, exist_ok=True)
        (folders.workspace / "loggers.json").write_text(json.dumps({"SpeakingEcho": "DEBUG"}))
        srv = servers(0, [echo_descriptor(SpeakingEcho())], folders=folders)
        client_of(srv).echo.echo(EchoRequest(text="traced"))
        text = (logs_of(folders) / "SpeakingEcho" / "SpeakingEcho.log").read_text()
        assert f'[RPC] {PEER} >>> EchoService.echo (EchoRequest{{text: "traced" }})' in text


class TestCallTraces:
    def test_unary(self, servers: Servers, caplog: pytest.LogCaptureFixture) -> None:
        caplog.set_level(logging.DEBUG, logger="EchoManager")
        srv = servers(0, [echo_descriptor()])
        client_of(srv).echo.echo(EchoRequest(text="hi"))
        assert rpc_lines(caplog, "EchoManager") == [
            f'[RPC] {PEER} >>> EchoService.echo (EchoRequest{{text: "hi" }})',
            f'[RPC] {PEER} <<< EchoService.echo: EchoResponse{{text: "hi" }}',
        ]

    def test_server_stream_traces_each_message(self, servers: Servers, caplog: pytest.LogCaptureFixture) -> None:
        caplog.set_level(logging.DEBUG, logger="EchoManager")
        srv = servers(0, [echo_descriptor()])
        assert len(list(client_of(srv).echo.repeat(EchoRequest(text="r", count=3)))) == 3
        assert rpc_lines(caplog, "EchoManager") == [
            f'[RPC] {PEER} >>> EchoService.repeat (EchoRequest{{text: "r" count: 3 }})',
            f'[RPC] {PEER} <<< EchoService.repeat: EchoResponse{{text: "r" }}',
            f'[RPC] {PEER} <<< EchoService.repeat: EchoResponse{{text: "r" index: 1 }}',
            f'[RPC] {PEER} <<< EchoService.repeat: EchoResponse{{text: "r" index: 2 }}',
        ]

    def test_event_stream_traces_each_status(self, servers: Servers, caplog: pytest.LogCaptureFixture) -> None:
        # Deliveries go to gRPC already serialized (one status per listener, no message object): the trace
        # still shows each one as the message it is
        caplog.set_level(logging.DEBUG, logger="EventsManager")
        srv = servers(0, [], with_events=True)
        stubs = {"events": (EventServiceStub, EventApiVersion.EVENT_API_CURRENT)}
        client = RpcClient("127.0.0.1", srv.port, stubs, name=CALLER, timeout=30)
        stream = client.events.listen(EventFilter(names=["TRACED"]))
        cid = next(stream).client_id
        client.events.send(Event(name="TRACED", properties=[EventProperty(name="k", value="v")]))
        seq = next(stream).seq
        client.events.interrupt(EventInterrupt(client_id=cid))
        assert list(stream) == []
        peer = PEER.replace(f"api:{CURRENT}", f"api:{int(EventApiVersion.EVENT_API_CURRENT)}")
        prefix = f"[RPC] {peer} <<< EventService.listen: EventStatus"
        event = 'event {   name: "TRACED"   properties {     name: "k"     value: "v"   } }'
        assert [line for line in rpc_lines(caplog, "EventsManager") if "EventService.listen" in line] == [
            f'[RPC] {peer} >>> EventService.listen (EventFilter{{names: "TRACED" }})',
            f"{prefix}{{client_id: {cid} }}",
            f"{prefix}{{{event} client_id: {cid} seq: {seq} }}",
        ]

    def test_client_stream_traces_each_received_message(
        self, servers: Servers, caplog: pytest.LogCaptureFixture
    ) -> None:
        caplog.set_level(logging.DEBUG, logger="EchoManager")
        srv = servers(0, [echo_descriptor()])
        out = client_of(srv).echo.collect(iter([EchoRequest(text="a"), EchoRequest(text="b")]))
        assert out.text == "ab"
        assert rpc_lines(caplog, "EchoManager") == [
            f'[RPC] {PEER} >>> EchoService.collect (EchoRequest{{text: "a" }})',
            f'[RPC] {PEER} >>> EchoService.collect (EchoRequest{{text: "b" }})',
            f'[RPC] {PEER} <<< EchoService.collect: EchoResponse{{text: "ab" index: 2 }}',
        ]

    def test_long_message_is_cut(self, servers: Servers, caplog: pytest.LogCaptureFixture) -> None:
        caplog.set_level(logging.DEBUG, logger="EchoManager")
        srv = servers(0, [echo_descriptor()])
        client_of(srv).echo.echo(EchoRequest(text="x" * 2000))
        entry, answer = rpc_lines(caplog, "EchoManager")
        # the text format is 'text: "xxx..."\n': its first 1024 characters, then "..."
        cut = 'text: "' + "x" * (1024 - len('text: "')) + "..."
        assert entry == f"[RPC] {PEER} >>> EchoService.echo (EchoRequest{{{cut}}})"
        assert answer == f"[RPC] {PEER} <<< EchoService.echo: EchoResponse{{{cut}}}"

    def test_errors_are_traced_as_responses(self, servers: Servers, caplog: pytest.LogCaptureFixture) -> None:
        caplog.set_level(logging.DEBUG, logger="EchoManager")
        srv = servers(0, [echo_descriptor()])
        out = client_of(srv, exception=False).echo.echo(EchoRequest(text="fail:12"))
        assert out.r.code == 12
        lines = rpc_lines(caplog, "EchoManager")
        assert len(lines) == 2
        # nested messages are indented in the text format: each newline becomes one space
        exit_start = f"[RPC] {PEER} <<< EchoService.echo: EchoResponse{{r {{   code: ERROR_API_SERVER_TOO_OLD   msg: "
        assert lines[1].startswith(exit_start + '"asked to fail"')

    def test_peer_with_missing_fields(self, servers: Servers, caplog: pytest.LogCaptureFixture) -> None:
        caplog.set_level(logging.DEBUG, logger="EchoManager")
        srv = servers(0, [echo_descriptor()])
        with grpc.insecure_channel(f"127.0.0.1:{srv.port}") as channel:
            stub = EchoServiceStub(channel)
            stub.echo(EchoRequest(text="bare"), timeout=30)
            stub.echo(EchoRequest(text="some"), metadata=(("user", "bob"), ("api_version", "1")), timeout=30)
        entries = [line for line in rpc_lines(caplog, "EchoManager") if " >>> " in line]
        assert entries == [
            '[RPC] [unknown]unknown@unknown(unknown) api:0 >>> EchoService.echo (EchoRequest{text: "bare" })',
            '[RPC] [unknown]bob@unknown(unknown) api:1 >>> EchoService.echo (EchoRequest{text: "some" })',
        ]

    def test_default_services_are_traced(self, servers: Servers, caplog: pytest.LogCaptureFixture) -> None:
        caplog.set_level(logging.DEBUG, logger="RpcServer")
        srv = servers(0, [])
        srv.client.srv.info(Filter(names=["srv"]))
        entry = rpc_lines(caplog, "RpcServer")[0]
        assert re.fullmatch(
            r"\[RPC\] \[auto-client\]\S*@\S*\(\S*\) api:\d+ >>> RpcServerService\.info \(Filter\{names: \"srv\" \}\)",
            entry,
        )

    def test_nothing_traced_when_debug_is_off(self, servers: Servers, caplog: pytest.LogCaptureFixture) -> None:
        caplog.set_level(logging.INFO, logger="EchoManager")
        srv = servers(0, [echo_descriptor()])
        c = client_of(srv)
        c.echo.echo(EchoRequest(text="quiet"))
        list(c.echo.repeat(EchoRequest(text="quiet", count=2)))
        assert rpc_lines(caplog, "EchoManager") == []


class TestDumpPendingCalls:
    def test_dump_lists_pending_calls_after_thread_stacks(self, servers: Servers, folders: Folders) -> None:
        slow = IdentBlockingEcho()
        srv = servers(0, [echo_descriptor(slow)], folders=folders)
        named = RpcMetadata(client="dumper", user="u", host="h", ip="1.2.3.4")
        caller = threading.Thread(target=lambda: client_of(srv, name=named).echo.echo(EchoRequest(text="zzz")))
        caller.start()
        try:
            assert slow.started.wait(10)
            text = srv.dump_debug().read_text()
        finally:
            slow.release.set()
            caller.join(30)
        threads, _, pending = text.partition("Pending RPC calls:\n")
        assert "MainThread" in threads
        assert "test_dump_lists_pending_calls_after_thread_stacks" in threads
        line = (
            f"Thread 0x{slow.ident:016x} -- "
            f'[RPC] [dumper]u@h(1.2.3.4) api:{CURRENT} >>> EchoService.echo (EchoRequest{{text: "zzz" }})'
        )
        assert pending.splitlines() == [line]  # the blocked call only (traced even with DEBUG off)


class TestRotation:
    """With 1 s rollover and root at DEBUG, a manager's file rotates several times within a few seconds of calls."""

    @staticmethod
    def call_until_rotated(srv: RpcServer, folder: Path, wanted: int = 2, limit: float = 4.0) -> list[str]:
        c = client_of(srv)
        rotated: list[str] = []
        deadline = time.monotonic() + limit
        while len(rotated) < wanted and time.monotonic() < deadline:
            c.echo.echo(EchoRequest(text="tick"))
            if folder.is_dir():
                rotated = sorted(p.name for p in folder.iterdir() if p.name != "EchoManager.log")
            time.sleep(0.02)  # pacing only: a rollover is due every second whatever the call rate
        c.close()
        return rotated

    @pytest.mark.usefixtures("debug_root")
    def test_rotation_from_cli_config(self, servers: Servers, folders: Folders) -> None:
        srv = servers(
            0,
            [echo_descriptor()],
            folders=folders,
            cli_config={"rpc-logs-interval-unit": "s", "rpc-logs-interval": "1"},
        )
        rotated = self.call_until_rotated(srv, logs_of(folders) / "EchoManager")
        assert len(rotated) >= 2
        assert all(n.startswith("EchoManager.log.") for n in rotated)

    @pytest.mark.usefixtures("debug_root")
    def test_rotation_from_workspace_config_json(self, servers: Servers, folders: Folders) -> None:
        assert folders.workspace is not None
        folders.workspace.mkdir(parents=True, exist_ok=True)
        (folders.workspace / "config.json").write_text(
            json.dumps({"rpc-logs-interval-unit": "s", "rpc-logs-interval": "1"})
        )
        srv = servers(0, [echo_descriptor()], folders=folders)
        rotated = self.call_until_rotated(srv, logs_of(folders) / "EchoManager")
        assert len(rotated) >= 2
        assert all(n.startswith("EchoManager.log.") for n in rotated)
