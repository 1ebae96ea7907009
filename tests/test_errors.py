"""One error model: custom result codes end to end, transport errors as a typed `RpcException` keeping
their gRPC status, one `Result` -> gRPC status decision (direct and proxied), one backoff."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from grpc_helper import RpcClient, RpcException, RpcStaticConfig, RpcTransportError
from grpc_helper.api import ProxyRegisterRequest, Result, ResultCode
from grpc_helper.backoff import Backoff
from grpc_helper.calls import CallSite, VersionRange, wrap_method
from grpc_helper.errors import rc_name, result_status
from grpc_helper.generated import capture_service, kind_of, make_handler, response_class
from grpc_helper.proxy.forward import make_forwarder
from grpc_helper.proxy.registry import ProxyRegistry
from grpc_helper_samples.api import EchoApiVersion, EchoRequest, EchoResponse
from grpc_helper_samples.api.echo_pb2_grpc import EchoServiceServicer, EchoServiceStub

from helpers import BlockingEcho, EchoManager, Servers, echo_descriptor, refusing_port

CUSTOM = 7  # below ERROR_CUSTOM, and not a ResultCode name


def echo_client(port: int, **kwargs: Any) -> RpcClient:
    kwargs.setdefault("timeout", 10)
    return RpcClient("127.0.0.1", port, {"echo": (EchoServiceStub, EchoApiVersion.ECHO_API_CURRENT)}, **kwargs)


class CustomCodeEcho(EchoManager):
    """`repeat` streams `count` messages, then fails with the custom code."""

    def repeat(self, request: EchoRequest) -> Iterable[EchoResponse]:
        for i in range(request.count):
            yield EchoResponse(text=request.text, index=i)
        raise RpcException("stream failed", CUSTOM)


# --- codes that ResultCode does not name ---


def test_rc_name_formats_every_code() -> None:
    assert rc_name(ResultCode.ERROR_RPC) == "ERROR_RPC"
    assert rc_name(CUSTOM) == "7"
    assert rc_name(ResultCode.ERROR_CUSTOM + 5) == "105"
    assert repr(RpcException("boom", CUSTOM)) == "RpcException('boom', rc=7)"


class TestCustomCode:
    def test_unary_answers_the_code(self, servers: Servers, caplog: pytest.LogCaptureFixture) -> None:
        srv = servers(0, [echo_descriptor()])
        with caplog.at_level(logging.WARNING):
            r = echo_client(srv.port, exception=False).echo.echo(EchoRequest(text=f"fail:{CUSTOM}")).r
        assert (r.code, r.msg) == (CUSTOM, "asked to fail")
        assert "RpcException: asked to fail" in r.stack
        # The server's warning names the code by its number
        assert any("asked to fail (7)" in rec.getMessage() for rec in caplog.records)

    def test_client_raises_the_code(self, servers: Servers) -> None:
        srv = servers(0, [echo_descriptor()])
        with pytest.raises(RpcException) as exc:
            echo_client(srv.port).echo.echo(EchoRequest(text=f"fail:{CUSTOM}"))
        assert type(exc.value) is RpcException
        assert exc.value.rc == CUSTOM
        assert repr(exc.value) == "RpcException('asked to fail', rc=7)"
        assert "asked to fail" in exc.value.stack

    def test_stream_ends_with_the_code(self, servers: Servers) -> None:
        srv = servers(0, [echo_descriptor(CustomCodeEcho())])
        msgs = list(echo_client(srv.port, exception=False).echo.repeat(EchoRequest(text="t", count=2)))
        assert [m.r.code for m in msgs] == [ResultCode.OK, ResultCode.OK, CUSTOM]
        assert msgs[-1].r.msg == "stream failed"

        stream = echo_client(srv.port).echo.repeat(EchoRequest(text="t", count=2))
        received: list[int] = []
        with pytest.raises(RpcException) as exc:
            received.extend(m.index for m in stream)  # keeps what came before the error
        assert received == [0, 1]
        assert exc.value.rc == CUSTOM

    def test_through_a_proxy(self, servers: Servers) -> None:
        main = servers(0, [echo_descriptor(is_proxy=True)])
        backend = servers(0, [echo_descriptor()])
        main.client.srv.proxy_register(
            ProxyRegisterRequest(names=["echo"], version="1", host="127.0.0.1", port=backend.port)
        )
        with pytest.raises(RpcException) as exc:
            echo_client(main.port).echo.echo(EchoRequest(text=f"fail:{CUSTOM}"))
        assert exc.value.rc == CUSTOM


# --- transport errors ---


def assert_transport(exc: BaseException, status: grpc.StatusCode) -> None:
    """A transport error as 2.x code sees it (RpcException, ERROR_RPC) and as new code does (status)."""
    assert isinstance(exc, RpcTransportError)
    assert isinstance(exc, RpcException)
    assert exc.rc == ResultCode.ERROR_RPC
    assert exc.status == status
    assert exc.details
    assert exc.details in str(exc)
    assert status.name in str(exc)
    assert isinstance(exc.__cause__, grpc.RpcError)  # chained: the original error stays available
    assert f"status={status.name}" in repr(exc)


class TestTransportErrors:
    def test_unreachable_server(self) -> None:
        with refusing_port() as port, pytest.raises(RpcException) as exc:
            echo_client(port, timeout=None).echo.echo(EchoRequest())
        assert_transport(exc.value, grpc.StatusCode.UNAVAILABLE)

    def test_unreachable_server_after_retries(self) -> None:
        with refusing_port() as port, pytest.raises(RpcTransportError) as exc:
            list(echo_client(port, timeout=0.3).echo.repeat(EchoRequest(count=1)))
        assert_transport(exc.value, grpc.StatusCode.UNAVAILABLE)

    def test_deadline(self, servers: Servers) -> None:
        manager = BlockingEcho()
        srv = servers(0, [echo_descriptor(manager)])
        try:
            with pytest.raises(RpcTransportError) as exc:
                echo_client(srv.port).echo.echo(EchoRequest(), timeout=0.3)
        finally:
            manager.release.set()
        assert_transport(exc.value, grpc.StatusCode.DEADLINE_EXCEEDED)

    def test_unimplemented(self, servers: Servers) -> None:
        class Nothing(EchoServiceServicer):  # implements no method: the generated defaults answer
            pass

        srv = servers(0, [echo_descriptor(Nothing())])
        client = echo_client(srv.port)
        calls: list[Callable[[], Any]] = [
            lambda: client.echo.echo(EchoRequest()),
            lambda: list(client.echo.repeat(EchoRequest(count=1))),
            lambda: client.echo.collect(iter([EchoRequest()])),
        ]
        for call in calls:
            with pytest.raises(RpcTransportError) as exc:
                call()
            assert_transport(exc.value, grpc.StatusCode.UNIMPLEMENTED)

    def test_cancelled_stream(self, servers: Servers) -> None:
        srv = servers(0, [echo_descriptor()])
        stream = echo_client(srv.port).echo.repeat(EchoRequest(count=1000))
        next(stream)
        stream.cancel()
        with pytest.raises(RpcTransportError) as exc:
            for _ in stream:
                pass
        assert_transport(exc.value, grpc.StatusCode.CANCELLED)


# --- Result -> gRPC status, for response types without `Result r` ---


def test_result_status_is_one_decision() -> None:
    for code in (ResultCode.ERROR, ResultCode.ERROR_API_SERVER_TOO_OLD, ResultCode.ERROR_PROXY_UNREGISTERED, CUSTOM):
        status, details = result_status(Result(code=code, msg="why"))  # type: ignore[arg-type]
        assert status == grpc.StatusCode.FAILED_PRECONDITION
        assert details == f"{rc_name(code)}: why"


class FailingHealth(health_pb2_grpc.HealthServicer):
    def Check(self, _request: health_pb2.HealthCheckRequest) -> health_pb2.HealthCheckResponse:
        raise RpcException("no health here", CUSTOM)


@contextmanager
def grpc_server(service: str, handlers: dict[str, grpc.RpcMethodHandler]) -> Iterator[int]:
    """A bare gRPC server on port 0 serving `handlers`: for services an RpcServer serves itself (Health)."""
    with ThreadPoolExecutor(4) as workers:
        server = grpc.server(workers)
        server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(service, handlers),))
        port = server.add_insecure_port("127.0.0.1:0")
        server.start()
        try:
            yield port
        finally:
            server.stop(None)


@pytest.fixture
def health_ports() -> Iterator[tuple[int, int]]:
    """(direct, proxied) ports serving Health's Check, whose response has no `Result r`: directly with a
    manager failing with code 7 (as RpcServer hooks managers), and through a forwarder with nothing
    registered (as RpcServer hooks proxied services)."""
    manager = FailingHealth()
    service, generated = capture_service(health_pb2_grpc.add_HealthServicer_to_server, manager)
    versions = VersionRange(1, 1)
    site = CallSite(0, f"/{service}/Check", response_class(service, "Check"), versions, logging.getLogger("health"))
    behavior = wrap_method(site, manager.Check, request_streaming=False, response_streaming=False)
    direct = {"Check": make_handler(generated["Check"], behavior)}
    with ThreadPoolExecutor(4) as pool:
        registry = ProxyRegistry(
            [], workspace=None, streams=pool, set_health=lambda _name, **_: None, logger=logging.getLogger("proxy")
        )
        proxied = {
            "Check": make_forwarder("health", service, "Check", kind_of(generated["Check"]), versions, registry, pool)
        }
        try:
            with grpc_server(service, direct) as direct_port, grpc_server(service, proxied) as proxy_port:
                yield direct_port, proxy_port
        finally:
            registry.shutdown()


def check_status(port: int, metadata: tuple[tuple[str, str], ...] = ()) -> tuple[grpc.StatusCode, str]:
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel, pytest.raises(grpc.RpcError) as exc:
        health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), metadata=metadata, timeout=10)
    assert isinstance(exc.value, grpc.Call)
    return exc.value.code(), exc.value.details()


class TestStatusWithoutResultField:
    def test_direct_and_proxied_agree(self, health_ports: tuple[int, int]) -> None:
        # The same error (the API version check, done by both before anything else) gives the same status
        too_new = (("api_version", "9"),)
        direct, proxied = (check_status(port, too_new) for port in health_ports)
        assert direct == proxied
        assert direct == result_status(
            Result(
                code=ResultCode.ERROR_API_SERVER_TOO_OLD,
                msg="Client API version 9 is newer than the server's current version 1",
            )
        )

    def test_custom_code_from_a_manager(self, health_ports: tuple[int, int]) -> None:
        assert check_status(health_ports[0]) == (grpc.StatusCode.FAILED_PRECONDITION, "7: no health here")

    def test_unregistered_proxied_service(self, health_ports: tuple[int, int]) -> None:
        RpcStaticConfig.CLIENT_TIMEOUT.update("0.2")  # restored after the test (conftest)
        status, details = check_status(health_ports[1])
        # A plain gRPC caller (no grpc-helper metadata) gets the status gRPC callers expect for a backend
        # that is not there, the code in the details
        assert status == grpc.StatusCode.UNAVAILABLE
        assert details.startswith("ERROR_PROXY_UNREGISTERED: ")

    def test_client_sees_the_status(self, health_ports: tuple[int, int]) -> None:
        stubs: dict[str, tuple[type, int | None]] = {"health": (health_pb2_grpc.HealthStub, None)}
        with (
            RpcClient("127.0.0.1", health_ports[0], stubs, timeout=10) as client,
            pytest.raises(RpcTransportError) as exc,
        ):
            client.health.Check(health_pb2.HealthCheckRequest())
        assert_transport(exc.value, grpc.StatusCode.FAILED_PRECONDITION)
        assert exc.value.details == "7: no health here"


# --- backoff ---


class TestBackoff:
    def test_delays_double_up_to_the_cap(self) -> None:
        backoff = Backoff(0.05, 0.3)
        assert [backoff.next_delay() for _ in range(5)] == [0.05, 0.1, 0.2, 0.3, 0.3]
        backoff.reset()
        assert backoff.next_delay() == 0.05

    def test_deadline_bounds_the_waits(self) -> None:
        assert Backoff(timeout=0).expired
        assert not Backoff().expired  # no deadline: never
        backoff = Backoff(0.05, 1.0, timeout=0.5)
        start = time.monotonic()
        waits = []
        for _ in range(100):  # bounded: the deadline ends it after a handful
            if backoff.expired:
                break
            waits.append(backoff.next_delay())
            time.sleep(waits[-1])  # the waits are what is tested
        elapsed = time.monotonic() - start
        assert 0.5 <= elapsed < 2
        assert waits[:3] == [0.05, 0.1, 0.2]
        assert max(waits) < 0.4  # the last one is cut to the deadline, not doubled past it
        assert backoff.next_delay() == 0  # past the deadline: no wait
