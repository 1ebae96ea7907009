"""A transparent hop (issue 19): what a gRPC call carries crosses main both ways, cancellations and deadlines
included, for every call kind, through main and through a main forwarding to another main.

The backend is a plain grpcio server (not an `RpcServer`) that records what it saw of each call: how it
ended, its metadata. Callers are a grpc-helper client (`RpcClient`, which reads 2.x's `Result`) and a plain
gRPC stub (which reads gRPC statuses only).
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections.abc import Iterator
from concurrent import futures
from dataclasses import dataclass, field
from typing import Any

import grpc
import pytest

from grpc_helper import Config, RpcClient, RpcException, RpcServer, RpcStaticConfig
from grpc_helper.api import (
    ConfigItemUpdate,
    ConfigUpdate,
    Filter,
    ProxyRegisterRequest,
    ResultCode,
    ServerApiVersion,
)
from grpc_helper.api.server_pb2_grpc import RpcServerServiceStub
from grpc_helper.calls import cancelled_after_end
from grpc_helper.errors import RpcTransportError
from grpc_helper.metadata import RpcMetadata
from grpc_helper.proxy import forward
from grpc_helper.server.debug import render_dump
from grpc_helper_samples.api import EchoApiVersion, EchoRequest, EchoResponse
from grpc_helper_samples.api.echo_pb2_grpc import (
    EchoServiceServicer,
    EchoServiceStub,
    add_EchoServiceServicer_to_server,
)

from helpers import Servers, echo_descriptor, wait_until

HEADERS = (("x-peer-header", "h1"), ("x-peer-header-bin", b"\x01\x02\xff"))
TRAILERS = (("x-peer-trailer", "t1"), ("x-peer-trailer-bin", b"\xfe\x00"))
DETAILS = b"\x08\x05\x12\x04nope"  # a google.rpc.Status (code 5, "nope"), as rich errors carry it
HOPS = ("main", "main-to-main")


class _Status(grpc.Status):  # type: ignore[misc]  # grpc's abstract status, as grpcio-status builds it
    def __init__(self, code: grpc.StatusCode, details: str, trailing_metadata: Any) -> None:
        self.code, self.details, self.trailing_metadata = code, details, trailing_metadata


@dataclass
class Recorder(EchoServiceServicer):  # type: ignore[misc]  # generated base: untyped
    """The backend: echoes, and records how each call ended (`ends`: (method, "done" | "eof" | "cancelled",
    messages received)) and which calls started (`started`: method names)."""

    ends: list[tuple[str, str, int]] = field(default_factory=list)
    started: list[str] = field(default_factory=list)
    metadata: list[dict[str, Any]] = field(default_factory=list)

    def _answer(self, context: grpc.ServicerContext, method: str) -> None:
        self.started.append(method)
        self.metadata.append(dict(context.invocation_metadata()))
        context.send_initial_metadata(HEADERS)
        context.set_trailing_metadata(TRAILERS)

    def _sleep(self, method: str, context: grpc.ServicerContext, seconds: float) -> None:
        """Wait `seconds`, or until the call is over: cancelled, as nothing else can end it meanwhile."""
        gone = threading.Event()
        if not context.add_callback(gone.set):  # over already: cancelled before it got here
            gone.set()
        self.ends.append((method, "cancelled" if gone.wait(seconds) else "done", 0))

    def echo(self, request: EchoRequest, context: grpc.ServicerContext) -> EchoResponse:
        self._answer(context, "echo")
        if request.text.startswith("sleep:"):
            self._sleep("echo", context, float(request.text[6:]))
        elif request.text.startswith("fail:"):
            context.abort_with_status(_Status(grpc.StatusCode.NOT_FOUND, "nope", (*TRAILERS, *DETAILS_MD)))
        elif request.text.startswith("big:"):
            return EchoResponse(payload=b"x" * int(request.text[4:]))
        return EchoResponse(text=request.text, payload=request.payload)

    def repeat(self, request: EchoRequest, context: grpc.ServicerContext) -> Iterator[EchoResponse]:
        self._answer(context, "repeat")
        if request.text.startswith("sleep:"):
            # Told by the call's end (grpcio may never resume a generator whose call was cancelled): nothing
            # but a cancellation ends it before it returns
            finished = threading.Event()

            def ended() -> None:
                self.ends.append(("repeat", "done" if finished.is_set() else "cancelled", 0))

            if not context.add_callback(ended):
                ended()
            yield EchoResponse(text=request.text, index=0)
            time.sleep(float(request.text[6:]))  # the backend's work, cut short by nothing: a slow answer
            finished.set()
            return
        for index in range(request.count):
            yield EchoResponse(text=request.text, index=index)

    def collect(self, requests: Iterator[EchoRequest], context: grpc.ServicerContext) -> EchoResponse:
        self._answer(context, "collect")
        count, how = 0, "eof"
        try:
            for _ in requests:
                count += 1
        except grpc.RpcError:
            how = "cancelled"
        if how == "eof" and cancelled_after_end(requests, 1.0):  # a test may wait: be sure
            how = "cancelled"
        self.ends.append(("collect", how, count))
        return EchoResponse(index=count)

    def chat(self, requests: Iterator[EchoRequest], context: grpc.ServicerContext) -> Iterator[EchoResponse]:
        self._answer(context, "chat")
        for index, request in enumerate(requests):
            yield EchoResponse(text=request.text, index=index)


DETAILS_MD = (("grpc-status-details-bin", DETAILS),)


@dataclass
class Hop:
    recorder: Recorder
    front: RpcServer  # the main callers call
    backend_port: int

    def plain(self, options: list[tuple[str, Any]] | None = None) -> grpc.Channel:
        return grpc.insecure_channel(f"127.0.0.1:{self.front.port}", options=options)

    def helper(self, timeout: float | None = 10) -> RpcClient:
        stubs = {"echo": (EchoServiceStub, EchoApiVersion.ECHO_API_CURRENT)}
        return RpcClient("127.0.0.1", self.front.port, stubs, timeout=timeout, name="hop")


def start_hop(
    servers: Servers, kind: str, options: list[tuple[str, Any]] | None = None, config: dict[str, str] | None = None
) -> tuple[Hop, grpc.Server]:
    """The recording backend (grpcio `options`) behind main (`kind` "main"), or behind a main behind main
    ("main-to-main"); mains with static items `config`."""
    recorder = Recorder()
    backend = grpc.server(futures.ThreadPoolExecutor(8), options=options)
    add_EchoServiceServicer_to_server(recorder, backend)
    port = backend.add_insecure_port("127.0.0.1:0")
    backend.start()
    main = servers(0, [echo_descriptor(is_proxy=True)], cli_config=config)
    main.client.srv.proxy_register(ProxyRegisterRequest(names=["echo"], version="1", host="127.0.0.1", port=port))
    front = main
    if kind == "main-to-main":
        front = servers(0, [echo_descriptor(is_proxy=True)], cli_config=config)
        registration = ProxyRegisterRequest(names=["echo"], version="1", host="127.0.0.1", port=main.port)
        front.client.srv.proxy_register(registration)
    return Hop(recorder, front, port), backend


@pytest.fixture(params=HOPS)
def hop(request: pytest.FixtureRequest, servers: Servers) -> Iterator[Hop]:
    hop, backend = start_hop(servers, request.param)
    try:
        yield hop
    finally:
        backend.stop(0)


def no_call_in_flight() -> bool:
    return not forward.IN_FLIGHT


# --- 1. cancellation and deadlines cross the hop ---


class TestCancellation:
    def test_a_unary_call_past_its_deadline_is_cancelled_at_the_backend(self, hop: Hop) -> None:
        with hop.plain() as channel:
            started = time.monotonic()
            with pytest.raises(grpc.RpcError) as info:
                EchoServiceStub(channel).echo(EchoRequest(text="sleep:10"), timeout=0.5)
            assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        assert wait_until(lambda: ("echo", "cancelled", 0) in hop.recorder.ends, 5)
        assert time.monotonic() - started < 5  # not the backend's 10 s
        assert wait_until(no_call_in_flight, 5)  # main's threads are free

    def test_a_cancelled_unary_call_is_cancelled_at_the_backend(self, hop: Hop) -> None:
        with hop.plain() as channel:
            call = EchoServiceStub(channel).echo.future(EchoRequest(text="sleep:10"))
            assert wait_until(lambda: "echo" in hop.recorder.started, 5)  # it reached the backend
            call.cancel()
        assert wait_until(lambda: ("echo", "cancelled", 0) in hop.recorder.ends, 5)
        assert wait_until(no_call_in_flight, 5)

    def test_a_cancelled_server_stream_is_cancelled_at_the_backend(self, hop: Hop) -> None:
        with hop.plain() as channel:
            responses = EchoServiceStub(channel).repeat(EchoRequest(text="sleep:10", count=1))
            assert next(responses).index == 0
            responses.cancel()
        assert wait_until(lambda: ("repeat", "cancelled", 0) in hop.recorder.ends, 5)
        assert wait_until(no_call_in_flight, 5)

    def test_a_cancelled_client_stream_is_never_an_end_of_input(self, hop: Hop) -> None:
        """grpcio may end a cancelled call's request iterator normally: main must still cancel, every time."""
        rounds = 30

        def slow() -> Iterator[EchoRequest]:
            for n in range(100):  # bounded: cancelled long before its end
                yield EchoRequest(text=str(n))
                time.sleep(0.01)  # a slow sender's pace

        with hop.plain() as channel:
            for n in range(rounds):
                call = EchoServiceStub(channel).collect.future(slow())
                assert wait_until(lambda: len(hop.recorder.started) > n, 5)  # noqa: B023  # it reached the backend
                time.sleep(0.05)  # some input sent
                call.cancel()
        assert wait_until(lambda: len(hop.recorder.ends) == rounds, 10)
        assert {how for _, how, _ in hop.recorder.ends} == {"cancelled"}, hop.recorder.ends
        assert wait_until(no_call_in_flight, 5)

    def test_a_complete_client_stream_ends_normally(self, hop: Hop) -> None:
        with hop.helper() as client:
            assert client.echo.collect(iter([EchoRequest(text="a"), EchoRequest(text="b")])).index == 2
        assert hop.recorder.ends == [("collect", "eof", 2)]

    def test_a_cancelled_bidirectional_stream_is_cancelled_at_the_backend(self, hop: Hop) -> None:
        release = threading.Event()

        def requests() -> Iterator[EchoRequest]:
            yield EchoRequest(text="one")
            release.wait(10)

        with hop.plain() as channel:
            responses = EchoServiceStub(channel).chat(requests())
            assert next(responses).text == "one"
            responses.cancel()
            release.set()
        assert wait_until(no_call_in_flight, 5)


def test_a_debug_dump_lists_the_forwarded_calls_in_flight(servers: Servers) -> None:
    """Main's debug dump names each forwarded call in flight: its method, its caller (the peer's address without
    a policy, asked of the call only when the dump is made) and the backend it went to."""
    hop, backend = start_hop(servers, "main")
    try:
        with hop.plain() as channel:
            call = EchoServiceStub(channel).echo.future(EchoRequest(text="sleep:10"))
            assert wait_until(lambda: "echo" in hop.recorder.started, 5)
            dump = render_dump(id(hop.front))
            call.cancel()
        section = dump.split("Forwarded calls in flight:")[1].split("Pending RPC calls:")[0]
        line = re.search(r"-- /EchoService/echo from (\S+) to 127\.0\.0\.1:(\d+), [\d.]+s old", section)
        assert line is not None, section
        assert line[1].startswith("ipv4:127.0.0.1:")
        assert int(line[2]) == hop.backend_port
        assert wait_until(no_call_in_flight, 5)
    finally:
        backend.stop(0)


# --- 3. metadata both ways; 4. statuses for each kind of caller ---


def plain_error(call: Any) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as info:
        call()
    return info.value


class TestMetadataAndStatuses:
    def test_headers_and_trailers_reach_the_caller(self, hop: Hop) -> None:
        with hop.plain() as channel:
            stub = EchoServiceStub(channel)
            response, call = stub.echo.with_call(EchoRequest(text="hi"), metadata=(("x-caller", "c"),))
            assert response.text == "hi"
            assert set(HEADERS) <= set(call.initial_metadata())
            assert set(TRAILERS) <= set(call.trailing_metadata())
            stream = stub.repeat(EchoRequest(text="s", count=2))
            assert [r.index for r in stream] == [0, 1]
            assert set(HEADERS) <= set(stream.initial_metadata())
            assert set(TRAILERS) <= set(stream.trailing_metadata())
        assert hop.recorder.metadata[0]["x-caller"] == "c"  # and the caller's reach the backend
        returned = {k for k, _ in call.initial_metadata()} | {k for k, _ in call.trailing_metadata()}
        assert not {k for k in returned if k.startswith("rpc-")}  # main's own keys stay with main

    def test_a_plain_caller_gets_the_backends_own_status(self, hop: Hop) -> None:
        with hop.plain() as channel:
            error = plain_error(lambda: EchoServiceStub(channel).echo(EchoRequest(text="fail:")))
        assert error.code() == grpc.StatusCode.NOT_FOUND
        assert error.details() == "nope"
        trailers = dict(error.trailing_metadata())
        assert trailers["grpc-status-details-bin"] == DETAILS  # rich error details, unchanged
        assert set(TRAILERS) <= set(error.trailing_metadata())

    def test_a_grpc_helper_client_keeps_2x_shape(self, hop: Hop) -> None:
        with hop.helper() as client, pytest.raises(RpcException) as info:
            client.echo.echo(EchoRequest(text="fail:"))
        assert info.value.rc == ResultCode.ERROR_RPC  # gRPC OK, r.code=ERROR_RPC: what 2.x clients read
        assert not isinstance(info.value, RpcTransportError)
        assert "NOT_FOUND" in str(info.value)

    def test_a_passed_deadline_is_deadline_exceeded_for_everyone(self, hop: Hop) -> None:
        with hop.helper(timeout=None) as client, pytest.raises(RpcTransportError) as info:
            client.echo.echo(EchoRequest(text="sleep:10"), timeout=0.5)
        assert info.value.status == grpc.StatusCode.DEADLINE_EXCEEDED


class TestErrorsAtMain:
    """Errors raised at main itself, for each kind of caller."""

    @pytest.fixture
    def lonely(self, servers: Servers) -> RpcServer:
        main = servers(0, [echo_descriptor(is_proxy=True)])
        RpcStaticConfig.CLIENT_TIMEOUT.update("0.5")  # after the start, which sets every item; restored by conftest
        return main

    def test_an_unregistered_service(self, lonely: RpcServer) -> None:
        with grpc.insecure_channel(f"127.0.0.1:{lonely.port}") as channel:
            error = plain_error(lambda: EchoServiceStub(channel).echo(EchoRequest(), timeout=10))
        assert error.code() == grpc.StatusCode.UNAVAILABLE
        assert error.details().startswith("ERROR_PROXY_UNREGISTERED")
        stubs = {"echo": (EchoServiceStub, EchoApiVersion.ECHO_API_CURRENT)}
        with RpcClient("127.0.0.1", lonely.port, stubs, timeout=None) as client, pytest.raises(RpcException) as info:
            client.echo.echo(EchoRequest(), timeout=10)
        assert info.value.rc == ResultCode.ERROR_PROXY_UNREGISTERED

    def test_an_unreachable_backend(self, lonely: RpcServer, refused_port: int) -> None:
        registration = ProxyRegisterRequest(names=["echo"], version="1", host="127.0.0.1", port=refused_port)
        lonely.client.srv.proxy_register(registration)
        with grpc.insecure_channel(f"127.0.0.1:{lonely.port}") as channel:
            error = plain_error(lambda: EchoServiceStub(channel).echo(EchoRequest(), timeout=10))
        assert error.code() == grpc.StatusCode.UNAVAILABLE
        stubs = {"echo": (EchoServiceStub, EchoApiVersion.ECHO_API_CURRENT)}
        with RpcClient("127.0.0.1", lonely.port, stubs, timeout=None) as client, pytest.raises(RpcException) as info:
            client.echo.echo(EchoRequest(), timeout=10)
        assert info.value.rc == ResultCode.ERROR_RPC

    def test_a_deadline_passed_waiting_for_a_backend(self, lonely: RpcServer) -> None:
        RpcStaticConfig.CLIENT_TIMEOUT.update("30")
        with grpc.insecure_channel(f"127.0.0.1:{lonely.port}") as channel:
            error = plain_error(lambda: EchoServiceStub(channel).echo(EchoRequest(), timeout=0.5))
        assert error.code() == grpc.StatusCode.DEADLINE_EXCEEDED


# --- 5. message size limits ---

MIB = 1 << 20
LARGE = [("grpc.max_receive_message_length", 64 * MIB), ("grpc.max_send_message_length", 64 * MIB)]


class TestMessageSizes:
    """1, 4 and 16 MiB each way, with the limits raised (rpc-max-*-message-size, read when servers and
    channels are made) and with the default, 4 MiB: an oversized message is RESOURCE_EXHAUSTED, in 2.x's
    shape for a grpc-helper client when it comes back from the backend."""

    @pytest.fixture(params=[None, 32 * MIB], ids=["default", "raised"])
    def sized(self, request: pytest.FixtureRequest, servers: Servers) -> Iterator[tuple[Hop, int]]:
        limit = request.param or 4 * MIB
        config = (
            {"rpc-max-receive-message-size": str(limit), "rpc-max-send-message-size": str(limit)}
            if request.param
            else None
        )
        # The backend takes what main may send it, and may answer more than main takes
        hop, backend = start_hop(servers, "main", LARGE, config)
        try:
            yield hop, limit
        finally:
            backend.stop(0)

    @pytest.mark.parametrize("size", [1 * MIB, 4 * MIB, 16 * MIB], ids=["1MiB", "4MiB", "16MiB"])
    def test_each_way(self, sized: tuple[Hop, int], size: int) -> None:
        hop, limit = sized
        fits = size < limit  # a payload of the limit's size is over it once framed in a message
        # The plain caller's own limits are its own: large enough here, to see main's
        with hop.helper(timeout=None) as client, hop.plain(LARGE) as channel:
            stub = EchoServiceStub(channel)
            if fits:
                assert len(client.echo.echo(EchoRequest(payload=b"y" * size), timeout=30).payload) == size
                assert len(stub.echo(EchoRequest(text=f"big:{size}"), timeout=30).payload) == size
                return
            error = plain_error(lambda: stub.echo(EchoRequest(payload=b"y" * size), timeout=30))
            assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED  # refused by main on the way in
            error = plain_error(lambda: stub.echo(EchoRequest(text=f"big:{size}"), timeout=30))
            assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED  # on the way back
            with pytest.raises(RpcException) as info:
                client.echo.echo(EchoRequest(text=f"big:{size}"), timeout=30)
            assert info.value.rc == ResultCode.ERROR_RPC
            assert "RESOURCE_EXHAUSTED" in str(info.value)


# --- 6. foreign backends are first-class ---

ITEM = Config("hop-item", "A user item of main", "a")


class TestForeignBackend:
    """The recording backend is a plain grpcio server: no config, log or server service of ours."""

    @pytest.fixture
    def foreign(self, servers: Servers) -> Iterator[tuple[RpcServer, grpc.Server]]:
        recorder = Recorder()
        backend = grpc.server(futures.ThreadPoolExecutor(4))
        add_EchoServiceServicer_to_server(recorder, backend)
        port = backend.add_insecure_port("127.0.0.1:0")
        backend.start()
        main = servers(0, [echo_descriptor(is_proxy=True)], user_items=[ITEM])
        main.client.srv.proxy_register(ProxyRegisterRequest(names=["echo"], version="1", host="127.0.0.1", port=port))
        try:
            yield main, backend
        finally:
            backend.stop(0)

    def test_config_through_main_skips_it_once_told(
        self, foreign: tuple[RpcServer, grpc.Server], caplog: pytest.LogCaptureFixture
    ) -> None:
        main, _ = foreign
        config = main.client.config
        with caplog.at_level(logging.INFO):
            assert [i.name for i in config.get(Filter()).items] == ["hop-item"]
            assert config.set(ConfigUpdate(items=[ConfigItemUpdate(name="hop-item", value="b")])).items[0].value == "b"
            assert config.reset(Filter(names=["hop-item"])).items[0].value == "a"
            assert config.get(Filter(names=["hop-item"])).items[0].value == "a"
        told = [r for r in caplog.records if "has no config service" in r.getMessage()]
        assert len(told) == 1  # once per backend, not per call
        assert told[0].levelno == logging.INFO
        assert not [r for r in caplog.records if r.levelno >= logging.WARNING and "Config service" in r.getMessage()]

    def test_a_routed_command_says_the_server_has_no_such_service(self, foreign: tuple[RpcServer, grpc.Server]) -> None:
        main, _ = foreign
        stubs = {"srv": (RpcServerServiceStub, ServerApiVersion.SERVER_API_CURRENT)}
        routed = RpcMetadata(client="hop", route_service="echo")
        with (
            RpcClient("127.0.0.1", main.port, stubs, timeout=10, name=routed) as client,
            pytest.raises(RpcException) as info,
        ):
            client.srv.info(Filter())
        assert "has no RpcServerService service" in str(info.value)
