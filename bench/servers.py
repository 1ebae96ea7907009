"""Server processes for the benchmarks: plain grpcio, RpcServer, a proxying pair, an events server.

Each server runs in its own process (started with multiprocessing) and reports its port(s).
"""

from __future__ import annotations

import multiprocessing as mp
from collections.abc import Iterable
from concurrent import futures
from typing import Any

import grpc

import grpc_helper_samples
from grpc_helper import RpcManager, RpcServer, RpcServiceDescriptor
from grpc_helper.api import ProxyRegisterRequest
from grpc_helper_samples.api import EchoApiVersion, EchoRequest, EchoResponse
from grpc_helper_samples.api.echo_pb2_grpc import (
    EchoServiceServicer,
    EchoServiceStub,
    add_EchoServiceServicer_to_server,
)


class RawEcho(EchoServiceServicer):
    """What a plain grpcio user writes."""

    def echo(self, request: EchoRequest, context: Any) -> EchoResponse:
        return EchoResponse(payload=request.payload)

    def repeat(self, request: EchoRequest, context: Any) -> Iterable[EchoResponse]:
        response = EchoResponse(payload=request.payload)
        for i in range(request.count):
            response.index = i
            yield response


class HelperEcho(EchoServiceServicer, RpcManager):
    """The same service as a grpc-helper manager."""

    def echo(self, request: EchoRequest) -> EchoResponse:
        return EchoResponse(payload=request.payload)

    def repeat(self, request: EchoRequest) -> Iterable[EchoResponse]:
        response = EchoResponse(payload=request.payload)
        for i in range(request.count):
            response.index = i
            yield response


def echo_descriptor(is_proxy: bool = False) -> RpcServiceDescriptor:
    manager = EchoServiceServicer() if is_proxy else HelperEcho()
    register, stub = add_EchoServiceServicer_to_server, EchoServiceStub
    return RpcServiceDescriptor(grpc_helper_samples, "echo", EchoApiVersion, manager, register, stub, is_proxy)


def _serve(kind: str, ports: Any, stop: Any, arg: int) -> None:
    if kind == "raw":
        server = grpc.server(futures.ThreadPoolExecutor(30))
        add_EchoServiceServicer_to_server(RawEcho(), server)
        ports.put(server.add_insecure_port("127.0.0.1:0"))
        server.start()
        stop.wait()
        server.stop(0)
        return
    if kind == "helper":
        srv = RpcServer(0, [echo_descriptor()], with_debug_signal=False)
    elif kind == "proxy":
        srv = RpcServer(0, [echo_descriptor(is_proxy=True)], with_debug_signal=False)
        srv.client.srv.proxy_register(ProxyRegisterRequest(names=["echo"], version="bench", host="127.0.0.1", port=arg))
    elif kind == "events":
        srv = RpcServer(0, [], with_events=True, with_debug_signal=False)
    else:
        raise ValueError(kind)
    ports.put(srv.port)
    stop.wait()
    srv.shutdown()


class ServerProcess:
    """A server in a child process; `port` once started, `close()` to stop it."""

    def __init__(self, kind: str, arg: int = 0) -> None:
        ctx = mp.get_context("spawn")
        queue, self._stop = ctx.Queue(), ctx.Event()
        self._proc = ctx.Process(target=_serve, args=(kind, queue, self._stop, arg), daemon=True)
        self._proc.start()
        self.port: int = queue.get(timeout=60)

    def close(self) -> None:
        self._stop.set()
        self._proc.join(30)
        if self._proc.is_alive():
            self._proc.kill()
