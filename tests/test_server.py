"""RpcServer lifecycle, dispatch, default services and debug dumps, on real servers."""

from __future__ import annotations

import os
import signal
import socket
import threading
import time
from collections.abc import Iterable
from pathlib import Path

import grpc
import pytest

import grpc_helper
import grpc_helper_samples
from grpc_helper import RpcClient, RpcException, RpcManager, RpcServiceDescriptor, RpcStaticConfig, current_call
from grpc_helper.api import Filter, Result, ResultCode, ResultStatus, ShutdownRequest
from grpc_helper_samples.api import EchoApiVersion, EchoRequest, EchoResponse
from grpc_helper_samples.api.echo_pb2_grpc import EchoServiceServicer, EchoServiceStub

from helpers import (
    BlockingEcho,
    EchoManager,
    Servers,
    accepts_connections,
    echo_descriptor,
    refusing_port,
    wait_until,
)


def echo_client(port: int, version: int | None = EchoApiVersion.ECHO_API_CURRENT, **kwargs) -> RpcClient:
    return RpcClient("127.0.0.1", port, {"echo": (EchoServiceStub, version)}, **kwargs)


class TestLifecycle:
    def test_port_zero_picks_a_free_port(self, servers: Servers) -> None:
        srv = servers(0, [echo_descriptor()])
        assert srv.port > 0
        assert srv.is_running
        assert srv.client.echo.echo(EchoRequest(text="hi")).text == "hi"

    def test_busy_port_by_another_server(self, servers: Servers) -> None:
        srv = servers(0, [])
        with pytest.raises(RpcException) as exc:
            servers(srv.port, [])
        assert exc.value.rc == ResultCode.ERROR_PORT_BUSY
        assert str(srv.port) in str(exc.value)

    def test_busy_port_by_a_plain_socket(self, servers: Servers) -> None:
        with socket.socket() as sock:
            sock.bind(("0.0.0.0", 0))
            sock.listen()
            with pytest.raises(RpcException) as exc:
                servers(sock.getsockname()[1], [])
        assert exc.value.rc == ResultCode.ERROR_PORT_BUSY

    def test_load_and_shutdown_hooks(self, servers: Servers) -> None:
        manager = EchoManager()
        srv = servers(0, [echo_descriptor(manager)])
        assert manager.loaded
        assert not manager.shut_down
        assert manager.client is srv.client
        assert manager.folders is srv.folders
        assert manager.logger.name == "EchoManager"  # named after its class, not after the service
        srv.shutdown()
        assert manager.shut_down
        assert not srv.is_running

    def test_shutdown_is_idempotent_and_thread_safe(self, servers: Servers) -> None:
        srv = servers(0, [echo_descriptor()])
        threads = [threading.Thread(target=srv.shutdown) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        assert not any(t.is_alive() for t in threads)
        srv.shutdown()
        assert srv.wait_shutdown(0)

    def test_wait_shutdown_times_out_while_running(self, servers: Servers) -> None:
        srv = servers(0, [])
        assert srv.wait_shutdown(0.05) is False
        srv.shutdown()
        assert srv.wait_shutdown(5) is True

    def test_calls_are_refused_once_shut_down(self, servers: Servers) -> None:
        srv = servers(0, [echo_descriptor()])
        client = echo_client(srv.port, timeout=None)
        assert client.echo.echo(EchoRequest(text="a")).text == "a"
        srv.shutdown()
        with pytest.raises(RpcException) as exc:
            client.echo.echo(EchoRequest(text="b"))
        assert exc.value.rc == ResultCode.ERROR_RPC

    def test_shutdown_waits_for_pending_calls(self, servers: Servers) -> None:
        slow = BlockingEcho()
        started, release = slow.started, slow.release
        srv = servers(0, [echo_descriptor(slow)])
        result: list[str] = []
        caller = threading.Thread(target=lambda: result.append(srv.client.echo.echo(EchoRequest()).text))
        caller.start()
        assert started.wait(10)
        stopper = threading.Thread(target=srv.shutdown)
        stopper.start()
        stopper.join(0.5)
        assert stopper.is_alive(), "shutdown must wait for the pending call"
        release.set()
        stopper.join(30)
        caller.join(30)
        assert result == ["done"]

    def test_shutdown_grace_cancels_stuck_calls(self, servers: Servers) -> None:
        stuck = BlockingEcho()
        started, release = stuck.started, stuck.release
        srv = servers(0, [echo_descriptor(stuck)])
        RpcStaticConfig.SHUTDOWN_GRACE.update("0.5")  # read when used: takes effect on the running server
        errors: list[RpcException] = []

        def call() -> None:
            try:
                echo_client(srv.port, timeout=None).echo.echo(EchoRequest())
            except RpcException as exc:
                errors.append(exc)

        caller = threading.Thread(target=call)
        caller.start()
        assert started.wait(10)
        t0 = time.monotonic()
        srv.shutdown()
        assert time.monotonic() - t0 < 10
        caller.join(10)
        release.set()
        assert errors
        assert errors[0].rc == ResultCode.ERROR_RPC

    def test_remote_shutdown_answers_at_once(self, servers: Servers) -> None:
        srv = servers(0, [])
        assert srv.client.srv.shutdown(ShutdownRequest(timeout=-1)).r.code == ResultCode.OK
        assert srv.wait_shutdown(30)
        assert not srv.is_running

    def test_remote_shutdown_timeout_delays_termination(self, servers: Servers) -> None:
        srv = servers(0, [])
        t0 = time.monotonic()
        srv.client.srv.shutdown(ShutdownRequest(timeout=1))
        assert wait_until(lambda: not accepts_connections(srv.port))  # stopped serving at once...
        assert srv.wait_shutdown(30)  # ...terminated after the requested wait
        assert time.monotonic() - t0 >= 1.0

    def test_remote_shutdown_zero_uses_config_timeout(self, servers: Servers) -> None:
        srv = servers(0, [])
        RpcStaticConfig.SHUTDOWN_TIMEOUT.update("1")
        t0 = time.monotonic()
        srv.client.srv.shutdown(ShutdownRequest(timeout=0))
        assert srv.wait_shutdown(30)
        assert time.monotonic() - t0 >= 1.0

    def test_sigterm_delivered_to_another_thread(self, servers: Servers) -> None:
        """The kernel may deliver SIGTERM to any thread (e.g. one of gRPC's): it must still shut down."""
        srv = servers(0, [])
        previous = signal.getsignal(signal.SIGTERM)
        done = threading.Event()
        receiver = threading.Thread(target=done.wait, args=(30,))
        receiver.start()
        assert receiver.ident is not None
        threading.Timer(0.2, signal.pthread_kill, (receiver.ident, signal.SIGTERM)).start()
        t0 = time.monotonic()
        try:
            assert srv.wait_shutdown(20)
            assert time.monotonic() - t0 < 10
        finally:
            done.set()
            receiver.join(30)
        assert not srv.is_running
        assert signal.getsignal(signal.SIGTERM) is previous

    def test_sigterm_during_wait_shutdown(self, servers: Servers) -> None:
        srv = servers(0, [])
        previous = signal.getsignal(signal.SIGTERM)
        threading.Timer(0.2, os.kill, (os.getpid(), signal.SIGTERM)).start()
        assert srv.wait_shutdown(30)
        assert not srv.is_running
        assert signal.getsignal(signal.SIGTERM) is previous


class TestServices:
    def test_info_lists_default_services_first(self, servers: Servers) -> None:
        srv = servers(0, [echo_descriptor()], with_events=True)
        items = srv.client.srv.info(Filter()).items
        assert [i.name for i in items] == ["srv", "config", "log", "events", "echo"]
        lib = f"{grpc_helper.__title__}:{grpc_helper.__version__}"
        assert [i.version for i in items[:4]] == [lib] * 4
        echo = items[4]
        assert echo.version == "grpc-helper-samples:1.0.0"
        assert (echo.supported_api_version, echo.current_api_version) == (1, 2)
        assert not echo.is_proxy
        assert (items[1].supported_api_version, items[1].current_api_version) == (1, 2)  # config

    def test_info_filter_and_unknown(self, servers: Servers) -> None:
        srv = servers(0, [echo_descriptor()])
        assert [i.name for i in srv.client.srv.info(Filter(names=["echo", "log"])).items] == ["echo", "log"]
        with pytest.raises(RpcException) as exc:
            srv.client.srv.info(Filter(names=["nope"]))
        assert exc.value.rc == ResultCode.ERROR_ITEM_UNKNOWN

    def test_auto_client_stubs(self, servers: Servers) -> None:
        srv = servers(0, [echo_descriptor()], with_events=True)
        for name in ("srv", "config", "log", "events", "echo"):
            assert hasattr(srv.client, name)
        assert srv.auto_client is srv.client
        assert srv.client.timeout == RpcStaticConfig.CLIENT_TIMEOUT.float_val

    def test_duplicate_service_names(self, servers: Servers) -> None:
        with pytest.raises(RpcException) as exc:
            servers(0, [echo_descriptor(), echo_descriptor()])
        assert exc.value.rc == ResultCode.ERROR_MODEL_INVALID


class TestDispatch:
    def test_four_call_kinds(self, servers: Servers) -> None:
        c = servers(0, [echo_descriptor()]).client
        assert c.echo.echo(EchoRequest(text="x", payload=b"\x00\x01")).payload == b"\x00\x01"
        assert [m.index for m in c.echo.repeat(EchoRequest(text="r", count=5))] == [0, 1, 2, 3, 4]
        collected = c.echo.collect(EchoRequest(text=t) for t in "abc")
        assert (collected.text, collected.index) == ("abc", 3)
        assert [m.text for m in c.echo.chat(EchoRequest(text=t) for t in ["a", "b"])] == ["A", "B"]

    def test_rpc_exception_becomes_result(self, servers: Servers) -> None:
        srv = servers(0, [echo_descriptor()])
        with pytest.raises(RpcException) as exc:
            srv.client.echo.echo(EchoRequest(text=f"fail:{ResultCode.ERROR_ITEM_BUSY}"))
        assert exc.value.rc == ResultCode.ERROR_ITEM_BUSY
        assert "asked to fail" in str(exc.value)
        assert "Traceback" in exc.value.stack

    def test_other_exception_is_error(self, servers: Servers) -> None:
        srv = servers(0, [echo_descriptor()])
        raw = echo_client(srv.port, exception=False).echo.echo(EchoRequest(text="crash"))
        assert raw.r.code == ResultCode.ERROR
        assert raw.r.msg == "unexpected crash"
        assert "ValueError" in raw.r.stack

    def test_stream_exception_is_last_message(self, servers: Servers) -> None:
        srv = servers(0, [echo_descriptor()])
        msgs = list(echo_client(srv.port, exception=False).echo.repeat(EchoRequest(text="crash", count=2)))
        assert [m.r.code for m in msgs] == [ResultCode.OK, ResultCode.OK, ResultCode.ERROR_ITEM_BUSY]
        with pytest.raises(RpcException) as exc:
            list(srv.client.echo.repeat(EchoRequest(text="crash", count=2)))
        assert exc.value.rc == ResultCode.ERROR_ITEM_BUSY

    def test_custom_codes_are_not_raised(self, servers: Servers) -> None:
        srv = servers(0, [echo_descriptor()])
        out = srv.client.echo.echo(EchoRequest(text=f"fail:{ResultCode.ERROR_CUSTOM + 5}"))
        assert out.r.code == ResultCode.ERROR_CUSTOM + 5

    def test_custom_exception_type(self, servers: Servers) -> None:
        class MyError(Exception):
            def __init__(self, msg: str, rc: int) -> None:
                super().__init__(msg)
                self.rc = rc

        srv = servers(0, [echo_descriptor()])
        with pytest.raises(MyError) as exc:
            echo_client(srv.port, custom_exception=MyError).echo.echo(EchoRequest(text="fail:21"))
        assert exc.value.rc == ResultCode.ERROR_PARAM_INVALID

    def test_unimplemented_method(self, servers: Servers) -> None:
        class Partial(EchoServiceServicer, RpcManager):
            def echo(self, _request: EchoRequest) -> EchoResponse:
                return EchoResponse(text="ok")

            def repeat(self, _request, _context):  # grpc-native signature: not served by the helper
                yield EchoResponse()

            def collect(self, _request):  # no return annotation: not served
                return EchoResponse()

        srv = servers(0, [echo_descriptor(Partial())])
        assert srv.client.echo.echo(EchoRequest()).text == "ok"
        for call in (
            lambda: list(srv.client.echo.repeat(EchoRequest(count=1))),
            lambda: srv.client.echo.collect(iter([EchoRequest()])),
            lambda: list(srv.client.echo.chat(iter([EchoRequest()]))),
        ):
            with pytest.raises(RpcException) as exc:
                call()
            assert exc.value.rc == ResultCode.ERROR_RPC
            assert "UNIMPLEMENTED" in str(exc.value)
            assert isinstance(exc.value.__cause__, grpc.RpcError)

    def test_result_return_type_is_refused(self, servers: Servers) -> None:
        class Bad(EchoServiceServicer, RpcManager):
            def echo(self, _request: EchoRequest) -> Result:
                return Result()

        with pytest.raises(RpcException) as exc:
            servers(0, [echo_descriptor(Bad())])
        assert exc.value.rc == ResultCode.ERROR_MODEL_INVALID
        assert "ResultStatus" in str(exc.value)

    def test_current_call_sees_metadata(self, servers: Servers) -> None:
        seen: dict[str, str] = {}

        class Spy(EchoManager):
            def echo(self, _request: EchoRequest) -> EchoResponse:
                call = current_call()
                assert call is not None
                seen.update(dict(call.metadata))
                return EchoResponse()

        srv = servers(0, [echo_descriptor(Spy())])
        echo_client(srv.port, name="tester").echo.echo(EchoRequest())
        assert seen["client"] == "tester"
        assert seen["api_version"] == str(EchoApiVersion.ECHO_API_CURRENT)
        assert seen["host"]
        assert seen["ip"]


class TestApiVersion:
    def test_client_too_old(self, servers: Servers) -> None:
        srv = servers(0, [echo_descriptor()])
        with pytest.raises(RpcException) as exc:
            echo_client(srv.port, version=0).echo.echo(EchoRequest())
        assert exc.value.rc == ResultCode.ERROR_API_CLIENT_TOO_OLD

    def test_server_too_old(self, servers: Servers) -> None:
        srv = servers(0, [echo_descriptor()])
        with pytest.raises(RpcException) as exc:
            echo_client(srv.port, version=3).echo.echo(EchoRequest())
        assert exc.value.rc == ResultCode.ERROR_API_SERVER_TOO_OLD

    def test_supported_range_is_accepted(self, servers: Servers) -> None:
        srv = servers(0, [echo_descriptor()])
        assert echo_client(srv.port, version=1).echo.echo(EchoRequest(text="v1")).text == "v1"
        assert echo_client(srv.port, version=None).echo.echo(EchoRequest(text="none")).text == "none"

    def test_stream_version_error_is_single_message(self, servers: Servers) -> None:
        srv = servers(0, [echo_descriptor()])
        msgs = list(echo_client(srv.port, version=9, exception=False).echo.repeat(EchoRequest(count=3)))
        assert [m.r.code for m in msgs] == [ResultCode.ERROR_API_SERVER_TOO_OLD]

    def test_non_integer_version_metadata(self, servers: Servers) -> None:
        srv = servers(0, [echo_descriptor()])
        with grpc.insecure_channel(f"127.0.0.1:{srv.port}") as channel:
            out = EchoServiceStub(channel).echo(EchoRequest(), metadata=(("api_version", "abc"),), timeout=10)
        assert out.r.code == ResultCode.ERROR_PARAM_INVALID
        assert "abc" in out.r.msg


class TestClient:
    def test_dead_port_without_timeout_fails_at_once(self) -> None:
        t0 = time.monotonic()
        with refusing_port() as port, pytest.raises(RpcException) as exc:
            echo_client(port, timeout=None).echo.echo(EchoRequest())
        assert exc.value.rc == ResultCode.ERROR_RPC
        assert isinstance(exc.value.__cause__, grpc.RpcError)
        assert time.monotonic() - t0 < 5

    def test_dead_port_fails_after_client_timeout(self) -> None:
        t0 = time.monotonic()
        with refusing_port() as port, pytest.raises(RpcException) as exc:
            echo_client(port, timeout=1).echo.echo(EchoRequest())
        elapsed = time.monotonic() - t0
        assert exc.value.rc == ResultCode.ERROR_RPC
        assert 1.0 <= elapsed < 10

    def test_retries_until_server_is_up(self, servers: Servers) -> None:
        with refusing_port() as port:
            client = echo_client(port, timeout=30)
            results: list[str] = []
            caller = threading.Thread(target=lambda: results.append(client.echo.echo(EchoRequest(text="late")).text))
            caller.start()
            caller.join(0.3)  # let the first attempts fail
            servers(port, [echo_descriptor()])
            caller.join(30)
        assert results == ["late"]

    def test_stream_retries_until_server_is_up(self, servers: Servers) -> None:
        with refusing_port() as port:
            client = echo_client(port, timeout=30)
            results: list[int] = []
            caller = threading.Thread(
                target=lambda: results.extend(m.index for m in client.echo.repeat(EchoRequest(count=3)))
            )
            caller.start()
            caller.join(0.3)
            servers(port, [echo_descriptor()])
            caller.join(30)
        assert results == [0, 1, 2]

    def test_per_call_timeout(self, servers: Servers) -> None:
        slow = BlockingEcho()
        release = slow.release
        srv = servers(0, [echo_descriptor(slow)])
        try:
            with pytest.raises(RpcException) as exc:
                srv.client.echo.echo(EchoRequest(), timeout=0.3)
            assert exc.value.rc == ResultCode.ERROR_RPC
            assert "DEADLINE_EXCEEDED" in str(exc.value)
        finally:
            release.set()

    def test_no_exception_mode(self, servers: Servers) -> None:
        srv = servers(0, [echo_descriptor()])
        out = echo_client(srv.port, version=0, exception=False).echo.echo(EchoRequest())
        assert out.r.code == ResultCode.ERROR_API_CLIENT_TOO_OLD

    def test_result_status_response(self, servers: Servers) -> None:
        srv = servers(0, [])
        assert isinstance(srv.client.srv.shutdown(ShutdownRequest(timeout=-1)), ResultStatus)


class TestDebugDump:
    def test_dump_lists_threads_and_pending_calls(self, servers: Servers, folders) -> None:
        slow = BlockingEcho()
        started, release = slow.started, slow.release
        srv = servers(0, [echo_descriptor(slow)], folders=folders)
        caller = threading.Thread(
            target=lambda: echo_client(srv.port, name="dumper").echo.echo(EchoRequest(text="zzz"))
        )
        caller.start()
        try:
            assert started.wait(10)
            path = srv.dump_debug()
        finally:
            release.set()
            caller.join(30)
        assert path.parent == folders.workspace / "logs"
        assert path.name.startswith("RpcServerDump-")
        assert path.suffix == ".txt"
        text = path.read_text()
        assert "== Threads" in text
        assert "MainThread" in text
        pending = text.partition("Pending RPC calls:\n")[2]
        assert "[dumper]" in pending
        assert '>>> EchoService.echo (EchoRequest{text: "zzz" })' in pending

    def test_sigusr2_writes_dump_and_handler_is_restored(self, servers: Servers, folders) -> None:
        previous = signal.getsignal(signal.SIGUSR2)
        srv = servers(0, [], folders=folders, with_debug_signal=True)
        assert signal.getsignal(signal.SIGUSR2) is not previous
        logs: Path = folders.workspace / "logs"
        os.kill(os.getpid(), signal.SIGUSR2)
        assert wait_until(lambda: any(logs.glob("RpcServerDump-*.txt")), 10)
        srv.shutdown()
        assert signal.getsignal(signal.SIGUSR2) is previous

    def test_no_handler_off_main_thread(self, servers: Servers) -> None:
        previous = signal.getsignal(signal.SIGUSR2)
        created: list = []
        t = threading.Thread(target=lambda: created.append(servers(0, [], with_debug_signal=True)))
        t.start()
        t.join(30)
        assert created
        assert signal.getsignal(signal.SIGUSR2) is previous


def _unused(x: Iterable[int]) -> None:  # keep typing imports honest
    pass


def test_same_grpc_service_twice_is_refused(servers: Servers) -> None:
    with pytest.raises(RpcException) as exc:
        servers(0, [echo_descriptor(), echo_descriptor(name="echo2")])
    assert exc.value.rc == ResultCode.ERROR_MODEL_INVALID
    assert "EchoService" in str(exc.value)


def test_failed_load_leaves_nothing_running(servers: Servers) -> None:
    class Failing(EchoManager):
        def _load(self) -> None:
            raise RpcException("cannot load", ResultCode.ERROR_STATE_UNEXPECTED)

    with refusing_port() as port:  # kept bound (not listening) meanwhile: no other test can get it
        with pytest.raises(RpcException) as exc:
            servers(port, [echo_descriptor(Failing())])
        assert exc.value.rc == ResultCode.ERROR_STATE_UNEXPECTED
        # the port is free again: a new server can take it (it could not if the failed one still listened)
        assert servers(port, []).port == port


def test_failed_start_shuts_down_loaded_managers(servers: Servers) -> None:
    from grpc_helper_samples.api import NotesApiVersion
    from grpc_helper_samples.api.notes_pb2_grpc import (
        NotesServiceServicer,
        NotesServiceStub,
        add_NotesServiceServicer_to_server,
    )

    class Failing(NotesServiceServicer, RpcManager):
        def _load(self) -> None:
            raise RpcException("cannot load", ResultCode.ERROR_STATE_UNEXPECTED)

    first = EchoManager()
    failing = RpcServiceDescriptor(
        grpc_helper_samples, "notes", NotesApiVersion, Failing(), add_NotesServiceServicer_to_server, NotesServiceStub
    )
    with pytest.raises(RpcException) as exc:
        servers(0, [echo_descriptor(first), failing])
    assert exc.value.rc == ResultCode.ERROR_STATE_UNEXPECTED
    assert first.loaded
    assert first.shut_down
