"""The sample services: main + echo + notes as real processes talking through main, plus in-process
checks of the notes store and of the event sender."""

from __future__ import annotations

import json
import logging
import re
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from grpc_helper import Folders, RpcClient, RpcException, RpcServer, ctl
from grpc_helper.api import (
    ConfigApiVersion,
    ConfigItemUpdate,
    ConfigUpdate,
    Event,
    EventApiVersion,
    Filter,
    ResultCode,
    ServerApiVersion,
)
from grpc_helper.api.config_pb2_grpc import ConfigServiceStub
from grpc_helper.api.events_pb2_grpc import EventServiceStub
from grpc_helper.api.server_pb2_grpc import RpcServerServiceStub
from grpc_helper.testing import rc_of, restored_config
from grpc_helper_samples import _run, echo, notes
from grpc_helper_samples import main as main_program
from grpc_helper_samples._events import EventSender
from grpc_helper_samples.api import EchoApiVersion, EchoRequest, Note, NoteKey, NotesApiVersion
from grpc_helper_samples.api.echo_pb2_grpc import EchoServiceStub
from grpc_helper_samples.api.notes_pb2_grpc import NotesServiceStub

from helpers import WAIT, Collector, Program, Servers, clean_env

StartNotes = Callable[..., RpcServer]


def wait_serving(port: int, timeout: float = WAIT) -> None:
    """Block until a server on `port` is SERVING (gRPC waits for the connection, and a health watch is told
    when its managers are loaded: no polling)."""
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        watch = health_pb2_grpc.HealthStub(channel).Watch(
            health_pb2.HealthCheckRequest(), timeout=timeout, wait_for_ready=True
        )
        try:
            assert any(r.status == health_pb2.HealthCheckResponse.SERVING for r in watch)
        finally:
            watch.cancel()


class Stack:
    """main + echo + notes processes, each on the port it got, stopped (samples first) at teardown."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.programs: list[Program] = []
        self.clients: list[RpcClient] = []
        # Bounded waits everywhere (registration, proxied calls), quick graceful shutdowns
        self.common = ["-c", "rpc-main-host=127.0.0.1", "-c", "rpc-client-timeout=30", "-c", "rpc-shutdown-grace=5"]

    def start(self, name: str, *extra: str) -> Program:
        """Start a program (main first: the others register on its port); returns once it reported its port."""
        args = [*self.common, *extra]
        if name != "main":
            args += ["-c", f"rpc-main-port={self.main_port}"]
        program = Program(name, self.root, *args)
        self.programs.append(program)  # stopped at teardown, even if it never reports its port
        program.wait_port()
        return program

    def port(self, name: str) -> int:
        """The port of the program `name` started last."""
        return next(p.port for p in reversed(self.programs) if p.name == name)

    @property
    def main_port(self) -> int:
        return self.port("main")

    def client(self, port: int | None = None) -> RpcClient:
        c = RpcClient(
            "127.0.0.1",
            port or self.main_port,
            {
                "srv": (RpcServerServiceStub, ServerApiVersion.SERVER_API_CURRENT),
                "config": (ConfigServiceStub, ConfigApiVersion.CONFIG_API_CURRENT),
                "events": (EventServiceStub, EventApiVersion.EVENT_API_CURRENT),
                "echo": (EchoServiceStub, EchoApiVersion.ECHO_API_CURRENT),
                "notes": (NotesServiceStub, NotesApiVersion.NOTES_API_CURRENT),
            },
            timeout=WAIT,
            name="test-samples",
        )
        self.clients.append(c)
        return c

    def close(self) -> None:
        for c in self.clients:
            c.close()
        # Samples all at once (each may wait a while if main is gone), then main: samples forget quickly
        samples = [p for p in self.programs if p.name != "main"]
        for program in samples:
            program.terminate()
        for program in [*samples, *(p for p in self.programs if p.name == "main")]:
            program.stop()


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[Stack]:
    """The running reference topology; ready once echo and notes answer through main."""
    s = Stack(tmp_path)
    try:
        s.start("main")
        wait_serving(s.main_port)
        s.start("echo")
        s.start("notes")
        c = s.client()
        # Proxied calls wait for the registration (main's rpc-client-timeout): the stack is ready after these
        assert c.echo.echo(EchoRequest(text="ready"), timeout=WAIT).text == "ready"
        c.notes.list(Filter(), timeout=WAIT)
        yield s
    finally:
        s.close()


# --- the stack, as real processes ---


class TestStack:
    def test_echo_through_main(self, stack: Stack) -> None:
        c = stack.client()
        r = c.echo.echo(EchoRequest(text="hi", payload=b"\x00\x01" * 100))
        assert (r.text, r.payload) == ("hi", b"\x00\x01" * 100)
        assert [(m.text, m.index) for m in c.echo.repeat(EchoRequest(text="r", count=5))] == [
            ("r", i) for i in range(5)
        ]
        r = c.echo.collect(EchoRequest(text=t, payload=t.encode()) for t in ["a", "b", "c"])
        assert (r.text, r.payload, r.index) == ("abc", b"abc", 3)
        assert [(m.text, m.index) for m in c.echo.chat(EchoRequest(text=t) for t in "xyz")] == [
            ("x", 0), ("y", 1), ("z", 2)
        ]  # fmt: skip
        info = {i.name: i for i in c.srv.info(Filter()).items}
        assert [n for n in info] == ["srv", "config", "log", "events", "echo", "notes"]
        assert info["echo"].version == info["notes"].version == _run.samples_version()
        assert (info["echo"].proxy_port, info["notes"].proxy_port) == (stack.port("echo"), stack.port("notes"))

    def test_notes_through_main(self, stack: Stack) -> None:
        n = stack.client().notes
        assert n.put(Note(key="k1", text="first")).note == Note(key="k1", text="first")
        n.put(Note(key="k0", text="zero"))
        assert n.get(NoteKey(key="k1")).note.text == "first"
        assert [x.key for x in n.list(Filter()).notes] == ["k0", "k1"]
        n.delete(NoteKey(key="k0"))
        assert rc_of(lambda: n.get(NoteKey(key="k0"))) == ResultCode.ERROR_ITEM_UNKNOWN
        assert rc_of(lambda: n.delete(NoteKey(key="k0"))) == ResultCode.ERROR_ITEM_UNKNOWN
        assert rc_of(lambda: n.put(Note(key="", text="x"))) == ResultCode.ERROR_PARAM_MISSING
        assert rc_of(lambda: n.put(Note(key="big", text="x" * 1001))) == ResultCode.ERROR_PARAM_INVALID

    def test_notes_survive_restart(self, stack: Stack) -> None:
        c = stack.client()
        c.notes.put(Note(key="kept", text="across restarts"))
        notes_program = next(p for p in stack.programs if p.name == "notes")
        assert notes_program.stop() == 0
        assert json.loads((stack.root / "notes" / "notes.json").read_text())["kept"] == "across restarts"
        stack.start("notes")
        # main waits for the new registration before forwarding
        assert c.notes.get(NoteKey(key="kept"), timeout=WAIT).note.text == "across restarts"

    def test_config_through_main_reaches_notes(self, stack: Stack) -> None:
        c = stack.client()
        update = ConfigUpdate(items=[ConfigItemUpdate(name="notes-max-count", value="2")])
        assert [(i.name, i.value) for i in c.config.set(update).items] == [("notes-max-count", "2")]
        c.notes.put(Note(key="a", text="1"))
        c.notes.put(Note(key="b", text="2"))
        assert rc_of(lambda: c.notes.put(Note(key="c", text="3"))) == ResultCode.ERROR_STATE_UNEXPECTED
        c.notes.put(Note(key="a", text="replaced"))  # replacing is fine at the limit
        assert c.config.get(Filter(names=["notes-max-count"])).items[0].value == "2"
        # persisted by notes itself, in its own workspace
        assert json.loads((stack.root / "notes" / "config.json").read_text()) == {"notes-max-count": "2"}
        bad = ConfigUpdate(items=[ConfigItemUpdate(name="notes-max-length", value="0")])
        assert rc_of(lambda: c.config.set(bad)) == ResultCode.ERROR_PARAM_INVALID
        c.config.reset(Filter(names=["notes-max-count"]))
        c.notes.put(Note(key="c", text="3"))

    def test_note_changed_event_reaches_listener_on_main(self, stack: Stack) -> None:
        c = stack.client()
        listener = Collector(c, ["NOTE_CHANGED"])
        try:
            assert listener.ready.wait(WAIT)
            c.notes.put(Note(key="evt", text="x"))
            c.notes.delete(NoteKey(key="evt"))
            assert listener.wait_count(2, WAIT)
            got = [(e.name, {p.name: p.value for p in e.properties}) for e in listener.events]
            assert got == [
                ("NOTE_CHANGED", {"key": "evt", "action": "create"}),
                ("NOTE_CHANGED", {"key": "evt", "action": "delete"}),
            ]
        finally:
            listener.interrupt()

    def test_notes_work_while_main_is_down(self, stack: Stack) -> None:
        main = next(p for p in stack.programs if p.name == "main")
        assert main.stop() == 0
        direct = stack.client(stack.port("notes"))
        t0 = time.monotonic()
        for i in range(3):
            direct.notes.put(Note(key=f"offline{i}", text="main is down"))
        # Events are sent in the background: a put waiting for its event would take 3s+ (retries) each
        assert time.monotonic() - t0 < 6
        assert direct.notes.get(NoteKey(key="offline2")).note.text == "main is down"

    def test_sigterm_is_graceful(self, stack: Stack) -> None:
        echo_program = next(p for p in stack.programs if p.name == "echo")
        assert echo_program.stop() == 0
        assert "shut down" in echo_program.output
        assert "Traceback" not in echo_program.output
        # the sample forgot its registration on the way out
        assert stack.client().srv.info(Filter(names=["echo"])).items[0].proxy_port == 0

    def test_busy_port(self, stack: Stack) -> None:
        done = subprocess.run(
            [sys.executable, "-m", "grpc_helper_samples.main", "-p", str(stack.main_port), "-w", str(stack.root / "2")],
            capture_output=True,
            text=True,
            timeout=60,
            env=clean_env(),
        )
        assert done.returncode == 1
        assert "error: ERROR_PORT_BUSY: " in done.stderr
        assert "Traceback" not in done.stderr


# --- startup errors (no main server needed) ---


def run_program(name: str, tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", f"grpc_helper_samples.{name}", "-p", "0", "-w", str(tmp_path / name)]
    cmd += ["--system", str(tmp_path / "system"), "--user", str(tmp_path / "user"), *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=60, env=clean_env())


def test_busy_port_refused(servers: Servers, tmp_path: Path) -> None:
    busy = servers(0)
    cmd = [sys.executable, "-m", "grpc_helper_samples.echo", "-p", str(busy.port), "-w", str(tmp_path)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=60, env=clean_env())
    assert done.returncode == 1
    assert f"error: ERROR_PORT_BUSY: Can't listen on port {busy.port}" in done.stderr
    assert "Traceback" not in done.stderr


def test_invalid_config_refused(tmp_path: Path) -> None:
    done = run_program("notes", tmp_path, "-c", "notes-max-count=0")
    assert done.returncode == 1
    assert done.stderr.startswith("error: ERROR_PARAM_INVALID: ")
    assert "notes-max-count" in done.stderr


def test_bad_config_syntax_is_a_usage_error(tmp_path: Path) -> None:
    done = run_program("echo", tmp_path, "-c", "Bad")
    assert done.returncode == 2
    assert "Invalid syntax for config item definition: Bad" in done.stderr


def test_malformed_notes_file_refused(tmp_path: Path) -> None:
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "notes.json").write_text('{"k": 1}')
    done = run_program("notes", tmp_path)
    assert done.returncode == 1
    assert "error: ERROR_MODEL_INVALID: Invalid notes file" in done.stderr
    assert "Traceback" not in done.stderr


def test_unreachable_main_server(tmp_path: Path, refused_port: int) -> None:
    done = run_program("echo", tmp_path, "-c", f"rpc-main-port={refused_port}", "-c", "rpc-client-timeout=0.5")
    assert done.returncode == 1
    assert "error: ERROR_RPC: " in done.stderr


@pytest.mark.parametrize("name", ["main", "echo", "notes"])
def test_version(name: str, tmp_path: Path) -> None:
    done = run_program(name, tmp_path, "-V")
    assert (done.returncode, done.stdout.strip()) == (0, "grpc-helper-samples 1.0.0")


# --- in-process: managers and descriptors ---


@pytest.fixture(autouse=True)
def restore_notes_config() -> Iterator[None]:
    """The notes user items are process-wide: undo what a test changed."""
    with restored_config(notes.NotesConfig):
        yield


@pytest.fixture
def main_server(servers: Servers, tmp_path: Path) -> RpcServer:
    """A main server proxying the samples (without events: the notes' sender must cope)."""
    return servers(0, main_program.descriptors(), folders=Folders(workspace=tmp_path / "main"))


@pytest.fixture
def start_notes(servers: Servers, main_server: RpcServer) -> Iterator[StartNotes]:
    """Starts in-process notes servers registering on `main_server`; shut down before it (quick forget)."""
    started: list[RpcServer] = []

    def start(workspace: Path, **config: str) -> RpcServer:
        cli = {"rpc-main-host": "127.0.0.1", "rpc-main-port": str(main_server.port), "rpc-client-timeout": "10"}
        srv = servers(0, [notes.descriptor()], Folders(workspace=workspace), {**cli, **config}, [], [notes.NotesConfig])
        started.append(srv)
        return srv

    yield start
    for srv in reversed(started):
        srv.shutdown()


def notes_client(port: int) -> Any:
    return RpcClient("127.0.0.1", port, {"notes": (NotesServiceStub, NotesApiVersion.NOTES_API_CURRENT)}, timeout=10)


class TestNotesManager:
    def test_store(self, start_notes: StartNotes, main_server: RpcServer, tmp_path: Path) -> None:
        srv = start_notes(tmp_path / "notes", **{"notes-max-count": "2"})
        n = notes_client(main_server.port).notes
        n.put(Note(key="b", text="2"))
        n.put(Note(key="a", text="1"))
        assert [(x.key, x.text) for x in n.list(Filter()).notes] == [("a", "1"), ("b", "2")]
        assert [x.key for x in n.list(Filter(names=["b", "a", "b"])).notes] == ["b", "a"]
        assert rc_of(lambda: n.list(Filter(names=["a", "zz"]))) == ResultCode.ERROR_ITEM_UNKNOWN
        assert [x.key for x in n.list(Filter(names=["zz", "a"], ignore_unknown=True)).notes] == ["a"]
        assert rc_of(lambda: n.put(Note(key="c"))) == ResultCode.ERROR_STATE_UNEXPECTED
        n.put(Note(key="b", text=""))  # replacing at the limit; empty texts are fine
        assert rc_of(lambda: n.get(NoteKey())) == ResultCode.ERROR_PARAM_MISSING
        assert rc_of(lambda: n.delete(NoteKey())) == ResultCode.ERROR_PARAM_MISSING
        assert json.loads((tmp_path / "notes" / "notes.json").read_text()) == {"a": "1", "b": ""}
        srv.shutdown()
        start_notes(tmp_path / "notes")
        assert [(x.key, x.text) for x in n.list(Filter()).notes] == [("a", "1"), ("b", "")]

    def test_max_length(self, start_notes: StartNotes, tmp_path: Path) -> None:
        srv = start_notes(tmp_path / "notes", **{"notes-max-length": "3"})
        n = notes_client(srv.port).notes
        n.put(Note(key="k", text="abc"))
        assert rc_of(lambda: n.put(Note(key="k", text="abcd"))) == ResultCode.ERROR_PARAM_INVALID
        assert n.get(NoteKey(key="k")).note.text == "abc"

    def test_events_are_posted_in_order(self, servers: Servers, tmp_path: Path) -> None:
        main = servers(0, main_program.descriptors(), Folders(workspace=tmp_path / "main"), with_events=True)
        listener = Collector(main.client, ["NOTE_CHANGED"])
        try:
            assert listener.ready.wait(WAIT)
            cli = {"rpc-main-host": "127.0.0.1", "rpc-main-port": str(main.port), "rpc-client-timeout": "10"}
            srv = servers(0, [notes.descriptor()], Folders(workspace=tmp_path / "notes"), cli, [], [notes.NotesConfig])
            n = notes_client(srv.port).notes
            n.put(Note(key="k", text="1"))
            n.put(Note(key="k", text="2"))
            n.delete(NoteKey(key="k"))
            assert listener.wait_count(3, WAIT)
            got = [{p.name: p.value for p in e.properties} for e in listener.events]
            assert got == [{"key": "k", "action": action} for action in ("create", "update", "delete")]
        finally:
            listener.interrupt()

    def test_registration(self, start_notes: StartNotes, main_server: RpcServer, tmp_path: Path) -> None:
        srv = start_notes(tmp_path / "notes")
        info = main_server.client.srv.info(Filter(names=["notes"])).items[0]
        assert (info.version, info.proxy_port) == (_run.samples_version(), srv.port)


def test_proxy_use_current_host(monkeypatch: pytest.MonkeyPatch) -> None:
    manager = echo.EchoManager()
    monkeypatch.delenv(_run.PROXY_USE_CURRENT_HOST_ENV, raising=False)
    assert manager._proxy_use_current_host() is False
    for value, expected in (("1", True), ("True", True), ("yes", True), ("0", False), ("", False), ("no", False)):
        monkeypatch.setenv(_run.PROXY_USE_CURRENT_HOST_ENV, value)
        assert manager._proxy_use_current_host() is expected, value
    assert manager._proxied_services() == ["echo"]
    assert notes.NotesManager()._proxied_services() == ["notes"]


def test_main_descriptors() -> None:
    d = main_program.descriptors()
    assert [(x.name, x.is_proxy) for x in d] == [("echo", True), ("notes", True)]
    assert not isinstance(d[0].manager, echo.EchoManager)  # a plain generated servicer


# --- the event sender ---


def transient() -> RpcException:
    return RpcException("down", ResultCode.ERROR_RPC)


class FakeSend:
    """Fails `failures` times with `error`, then records what it sends."""

    def __init__(self, failures: int = 0, error: RpcException | None = None) -> None:
        self.failures, self.error = failures, error
        self.sent: list[str] = []
        self.calls = 0

    def __call__(self, event: Event, _timeout: float) -> None:
        self.calls += 1
        if self.calls <= self.failures:
            assert self.error is not None
            raise self.error
        self.sent.append(event.name)


def sender(send: FakeSend, **kwargs: Any) -> EventSender:
    kwargs.setdefault("first_delay", 0.001)
    return EventSender(send, logging.getLogger("test.sender"), **kwargs)


class TestEventSender:
    def test_in_order_and_waits_for_start(self) -> None:
        send = FakeSend()
        s = sender(send)
        for name in "ABC":
            s.post(Event(name=name))
        assert s.pending == 3
        assert send.calls == 0  # nothing is sent before start()
        s.start()
        s.close(WAIT)
        assert send.sent == ["A", "B", "C"]

    def test_transient_errors_are_retried(self) -> None:
        send = FakeSend(failures=2, error=transient())
        s = sender(send, attempts=3)
        s.start()
        s.post(Event(name="A"))
        s.close(WAIT)
        assert (send.calls, send.sent) == (3, ["A"])

    def test_bounded_retries(self) -> None:
        send = FakeSend(failures=10, error=transient())
        s = sender(send, attempts=3)
        s.start()
        s.post(Event(name="A"))
        s.post(Event(name="B"))
        s.close(WAIT)
        assert (send.calls, send.sent) == (6, [])

    def test_other_errors_are_not_retried(self) -> None:
        send = FakeSend(failures=1, error=RpcException("bad", ResultCode.ERROR_PARAM_INVALID))
        s = sender(send)
        s.start()
        s.post(Event(name="A"))
        s.post(Event(name="B"))
        s.close(WAIT)
        assert (send.calls, send.sent) == (2, ["B"])

    def test_bounded_queue_drops_oldest(self) -> None:
        send = FakeSend()
        s = sender(send, max_pending=2)
        for name in "ABC":
            s.post(Event(name=name))
        s.start()
        s.close(WAIT)
        assert send.sent == ["B", "C"]

    def test_close_gives_up_on_a_stuck_server(self) -> None:
        release = threading.Event()

        def stuck(_event: Event, _timeout: float) -> None:
            release.wait(WAIT)
            raise transient()

        s = EventSender(stuck, logging.getLogger("test.sender"), first_delay=WAIT)
        s.start()
        s.post(Event(name="A"))
        s.post(Event(name="B"))
        t0 = time.monotonic()
        s.close(0.2)
        assert time.monotonic() - t0 < 5
        assert s.pending == 0
        release.set()
        s.post(Event(name="C"))  # after close: dropped, never raises
        assert s.pending == 0


# --- the README's walkthrough, against the local processes ---

README = Path(__file__).resolve().parent.parent / "README.md"
# Each sample command of the walkthrough checked here, as typed there (after `grpc-helper`)
WALKTHROUGH_COMMANDS = [
    "config get",
    "config set notes-max-length=200",
    "config set notes-max-length=0",
    "info nope",
    "--service notes log set NotesManager DEBUG",
    "health",
    "health EchoService",
]
# What differs from one stack to another: addresses, versions
VARIABLE = ((re.compile(r"\b\d+(\.\d+){3}:\d+\b"), "ADDRESS"), (re.compile(r"\b\d+\.\d+\.\d+\b"), "VERSION"))


def walkthrough_outputs() -> dict[str, list[str]]:
    """The walkthrough's sample outputs: `grpc-helper ARGS` -> its lines, "info" -> the table of `stack.sh up`."""
    section = README.read_text().split("\n## Walkthrough\n", 1)[1].split("\n## ", 1)[0]
    outputs: dict[str, list[str]] = {}
    current: list[str] | None = None
    for line in "\n".join(re.findall(r"```\n(.*?)```", section, re.DOTALL)).splitlines():
        if line.startswith("$ "):
            command = re.sub(r"\s+#.*$", "", line[2:]).strip()
            current = outputs.setdefault(command.removeprefix("grpc-helper "), [])
        elif current is not None and line.strip() and not line.startswith(("NOTE_CHANGED", "...", "stack: ")):
            current.append(line)
    outputs["info"] = [line for line in outputs.pop("./scripts/stack.sh up", []) if not line.startswith("secrets:")]
    return outputs


def normalized(lines: list[str]) -> list[list[str]]:
    """Lines as their whitespace-separated cells (column widths vary), variable parts replaced."""
    out = []
    for line in lines:
        for pattern, replacement in VARIABLE:
            line = pattern.sub(replacement, line)
        out.append(line.split())
    return out


def test_walkthrough_outputs_match(stack: Stack, capsys: pytest.CaptureFixture[str]) -> None:
    """The CLI prints what the README's walkthrough shows (plaintext: the TLS lines are not checked here)."""
    expected = walkthrough_outputs()
    assert set(WALKTHROUGH_COMMANDS) | {"info"} <= set(expected), sorted(expected)
    for command in ["info", *WALKTHROUGH_COMMANDS]:
        ctl.main(["--host", "127.0.0.1", "--port", str(stack.main_port), *command.split()])
        captured = capsys.readouterr()
        assert normalized((captured.out + captured.err).splitlines()) == normalized(expected[command]), command
