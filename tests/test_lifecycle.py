"""The server lifecycle without gaps: calls arriving while the managers load wait for them, the
shutdown states as seen from outside, and `graceful_exit` (in this process, and in a real
program receiving real signals)."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from grpc_helper import RpcClient, RpcException, RpcServer, RpcStaticConfig, graceful_exit
from grpc_helper.api import Filter, ResultCode, ShutdownRequest
from grpc_helper.testing import rc_of
from grpc_helper_samples.api import EchoApiVersion, EchoRequest, EchoResponse
from grpc_helper_samples.api.echo_pb2_grpc import EchoServiceStub

from helpers import BlockingEcho, EchoManager, Servers, accepts_connections, echo_descriptor, wait_until

WAIT = 30.0  # bound of every wait for something that should happen


def echo_client(port: int, timeout: float | None = None) -> RpcClient:
    return RpcClient("127.0.0.1", port, {"echo": (EchoServiceStub, EchoApiVersion.ECHO_API_CURRENT)}, timeout=timeout)


def health_of(port: int, service: str = "") -> int:
    """The health status of `service` on the server on `port` ("": the server as a whole)."""
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        request = health_pb2.HealthCheckRequest(service=service)
        return int(health_pb2_grpc.HealthStub(channel).Check(request, timeout=WAIT).status)


class SlowLoad(EchoManager):
    """An echo manager whose `_load` blocks until `release` is set (then raises if `fail`), and whose
    `echo` says whether it was loaded when called. Its logger is at DEBUG, so `arrived` is set as soon
    as a call's entry trace is written: the call has reached the server."""

    def __init__(self, fail: bool = False) -> None:
        super().__init__()
        self.fail = fail
        self.loading, self.release, self.arrived = threading.Event(), threading.Event(), threading.Event()
        self.logger.setLevel(logging.DEBUG)  # restored after the test (conftest's restore_loggers)
        arrived = self.arrived

        class Arrivals(logging.Handler):
            def emit(self, record: logging.LogRecord) -> None:
                if ">>>" in record.getMessage():
                    arrived.set()

        self.logger.addHandler(Arrivals())

    def _load(self) -> None:
        self.loading.set()
        assert self.release.wait(WAIT)
        if self.fail:
            raise RpcException("cannot load", ResultCode.ERROR_MODEL_INVALID)
        super()._load()

    def echo(self, request: EchoRequest) -> EchoResponse:
        return EchoResponse(text=f"{request.text}:{'loaded' if self.loaded else 'NOT LOADED'}")


class Starting:
    """An `RpcServer` being constructed in a background thread (its constructor returns once loaded)."""

    def __init__(self, servers: Servers, manager: SlowLoad, **kwargs: Any) -> None:
        self.manager = manager
        self.server: RpcServer | None = None
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, args=(servers, kwargs))
        self.thread.start()
        assert manager.loading.wait(WAIT), "the manager's _load never ran"
        assert manager.server is not None
        self.port = manager.server.port  # bound and listening before the managers load

    def _run(self, servers: Servers, kwargs: dict[str, Any]) -> None:
        try:
            self.server = servers(0, [echo_descriptor(self.manager)], **kwargs)
        except BaseException as exc:
            self.error = exc

    def finish(self) -> None:
        self.manager.release.set()
        self.thread.join(WAIT)
        assert not self.thread.is_alive()


@pytest.fixture
def starting(servers: Servers) -> Iterator[Callable[..., Starting]]:
    """`starting(manager, **server_args)`: a server stuck in its managers' loading until `manager.release`."""
    started: list[Starting] = []

    def start(manager: SlowLoad, **kwargs: Any) -> Starting:
        started.append(Starting(servers, manager, **kwargs))
        return started[-1]

    yield start
    for s in started:  # never leave a constructor blocked
        s.finish()


class Call:
    """A call made in a background thread: `result` or `error` once `done`."""

    def __init__(self, fn: Callable[[], Any]) -> None:
        self.result: Any = None
        self.error: RpcException | None = None
        self.done = threading.Event()
        self.duration = 0.0
        threading.Thread(target=self._run, args=(fn,), daemon=True).start()

    def _run(self, fn: Callable[[], Any]) -> None:
        t0 = time.monotonic()
        try:
            self.result = fn()
        except RpcException as exc:
            self.error = exc
        finally:
            self.duration = time.monotonic() - t0
            self.done.set()


class TestCallsDuringLoad:
    def test_a_call_waits_for_its_manager_to_be_loaded(self, starting: Callable[..., Starting]) -> None:
        manager = SlowLoad()
        s = starting(manager)
        client = echo_client(s.port)
        unary = Call(lambda: client.echo.echo(EchoRequest(text="a")).text)
        stream = Call(lambda: [r.text for r in client.echo.repeat(EchoRequest(text="s", count=2))])
        assert manager.arrived.wait(WAIT), "the call never reached the server"
        assert not unary.done.wait(0.3), f"answered while loading: {unary.result!r}"
        s.finish()
        assert unary.done.wait(WAIT)
        assert stream.done.wait(WAIT)
        assert unary.result == "a:loaded"
        assert stream.result == ["s", "s"]
        assert stream.error is None
        assert s.server is not None
        assert s.server.is_running

    def test_health_is_not_serving_until_loaded(self, starting: Callable[..., Starting]) -> None:
        s = starting(SlowLoad())
        not_serving, serving = health_pb2.HealthCheckResponse.NOT_SERVING, health_pb2.HealthCheckResponse.SERVING
        # srv is loaded before echo (default services first): it answers already
        assert health_of(s.port, "RpcServerService") == serving
        assert health_of(s.port, "EchoService") == not_serving
        assert health_of(s.port) == not_serving
        s.finish()
        assert health_of(s.port, "EchoService") == serving
        assert health_of(s.port) == serving

    def test_a_load_may_call_the_services_loaded_before_it(self, servers: Servers) -> None:
        class CallsItsServer(EchoManager):
            def _load(self) -> None:
                self.services = [i.name for i in self.client.srv.info(Filter(), timeout=WAIT).items]
                super()._load()

        manager = CallsItsServer()
        servers(0, [echo_descriptor(manager)])
        assert manager.services == ["srv", "config", "log", "echo"]

    def test_a_short_deadline_expires_and_the_server_stays_fine(self, starting: Callable[..., Starting]) -> None:
        manager = SlowLoad()
        s = starting(manager)
        with pytest.raises(RpcException) as exc:
            echo_client(s.port).echo.echo(EchoRequest(text="a"), timeout=0.5)
        # The server gives up waiting at the caller's deadline: its answer races with gRPC's own
        if exc.value.rc == ResultCode.ERROR_RPC:
            assert "DEADLINE_EXCEEDED" in str(exc.value)
        else:
            assert exc.value.rc == ResultCode.ERROR_REQUEST_TIMEOUT, exc.value
        s.finish()
        assert s.error is None
        assert s.server is not None
        assert echo_client(s.port).echo.echo(EchoRequest(text="b"), timeout=WAIT).text == "b:loaded"

    def test_without_deadline_the_wait_is_bounded_by_the_client_timeout(
        self, starting: Callable[..., Starting]
    ) -> None:
        s = starting(SlowLoad())
        RpcStaticConfig.CLIENT_TIMEOUT.update("0.5")  # read when a call starts waiting
        t0 = time.monotonic()
        assert rc_of(lambda: echo_client(s.port).echo.echo(EchoRequest(text="a"))) == ResultCode.ERROR_REQUEST_TIMEOUT
        assert time.monotonic() - t0 < WAIT / 2
        s.finish()
        assert echo_client(s.port).echo.echo(EchoRequest(text="b")).text == "b:loaded"

    def test_a_failed_load_wakes_the_waiting_calls(self, starting: Callable[..., Starting]) -> None:
        manager = SlowLoad(fail=True)
        s = starting(manager)
        call = Call(lambda: echo_client(s.port).echo.echo(EchoRequest(text="a")))
        assert manager.arrived.wait(WAIT)
        s.finish()
        assert isinstance(s.error, RpcException)
        assert s.error.rc == ResultCode.ERROR_MODEL_INVALID
        assert call.done.wait(WAIT)
        assert call.error is not None, f"served by a manager that failed to load: {call.result!r}"
        assert call.error.rc == ResultCode.ERROR_STATE_UNEXPECTED
        assert "failed to start" in str(call.error)
        assert "cannot load" in str(call.error)
        assert call.duration < WAIT / 2  # woken, not timed out
        assert not accepts_connections(s.port)


class TestStates:
    def test_running_while_starting_and_shut_down_once_started(self, starting: Callable[..., Starting]) -> None:
        manager = SlowLoad()
        s = starting(manager)
        srv = manager.server
        assert isinstance(srv, RpcServer)
        assert srv.is_running
        assert srv.wait_shutdown(0) is False
        # Asked from another thread while starting, a shutdown waits for the start, then runs
        stopper = threading.Thread(target=srv.shutdown)
        stopper.start()
        stopper.join(0.3)
        assert stopper.is_alive()
        assert srv.is_running
        s.finish()
        stopper.join(WAIT)
        assert not stopper.is_alive()
        assert s.server is srv
        assert s.error is None
        assert manager.loaded
        assert manager.shut_down
        assert srv.wait_shutdown(0)
        assert not srv.is_running

    def test_shutdown_from_a_load_fails_the_start(self, servers: Servers) -> None:
        class StopsItsServer(EchoManager):
            def _load(self) -> None:
                assert self.server is not None
                self.server.shutdown()

        with pytest.raises(RpcException) as exc:
            servers(0, [echo_descriptor(StopsItsServer())])
        assert exc.value.rc == ResultCode.ERROR_STATE_UNEXPECTED

    def test_stop_cuts_a_graceful_shutdown_short(self, servers: Servers) -> None:
        stuck = BlockingEcho()
        srv = servers(0, [echo_descriptor(stuck)], cli_config={"rpc-shutdown-grace": "60"})
        call = Call(lambda: echo_client(srv.port).echo.echo(EchoRequest()))
        assert stuck.started.wait(WAIT)
        stopper = threading.Thread(target=srv.shutdown)
        stopper.start()
        assert wait_until(lambda: not accepts_connections(srv.port))  # shutting down, the call pending
        assert srv.is_running
        assert not call.done.is_set()
        t0 = time.monotonic()
        srv.stop(0)
        assert time.monotonic() - t0 < WAIT / 2
        stopper.join(WAIT)
        assert not stopper.is_alive()
        assert not srv.is_running
        assert call.done.wait(WAIT)
        assert call.error is not None
        assert call.error.rc == ResultCode.ERROR_RPC
        stuck.release.set()

    def test_stop_ends_a_remote_shutdown_wait(self, servers: Servers) -> None:
        srv = servers(0, [])
        srv.client.srv.shutdown(ShutdownRequest(timeout=60))
        assert wait_until(lambda: not accepts_connections(srv.port))
        assert srv.is_running  # the requested wait
        t0 = time.monotonic()
        srv.stop()
        assert not srv.is_running
        assert srv.wait_shutdown(0)
        assert time.monotonic() - t0 < WAIT / 2


@pytest.mark.skipif(threading.current_thread() is not threading.main_thread(), reason="signals: main thread only")
class TestGracefulExitInProcess:
    def test_handlers_installed_then_restored(self, servers: Servers) -> None:
        srv = servers(0, [])
        previous = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
        with graceful_exit(srv) as handler:
            for sig in previous:
                assert getattr(signal.getsignal(sig), "__self__", None) is handler
            assert srv.wait_shutdown(0.05) is False  # nested: keeps the outer handlers in place...
            for sig in previous:
                assert getattr(signal.getsignal(sig), "__self__", None) is handler
        assert {sig: signal.getsignal(sig) for sig in previous} == previous  # ...restored when the block ends
        assert srv.is_running

    def test_nothing_installed_off_the_main_thread(self, servers: Servers) -> None:
        srv = servers(0, [])
        seen: list[Any] = []

        def run() -> None:
            with graceful_exit(srv):
                seen.append(signal.getsignal(signal.SIGTERM))

        previous = signal.getsignal(signal.SIGTERM)
        thread = threading.Thread(target=run)
        thread.start()
        thread.join(WAIT)
        assert seen == [previous]

    def test_sigterm_shuts_every_server_down(self, servers: Servers) -> None:
        first, second = servers(0, []), servers(0, [])
        with graceful_exit(first) as handler:
            handler.add(second)
            os.kill(os.getpid(), signal.SIGTERM)  # handled on this thread, at once
            assert wait_until(lambda: not first.is_running and not second.is_running)
            assert handler.received == 1
            late = servers(0, [])
            handler.add(late)  # added after the signal: stopped at once too
            assert wait_until(lambda: not late.is_running)


# --- real signals to a real program ---

PROGRAM = """
import json, sys, threading
from grpc_helper import RpcCliParser, RpcManager, RpcServer, RpcServiceDescriptor, current_call, graceful_exit
import grpc_helper_samples
from grpc_helper_samples.api import EchoApiVersion, EchoRequest, EchoResponse
from grpc_helper_samples.api.echo_pb2_grpc import (
    EchoServiceServicer, EchoServiceStub, add_EchoServiceServicer_to_server
)

def say(**what):
    print(json.dumps(what), flush=True)

class Blocking(EchoServiceServicer, RpcManager):
    def __init__(self):
        super().__init__()
        self.release = threading.Event()
        threading.Thread(target=self.read_stdin, daemon=True).start()

    def read_stdin(self):
        for line in sys.stdin:
            if line.strip() == "release":
                self.release.set()

    def echo(self, request: EchoRequest) -> EchoResponse:
        call = current_call()
        call.context.add_callback(self.release.set)  # a cancelled call ends now
        say(started=request.text)
        released = self.release.wait(120)
        return EchoResponse(text="released" if released else "timed out")

args = RpcCliParser("lifecycle test").with_rpc_args(0).parse(sys.argv[1:])
descriptor = RpcServiceDescriptor(
    grpc_helper_samples, "echo", EchoApiVersion, Blocking(), add_EchoServiceServicer_to_server, EchoServiceStub
)
server = RpcServer(args.port, [descriptor], args.folders, args.config)
with graceful_exit(server) as signals:
    say(port=server.port)
    server.wait_shutdown()
say(signals=signals.received, running=server.is_running)
"""


class Program:
    """The program above, run with `-c` config items; reads its JSON lines from stdout."""

    def __init__(self, root: Path, *config: str) -> None:
        script = root / "lifecycle_program.py"
        script.write_text(textwrap.dedent(PROGRAM))
        cmd = [sys.executable, str(script), "-w", str(root / "wks"), *(a for c in config for a in ("-c", c))]
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        self.lines: list[dict[str, Any]] = []
        self._new_line = threading.Condition()
        self._reader = threading.Thread(target=self._read, args=(self.proc.stdout,), daemon=True)
        self._reader.start()
        self.port = int(self.wait_for("port"))

    def _read(self, stream: IO[str]) -> None:
        for line in stream:
            if not line.startswith("{"):
                continue  # a log line: a program logs INFO to stdout by default (its own lines are JSON)
            with self._new_line:
                self.lines.append(json.loads(line))
                self._new_line.notify_all()

    def wait_for(self, key: str) -> Any:
        """The value of the first line with `key` (bounded wait)."""

        def found() -> dict[str, Any] | None:
            return next((line for line in self.lines if key in line), None)

        with self._new_line:
            assert self._new_line.wait_for(found, WAIT), f"no {key!r} line; got {self.lines}"
            line = found()
        assert line is not None
        return line[key]

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(WAIT)
        self._reader.join(WAIT)  # up to the end of its output
        for pipe in (self.proc.stdin, self.proc.stdout):
            if pipe is not None:
                pipe.close()


@pytest.fixture
def program(tmp_path: Path) -> Iterator[Callable[..., Program]]:
    started: list[Program] = []

    def start(*config: str) -> Program:
        started.append(Program(tmp_path, *config))
        return started[-1]

    yield start
    for p in started:
        p.kill()


class TestGracefulExitInAProgram:
    def test_sigterm_lets_the_pending_call_finish_then_exits_0(self, program: Callable[..., Program]) -> None:
        prog = program("rpc-shutdown-grace=60")
        call = Call(lambda: echo_client(prog.port).echo.echo(EchoRequest(text="pending")).text)
        assert prog.wait_for("started") == "pending"
        prog.proc.send_signal(signal.SIGTERM)
        assert wait_until(lambda: not accepts_connections(prog.port))  # no new calls...
        assert prog.proc.poll() is None
        assert not call.done.is_set()
        assert prog.proc.stdin is not None
        prog.proc.stdin.write("release\n")
        prog.proc.stdin.flush()
        assert call.done.wait(WAIT)
        assert call.result == "released"
        assert prog.proc.wait(WAIT) == 0
        assert prog.wait_for("signals") == 1
        assert prog.wait_for("running") is False

    def test_a_second_signal_stops_at_once(self, program: Callable[..., Program]) -> None:
        prog = program("rpc-shutdown-grace=60")
        call = Call(lambda: echo_client(prog.port).echo.echo(EchoRequest(text="stuck")).text)
        assert prog.wait_for("started") == "stuck"
        prog.proc.send_signal(signal.SIGTERM)
        assert wait_until(lambda: not accepts_connections(prog.port))
        assert prog.proc.poll() is None
        assert not call.done.is_set()
        t0 = time.monotonic()
        prog.proc.send_signal(signal.SIGINT)
        assert call.done.wait(WAIT)
        assert call.error is not None
        assert call.error.rc == ResultCode.ERROR_RPC
        assert prog.proc.wait(WAIT) == 0
        assert time.monotonic() - t0 < WAIT / 2  # long before the 60 s grace
        assert prog.wait_for("signals") == 2
