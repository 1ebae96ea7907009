"""A plain grpcio echo server, none of ours: `grpc.server(ThreadPoolExecutor())` with no options at all, so gRPC's
default keepalive enforcement (a ping without data at most every 5 minutes, 2 strikes, then a `too_many_pings`
GOAWAY), no health service unless asked, registered on a main with a bare `proxy_register` call, as a foreign
server would.

Usage: plain_echo.py [--health] BIND_HOST [MAIN_HOST MAIN_PORT PROXY_HOST]
  Serves the echo service (with --health, grpcio's standard health service too, SERVING) on BIND_HOST, port 0,
  answering `echo` with the tag "grpcio" as the payload (to tell its answers from another replica's); with a
  main, registers as the "echo" service's endpoint PROXY_HOST:<port> there. Then prints "listening on port
  <port>" on stderr, and runs until SIGTERM or SIGINT.
"""

# ruff: noqa: ARG002 - grpcio servicer methods take (request, context); the context is unused here

from __future__ import annotations

import signal
import sys
import threading
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor

import grpc
from grpc_health.v1 import health, health_pb2_grpc

from grpc_helper.api import ProxyRegisterRequest
from grpc_helper.api.server_pb2_grpc import RpcServerServiceStub
from grpc_helper_samples.api import EchoRequest, EchoResponse
from grpc_helper_samples.api.echo_pb2_grpc import EchoServiceServicer, add_EchoServiceServicer_to_server

TAG = b"grpcio"


class PlainEcho(EchoServiceServicer):
    def echo(self, request: EchoRequest, context: grpc.ServicerContext) -> EchoResponse:
        return EchoResponse(text=request.text, payload=TAG)

    def repeat(self, request: EchoRequest, context: grpc.ServicerContext) -> Iterator[EchoResponse]:
        for index in range(request.count):
            yield EchoResponse(text=request.text, index=index, payload=TAG)

    def collect(self, request: Iterable[EchoRequest], context: grpc.ServicerContext) -> EchoResponse:
        texts = [r.text for r in request]
        return EchoResponse(text="".join(texts), index=len(texts), payload=TAG)

    def chat(self, request: Iterable[EchoRequest], context: grpc.ServicerContext) -> Iterator[EchoResponse]:
        for index, r in enumerate(request):
            yield EchoResponse(text=r.text.upper(), index=index, payload=TAG)


def main(argv: list[str]) -> int:
    with_health = argv[:1] == ["--health"]
    argv = argv[1:] if with_health else argv
    bind = argv[0]
    server = grpc.server(ThreadPoolExecutor())  # no options: gRPC's defaults, enforcement included
    add_EchoServiceServicer_to_server(PlainEcho(), server)  # type: ignore[no-untyped-call]  # generated code
    if with_health:
        health_pb2_grpc.add_HealthServicer_to_server(health.HealthServicer(), server)
    port = server.add_insecure_port(f"{bind}:0")
    server.start()
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    if len(argv) > 1:
        main_host, main_port, proxy_host = argv[1], int(argv[2]), argv[3]
        with grpc.insecure_channel(f"{main_host}:{main_port}") as channel:
            request = ProxyRegisterRequest(names=["echo"], version="plain-grpcio:1", host=proxy_host, port=port)
            result = RpcServerServiceStub(channel).proxy_register(request, timeout=30)
        if result.r.code:
            print(f"registration refused: {result.r}", file=sys.stderr, flush=True)
            return 1
    print(f"listening on port {port}", file=sys.stderr, flush=True)
    stop.wait()
    server.stop(1).wait()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
