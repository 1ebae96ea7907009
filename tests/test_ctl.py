"""The `grpc-helper` operator CLI, each subcommand against a real in-process server."""

from __future__ import annotations

import io
import json
import os
import selectors
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

import grpc_helper
import grpc_helper_samples
from grpc_helper import Config, RpcClient, RpcException, RpcServer, ctl
from grpc_helper.api import ConfigValidator, Event, EventFilter, EventInterrupt, EventProperty, ResultCode
from grpc_helper.pki import CertificateAuthority
from grpc_helper_samples.api import EchoApiVersion, EchoRequest
from grpc_helper_samples.api.echo_pb2_grpc import EchoServiceStub

from helpers import Servers, echo_descriptor, wait_until


class Run:
    """Runs `ctl.main` against one server and captures its output."""

    def __init__(self, capsys: pytest.CaptureFixture[str], port: int) -> None:
        self.capsys, self.port = capsys, port

    def __call__(self, *args: str, port: int | None = None) -> tuple[int, str, str]:
        self.capsys.readouterr()  # drop anything printed before
        rc = ctl.main(["--port", str(port or self.port), "--timeout", "10", *args])
        out, err = self.capsys.readouterr()
        return rc, out, err

    def ok(self, *args: str) -> str:
        rc, out, err = self(*args)
        assert (rc, err) == (0, ""), err
        return out

    def listen(self, *args: str) -> str:
        """`events listen ...`: stdout only has the events; stderr says which queue is used."""
        rc, out, err = self("events", "listen", *args)
        assert rc == 0, err
        assert err.startswith("listening with client id "), err
        return out

    def json(self, *args: str) -> Any:
        return json.loads(self.ok("--json", *args))

    def error(self, *args: str, rc: int = 1) -> str:
        code, out, err = self(*args)
        assert code == rc, (out, err)
        return err


def make_items() -> list[Config]:
    # Fresh items per server: Config values are process-wide
    return [
        Config("ctl-count", "A counter", "5", validator=ConfigValidator.CONFIG_VALID_POS_INT),
        Config("ctl-name", "A name", "x"),
    ]


@pytest.fixture
def server(servers: Servers, folders: Any) -> RpcServer:
    """A server proxying `echo` (unregistered), with two user items and events."""
    return servers(0, [echo_descriptor(is_proxy=True)], folders=folders, user_items=make_items(), with_events=True)


@pytest.fixture
def run(capsys: pytest.CaptureFixture[str], server: RpcServer) -> Run:
    return Run(capsys, server.port)


def lines(out: str) -> list[list[str]]:
    return [line.split() for line in out.strip().splitlines()]


class TestInfo:
    def test_table(self, run: Run) -> None:
        rows = lines(run.ok("info"))
        assert rows[0] == ["NAME", "VERSION", "API", "PROXY"]
        by_name = {r[0]: r for r in rows[1:]}
        assert by_name["srv"][1:] == [f"grpc-helper:{grpc_helper.__version__}", "1-1", "-"]
        assert by_name["config"][2] == "1-2"
        samples = f"{grpc_helper_samples.__title__}:{grpc_helper_samples.__version__}"
        assert by_name["echo"] == ["echo", samples, "1-2", "(unregistered)"]  # the module's version until registered
        assert by_name["events"][2] == "1-2"

    def test_columns_are_aligned(self, run: Run) -> None:
        out = run.ok("info").splitlines()
        start = out[0].index("API")
        assert all(line[start - 2 : start] == "  " for line in out)
        assert all(line == line.rstrip() for line in out)

    def test_json(self, run: Run) -> None:
        data = run.json("info", "echo", "srv")
        assert [i["name"] for i in data["items"]] == ["echo", "srv"]
        echo = data["items"][0]
        # every field is there (even defaults), with proto names
        assert echo["is_proxy"] is True
        assert echo["proxy_port"] == 0
        assert echo["current_api_version"] == 2
        assert "r" not in data

    def test_json_after_the_command(self, run: Run) -> None:
        assert [i["name"] for i in json.loads(run.ok("info", "srv", "--json"))["items"]] == ["srv"]

    def test_unknown_service(self, run: Run) -> None:
        err = run.error("info", "nope")
        assert err.startswith("error: ERROR_ITEM_UNKNOWN: ")
        assert "nope" in err


class TestConfig:
    def test_get(self, run: Run) -> None:
        rows = lines(run.ok("config", "get"))
        assert rows[0] == ["NAME", "VALUE", "DEFAULT", "TYPE", "DESCRIPTION"]
        assert rows[1:] == [
            ["ctl-count", "5", "5", "pos-int", "A", "counter"],
            ["ctl-name", "x", "x", "string", "A", "name"],
        ]
        items = run.json("config", "get", "ctl-name")["items"]
        assert items == [
            {
                "name": "ctl-name",
                "description": "A name",
                "value": "x",
                "default_value": "x",
                "can_be_empty": False,
                "validator": "CONFIG_VALID_STRING",
            }
        ]

    def test_set_and_reset(self, run: Run, server: RpcServer) -> None:
        rows = lines(run.ok("config", "set", "ctl-count=7", "ctl-name=a=b"))
        assert rows[1][:3] == ["ctl-count", "7", "5"]
        assert rows[2][:3] == ["ctl-name", "a=b", "x"]
        assert server.config.user_items["ctl-count"].int_val == 7
        items = run.json("config", "reset", "ctl-count")["items"]
        assert [(i["name"], i["value"]) for i in items] == [("ctl-count", "5")]
        assert server.config.user_items["ctl-count"].int_val == 5

    def test_errors(self, run: Run, server: RpcServer) -> None:
        assert run.error("config", "set", "ctl-count=0").startswith("error: ERROR_PARAM_INVALID: ")
        assert run.error("config", "set", "ctl-count=8", "ctl-count=x").startswith("error: ERROR_PARAM_INVALID: ")
        assert server.config.user_items["ctl-count"].int_val == 5  # atomic: nothing applied
        assert run.error("config", "set", "nope=1").startswith("error: ERROR_ITEM_UNKNOWN: ")
        assert run.error("config", "get", "nope").startswith("error: ERROR_ITEM_UNKNOWN: ")
        assert run.error("config", "reset", "nope").startswith("error: ERROR_ITEM_UNKNOWN: ")
        assert "expected NAME=VALUE" in run.error("config", "set", "ctl-count", rc=2)
        run.error("config", "reset", rc=2)  # names required


class TestLog:
    def test_get_set_reset(self, run: Run) -> None:
        root = lines(run.ok("log", "get", "root"))[1]
        assert root[0] == "root"
        assert root[2] == "yes"
        assert lines(run.ok("log", "get", "ctl.test")) == [
            ["NAME", "LEVEL", "ENABLED"],
            ["ctl.test", "UNKNOWN", "yes"],  # no own level: inherits from root
        ]
        assert lines(run.ok("log", "set", "ctl.test", "debug"))[1] == ["ctl.test", "DEBUG", "yes"]
        assert lines(run.ok("log", "set", "ctl.test", "off"))[1] == ["ctl.test", "DEBUG", "no"]
        assert lines(run.ok("log", "set", "ctl.test", "ON"))[1] == ["ctl.test", "DEBUG", "yes"]
        assert lines(run.ok("log", "reset", "ctl.test"))[1] == ["ctl.test", "UNKNOWN", "yes"]

    def test_json_and_root(self, run: Run) -> None:
        items = run.json("log", "set", "root", "ERROR")["items"]
        assert items == [{"name": "root", "enabled": True, "level": "LVL_ERROR"}]
        assert run.json("log", "get", "")["items"][0]["level"] == "LVL_ERROR"

    def test_errors(self, run: Run) -> None:
        assert "invalid level 'loud'" in run.error("log", "set", "x", "loud", rc=2)
        run.error("log", "get", rc=2)
        run.error("log", "set", "x", rc=2)


class TestProxy:
    def test_register_and_forget(self, run: Run, server: RpcServer, servers: Servers) -> None:
        backend = servers(0, [echo_descriptor()])
        out = run.ok(
            "proxy", "register", "echo", "--version", "b-2", "--port", str(backend.port), "--host", "127.0.0.1"
        )
        assert out.strip() == f"registered echo at 127.0.0.1:{backend.port} (version b-2)"
        row = {r[0]: r for r in lines(run.ok("info"))}["echo"]
        assert row == ["echo", "b-2", "1-2", f"127.0.0.1:{backend.port}"]
        with RpcClient("127.0.0.1", server.port, {"echo": (EchoServiceStub, EchoApiVersion.ECHO_API_CURRENT)}) as c:
            assert c.echo.echo(EchoRequest(text="via ctl"), timeout=10).text == "via ctl"
        assert run.ok("proxy", "forget", "echo").strip() == "forgot echo"
        assert {r[0]: r for r in lines(run.ok("info"))}["echo"][-1] == "(unregistered)"
        assert run.json("proxy", "forget", "echo") == {}

    def test_errors(self, run: Run) -> None:
        reg = ["proxy", "register", "--version", "v", "--port", "1234"]
        assert run.error(*reg, "srv").startswith("error: ERROR_PARAM_INVALID: ")
        assert run.error(*reg, "nope").startswith("error: ERROR_ITEM_UNKNOWN: ")
        assert run.error("proxy", "forget", "nope").startswith("error: ERROR_ITEM_UNKNOWN: ")
        run.error("proxy", "register", "echo", "--port", "1234", rc=2)  # --version required
        run.error("proxy", "register", "echo", "--version", "v", rc=2)  # --port required
        run.error("proxy", "register", "echo", "--version", "v", "--port", "70000", rc=2)


class TestHealth:
    def test_serving(self, run: Run) -> None:
        assert run.ok("health") == "SERVING\n"
        assert run.ok("health", "RpcServerService") == "SERVING\n"
        assert run.json("health") == {"status": "SERVING"}

    def test_not_serving(self, run: Run) -> None:
        code, out, err = run("health", "EchoService")  # proxied, not registered
        assert (code, out, err) == (1, "NOT_SERVING\n", "")

    def test_unknown_service(self, run: Run) -> None:
        assert run.error("health", "NoSuchService").startswith("error: ERROR_ITEM_UNKNOWN: ")


class TestShutdown:
    def test_shutdown(self, run: Run, server: RpcServer) -> None:
        assert run.ok("shutdown").strip() == "shutdown requested"
        assert server.wait_shutdown(30)


class TestFailures:
    def test_dead_server(self, capsys: pytest.CaptureFixture[str], refused_port: int) -> None:
        port = refused_port
        for cmd in (["info"], ["config", "get"], ["health"], ["events", "listen"]):
            t0 = time.monotonic()
            rc = ctl.main(["--port", str(port), "--timeout", "1", *cmd])
            elapsed = time.monotonic() - t0
            err = capsys.readouterr().err
            assert rc == 1, cmd
            assert err.startswith(f"error: ERROR_RPC: can't reach localhost:{port}: "), err
            assert elapsed < 8, (cmd, elapsed)  # --timeout bounds the wait

    def test_unreachable_fails_fast(self, refused_port: int) -> None:
        """The console program, with the default --timeout (10 s): a refused port is reported in ~2 s, in one
        line saying how to wait longer; `--wait` retries up to --timeout."""
        t0 = time.monotonic()
        done = ctl_process("--port", str(refused_port), "info")
        elapsed = time.monotonic() - t0
        assert done.returncode == 1
        assert done.stderr.startswith(f"error: ERROR_RPC: can't reach localhost:{refused_port}: "), done.stderr
        assert done.stderr.endswith("(gave up after 2s; --wait waits longer)\n"), done.stderr
        assert done.stderr.count("\n") == 1, done.stderr
        assert elapsed < 3, elapsed
        t0 = time.monotonic()
        assert ctl.main(["--port", str(refused_port), "--wait", "--timeout", "3", "info"]) == 1
        assert 2.5 < time.monotonic() - t0 < 6

    def test_no_core_logs(self, server: RpcServer, tmp_path: Path) -> None:
        """A TLS client against a plaintext server: one error line, none of the C core's handshake logs."""
        ca = tmp_path / "ca.pem"
        ca.write_bytes(CertificateAuthority.create("ctl test CA").cert_pem)
        env = {k: v for k, v in os.environ.items() if k != "GRPC_VERBOSITY"}
        done = ctl_process("--port", str(server.port), "--tls-ca", str(ca), "info", env=env)
        assert done.returncode == 1
        assert done.stderr.startswith("error: ERROR_RPC: can't reach localhost:"), done.stderr
        assert done.stderr.count("\n") == 1, done.stderr  # no "Handshake failed" lines

    def test_usage_errors(self, capsys: pytest.CaptureFixture[str]) -> None:
        for argv in ([], ["config"], ["nope"], ["--timeout", "0", "info"], ["--port", "x", "info"], ["events"]):
            assert ctl.main(argv) == 2, argv
        assert "usage: grpc-helper" in capsys.readouterr().err
        assert ctl.main(["--help"]) == 0
        assert "COMMAND" in capsys.readouterr().out
        assert ctl.main(["-V"]) == 0

    def test_target_from_the_environment(
        self, server: RpcServer, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """$GRPC_HELPER_HOST / $GRPC_HELPER_PORT (as `stack.sh env` exports them) are the defaults of
        --host / --port; an invalid one is a usage error, as the option would be."""
        monkeypatch.setenv("GRPC_HELPER_HOST", "127.0.0.1")
        monkeypatch.setenv("GRPC_HELPER_PORT", str(server.port))
        assert ctl.main(["--timeout", "10", "health"]) == 0
        assert capsys.readouterr().out == "SERVING\n"
        monkeypatch.setenv("GRPC_HELPER_PORT", "x")
        assert ctl.main(["health"]) == 2
        assert "--port" in capsys.readouterr().err

    def test_module_entry_point(self, server: RpcServer) -> None:
        done = subprocess.run(
            [sys.executable, "-m", "grpc_helper.ctl", "--port", str(server.port), "health"],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert (done.returncode, done.stdout, done.stderr) == (0, "SERVING\n", "")


def ctl_process(*argv: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """The CLI run as the console script runs it: its own process (grpc's C core initialized by it)."""
    cmd = [sys.executable, "-m", "grpc_helper.ctl", *argv]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=60, env=env)


# --- events ---


def queue_with_events(server: RpcServer, name: str, events: list[Event]) -> int:
    """A retained (interrupted) queue holding `events`: what `listen --client-id` resumes, deterministically."""
    stream = server.client.events.listen(EventFilter(names=[name]))
    client_id = next(stream).client_id
    server.client.events.interrupt(EventInterrupt(client_id=client_id))
    stream.cancel()
    for event in events:
        server.client.events.send(event)
    return client_id


def props(**kwargs: str) -> list[EventProperty]:
    return [EventProperty(name=k, value=v) for k, v in kwargs.items()]


def wait_until_text(stream: io.StringIO, text: str) -> bool:
    return wait_until(lambda: text in stream.getvalue(), 30)


class Listening:
    """`grpc-helper events listen ...` running in a thread, its output in memory."""

    class Stderr(io.StringIO):
        """Tells when the CLI is listening: it says so on stderr once its queue exists."""

        def __init__(self) -> None:
            super().__init__()
            self.listening = threading.Event()

        def write(self, s: str) -> int:
            if s.startswith("listening"):
                self.listening.set()
            return super().write(s)

    def __init__(self, monkeypatch: pytest.MonkeyPatch, port: int, *args: str) -> None:
        # Only this thread prints meanwhile: replacing the process-wide streams is fine
        self.out, self.err = io.StringIO(), self.Stderr()
        monkeypatch.setattr(sys, "stdout", self.out)
        monkeypatch.setattr(sys, "stderr", self.err)
        self.rc: int | None = None
        self.thread = threading.Thread(target=self._run, args=(port, args), daemon=True)
        self.thread.start()

    def _run(self, port: int, args: tuple[str, ...]) -> None:
        self.rc = ctl.main(["--port", str(port), "--timeout", "10", "events", "listen", *args])

    def wait(self) -> int:
        """Wait until it listens; returns its client id."""
        assert self.err.listening.wait(30), self.err.getvalue()
        return int(self.err.getvalue().splitlines()[0].split()[-1])

    def join(self) -> int | None:
        self.thread.join(30)
        assert not self.thread.is_alive(), "the CLI is still listening"
        return self.rc


class TestEvents:
    def test_send(self, run: Run, server: RpcServer) -> None:
        client_id = queue_with_events(server, "CTL_SEND", [])
        assert run.ok("events", "send", "CTL_SEND", "a=1", "b=x y").strip() == "sent CTL_SEND a=1 b='x y'"
        assert run.json("events", "send", "CTL_SEND") == {}
        out = run.listen("CTL_SEND", "--client-id", str(client_id), "--count", "2")
        assert out.splitlines() == ["CTL_SEND a=1 b='x y'", "CTL_SEND"]

    def test_send_errors(self, run: Run) -> None:
        assert run.error("events", "send", "bad name").startswith("error: ERROR_PARAM_INVALID: ")
        assert "expected NAME=VALUE" in run.error("events", "send", "X", "novalue", rc=2)

    def test_listen_resume_and_interrupt(self, run: Run, server: RpcServer) -> None:
        events = [Event(name="CTL_A", properties=props(k="1")), Event(name="CTL_B"), Event(name="CTL_A")]
        client_id = queue_with_events(server, "CTL_A", events)
        code, out, err = run("events", "listen", "CTL_A", "--client-id", str(client_id), "--count", "2")
        assert code == 0
        assert out.splitlines() == ["CTL_A k=1", "CTL_A"]  # CTL_B filtered out
        assert err == f"listening with client id {client_id}\n"
        # The CLI interrupted its queue on exit: a second interrupt finds it already interrupted
        with pytest.raises(RpcException) as exc:
            server.client.events.interrupt(EventInterrupt(client_id=client_id))
        assert exc.value.rc == ResultCode.ERROR_STATE_UNEXPECTED

    def test_listen_json(self, run: Run, server: RpcServer) -> None:
        client_id = queue_with_events(server, "CTL_J", [Event(name="CTL_J", properties=props(k="v"))])
        out = run.listen("--json", "--client-id", str(client_id), "--count", "1")
        assert [json.loads(line) for line in out.splitlines()] == [
            {"name": "CTL_J", "properties": [{"name": "k", "value": "v"}]}
        ]

    def test_listen_duration(self, run: Run) -> None:
        code, out, _ = run("events", "listen", "CTL_NEVER", "--timeout-s", "0.3")
        assert (code, out) == (0, "")  # no --count: the duration is just where it stops
        err = run.error("events", "listen", "CTL_NEVER", "--timeout-s", "0.3", "--count", "1")
        assert err.splitlines()[-1] == "error: ERROR_REQUEST_TIMEOUT: 0 of 1 event(s) received within 0.3s"

    def test_listen_unknown_client_id(self, run: Run) -> None:
        assert run.error("events", "listen", "--client-id", "999999").startswith("error: ERROR_ITEM_UNKNOWN: ")

    def test_listen_live(self, server: RpcServer, monkeypatch: pytest.MonkeyPatch) -> None:
        listening = Listening(monkeypatch, server.port, "CTL_LIVE", "--count", "1")
        listening.wait()
        server.client.events.send(Event(name="CTL_LIVE", properties=props(n="1")))
        assert listening.join() == 0
        assert listening.out.getvalue() == "CTL_LIVE n=1\n"

    @pytest.mark.parametrize("count", [None, "5"])
    def test_listen_ends_when_interrupted_elsewhere(
        self, server: RpcServer, monkeypatch: pytest.MonkeyPatch, count: str | None
    ) -> None:
        listening = Listening(monkeypatch, server.port, *(["--count", count] if count else []))
        server.client.events.interrupt(EventInterrupt(client_id=listening.wait()))
        assert listening.join() == (1 if count else 0)
        err = listening.err.getvalue()
        assert "interrupted or resumed elsewhere" in err
        if count:
            assert err.splitlines()[-1] == "error: ERROR_STATE_UNEXPECTED: 0 of 5 event(s) received"

    def test_listen_resumes_its_queue_when_the_server_restarts(
        self, servers: Servers, folders: Any, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """Issue 13, item 14: a server shutdown (ERROR_STREAM_SHUTDOWN) no longer ends `events listen`: it
        reconnects and resumes its queue on the server started again (same port, same workspace)."""
        first = servers(0, [], folders=folders, with_events=True)
        port = first.port
        listening = Listening(monkeypatch, port, "CTL_RESTART", "--count", "2")
        client_id = listening.wait()
        first.client.events.send(Event(name="CTL_RESTART", properties=props(n="1")))
        assert wait_until_text(listening.out, "CTL_RESTART n=1\n")
        first.shutdown()
        assert first.wait_shutdown(30)
        assert wait_until_text(listening.err, "reconnecting...")
        second = servers(port, [], folders=folders, with_events=True)  # its queue restored from queues.json
        assert wait_until_text(listening.err, f"resumed event queue {client_id}")
        second.client.events.send(Event(name="CTL_RESTART", properties=props(n="2")))
        assert listening.join() == 0
        assert listening.out.getvalue() == "CTL_RESTART n=1\nCTL_RESTART n=2\n"

    def test_ctrl_c_interrupts_queue(self, server: RpcServer) -> None:
        proc = subprocess.Popen(
            [sys.executable, "-m", "grpc_helper.ctl", "--port", str(server.port), "events", "listen"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            assert proc.stderr is not None
            with selectors.DefaultSelector() as sel:
                sel.register(proc.stderr, selectors.EVENT_READ)
                assert sel.select(60), "the CLI did not start listening"
            line = proc.stderr.readline()
            assert line.startswith("listening with client id "), line
            client_id = int(line.split()[-1])
            proc.send_signal(signal.SIGINT)
            assert proc.wait(30) == 130
            with pytest.raises(RpcException) as exc:
                server.client.events.interrupt(EventInterrupt(client_id=client_id))
            assert exc.value.rc == ResultCode.ERROR_STATE_UNEXPECTED
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()


def test_format_event_quotes_values() -> None:
    event = Event(name="E", properties=props(a="", b="it's", c="plain"))
    assert ctl.format_event(event) == "E a='' b='it'\"'\"'s' c=plain"


def test_output_into_a_closed_pipe_is_not_an_error(server: RpcServer) -> None:
    """`grpc-helper --json info | head -1`: no traceback, exit 0."""
    reader_gone = subprocess.run(
        ["bash", "-c", f"{sys.executable} -m grpc_helper.ctl --port {server.port} --json info | head -c 0; "
         "exit ${PIPESTATUS[0]}"],
        capture_output=True,
        text=True,
        timeout=60,
    )  # fmt: skip
    assert reader_gone.returncode == 0, reader_gone.stderr
    assert "Traceback" not in reader_gone.stderr
