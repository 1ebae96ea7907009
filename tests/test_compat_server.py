"""Issue 9, server items 1-3: the auto-client outlives a shutdown, `is_running` until shutdown has
completed, and the remote shutdown's warning; on real servers."""

from __future__ import annotations

import logging
import threading
import time

import pytest

from grpc_helper import RpcClient, RpcServer
from grpc_helper.api import Filter, ResultCode, ShutdownRequest
from grpc_helper.testing import rc_of
from grpc_helper_samples.api import EchoApiVersion, EchoRequest
from grpc_helper_samples.api.echo_pb2_grpc import EchoServiceStub

from helpers import (
    BlockingEcho,
    Collector,
    EchoManager,
    Servers,
    accepts_connections,
    echo_descriptor,
    event,
    wait_until,
)

CLIENT_TIMEOUT = 1.0  # seconds: the auto-client's retries while no server listens
# Given as server config: a server sets its static items from its config layers when it starts
SHORT = {"rpc-client-timeout": str(CLIENT_TIMEOUT)}


def stop(srv: RpcServer, how: str) -> None:
    """Shut `srv` down locally, or remotely through its own auto-client, and wait until it is over."""
    if how == "local":
        srv.shutdown()
    else:
        srv.client.srv.shutdown(ShutdownRequest(timeout=-1))
    assert srv.wait_shutdown(30)


@pytest.mark.parametrize("how", ["local", "remote"])
class TestAutoClientOutlivesShutdown:
    def test_calls_fail_like_an_unreachable_server(self, servers: Servers, how: str) -> None:
        manager = EchoManager()
        srv = servers(0, [echo_descriptor(manager)], cli_config=SHORT)
        client = srv.client
        assert client.echo.echo(EchoRequest(text="a")).text == "a"
        stop(srv, how)
        assert srv.client is client
        assert manager.client is client
        for call in (lambda: client.echo.echo(EchoRequest(text="b")), lambda: client.srv.info(Filter())):
            t0 = time.monotonic()
            assert rc_of(call) == ResultCode.ERROR_RPC  # not ValueError: closed channel
            elapsed = time.monotonic() - t0
            assert CLIENT_TIMEOUT * 0.9 <= elapsed < CLIENT_TIMEOUT + 10, "retried within the client's timeout"

    def test_same_client_reaches_a_new_server_on_the_same_port(self, servers: Servers, how: str) -> None:
        manager = EchoManager()
        srv = servers(0, [echo_descriptor(manager)], cli_config=SHORT)
        port, client = srv.port, manager.client
        stop(srv, how)
        srv2 = servers(port, [echo_descriptor()], cli_config=SHORT)
        assert client.echo.echo(EchoRequest(text="again")).text == "again"
        assert [i.name for i in client.srv.info(Filter(names=["echo"])).items] == ["echo"]
        stop(srv2, how)  # and again, through the same client object
        servers(port, [echo_descriptor()], cli_config=SHORT)
        assert client.echo.echo(EchoRequest(text="third")).text == "third"

    def test_listener_resumes_its_queue_on_a_new_server(self, servers: Servers, folders, how: str) -> None:
        srv = servers(0, [], folders=folders, with_events=True, cli_config=SHORT)
        port = srv.port
        listener = Collector(srv.client, ["R"])
        try:
            assert listener.ready.wait(30)
            srv.client.events.send(event("R", n="before"))
            assert listener.wait_count(1)
            client_id = listener.client_id
            stop(srv, how)
            assert wait_until(lambda: not listener.connected.is_set())
            srv2 = servers(port, [], folders=folders, with_events=True, cli_config=SHORT)
            assert listener.connected.wait(60), "the listener gave up on its (old server's) client"
            assert listener.client_id == client_id
            srv2.client.events.send(event("R", n="after"))
            assert listener.wait_count(2, 60)
            assert [e.properties[0].value for e in listener.events] == ["before", "after"]
        finally:
            listener.interrupt()


def test_a_closed_client_is_usable_again(servers: Servers) -> None:
    srv = servers(0, [echo_descriptor()])
    client = RpcClient("127.0.0.1", srv.port, {"echo": (EchoServiceStub, EchoApiVersion.ECHO_API_CURRENT)})
    echo = client.echo.echo  # a bound method kept by the caller follows the client
    with client:
        assert echo(EchoRequest(text="a")).text == "a"
    assert echo(EchoRequest(text="b")).text == "b"
    client.close()
    assert [r.index for r in client.echo.repeat(EchoRequest(text="s", count=3))] == [0, 1, 2]
    client.close()
    assert client.echo.collect(iter([EchoRequest(text="x"), EchoRequest(text="y")])).text == "xy"
    client.close()


class TestIsRunning:
    def test_true_during_the_remote_shutdown_wait(self, servers: Servers) -> None:
        manager = EchoManager()
        srv = servers(0, [echo_descriptor(manager)])
        srv.client.srv.shutdown(ShutdownRequest(timeout=3))
        assert srv.is_running
        # the server stopped listening and told its managers: the shutdown ran, now comes the requested wait
        assert wait_until(lambda: manager.shut_down and not accepts_connections(srv.port))
        assert srv.is_running
        assert srv.wait_shutdown(0.5) is False
        assert srv.is_running
        assert srv.wait_shutdown(30)
        assert not srv.is_running

    def test_true_while_a_local_shutdown_waits_for_pending_calls(self, servers: Servers) -> None:
        slow = BlockingEcho()
        srv = servers(0, [echo_descriptor(slow)])
        caller = threading.Thread(target=lambda: srv.client.echo.echo(EchoRequest()))
        caller.start()
        assert slow.started.wait(10)
        stopper = threading.Thread(target=srv.shutdown)
        stopper.start()
        try:
            assert wait_until(lambda: not accepts_connections(srv.port))  # shutdown has begun...
            assert srv.is_running  # ...but not completed
        finally:
            slow.release.set()
            stopper.join(30)
            caller.join(30)
        assert srv.wait_shutdown(0)
        assert not srv.is_running


class TestShutdownWarning:
    @pytest.mark.parametrize(("timeout", "config", "expected"), [(1, "60", 1), (0, "2.5", 2), (-1, "60", None)])
    def test_remote_shutdown_warns_before_waiting(
        self, servers: Servers, caplog: pytest.LogCaptureFixture, timeout: int, config: str, expected: int | None
    ) -> None:
        srv = servers(0, [], cli_config={"rpc-shutdown-timeout": config})
        with caplog.at_level(logging.WARNING):
            srv.client.srv.shutdown(ShutdownRequest(timeout=timeout))
            assert srv.wait_shutdown(30)
        lines = [r.getMessage() for r in caplog.records if r.name == srv.logger.name and r.levelno == logging.WARNING]
        assert lines == ([] if expected is None else [f"!!! Will shutdown in {expected}s !!!"])
