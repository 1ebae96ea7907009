"""Server processes for the benchmarks, each in its own (spawned) process.

Kinds:
- `raw`: what a plain grpcio user writes, `grpc.server(ThreadPoolExecutor(30))` + the generated
  `add_EchoServiceServicer_to_server` with a plain servicer;
- `helper`: `RpcServer` serving the same echo service through an `RpcManager`;
- `helper-metrics`: the same with its Prometheus metrics measured and served (`rpc-metrics-port`);
- `proxy`: a main `RpcServer` proxying `echo` (descriptor `is_proxy=True`) to the `helper`
  server whose port is given, registered with `srv.proxy_register`;
- `events`: `RpcServer(with_events=True)`;
- `rawproxy` (diagnostic, `--extra`): the least a proxy can do with grpcio, a generic handler
  forwarding raw bytes with blocking calls on one channel; a lower bound for `proxy`;
- `rawevents` (diagnostic, `--extra`): the events service as a plain grpcio user would write it
  (a `SimpleQueue` per listener, `send` puts into each); a lower bound for `events`.
- `<kind>-otel`, `<kind>-otel-idle`: the same, traced with OpenTelemetry at 100% sampling, or installed but
  sampling nothing; `raw-otel`: plain grpcio with the official instrumentation (see `otel.py`);
- `aioproxy`, `aioevents` (diagnostics, `--extra`): the same two minimal servers written with
  `grpc.aio` coroutines (one event loop, no thread per call or stream): the floor of the other
  grpcio API.

The diagnostics have no version check, no registry, no retention, no limits: they show what the
grpcio machinery alone costs on this machine, i.e. how far the targets are reachable at all.
"""

from __future__ import annotations

import asyncio
import itertools
import multiprocessing as mp
import socket
import threading
from collections.abc import Iterable, Iterator
from concurrent import futures
from queue import SimpleQueue
from typing import Any

import grpc
import otel
import secure

import grpc_helper_samples
from grpc_helper import RpcManager, RpcServer, RpcServiceDescriptor
from grpc_helper.api import Event, EventFilter, EventInterrupt, EventStatus, ProxyRegisterRequest, ResultStatus
from grpc_helper.api.events_pb2_grpc import EventServiceServicer, add_EventServiceServicer_to_server
from grpc_helper.options import Peer, channel_options
from grpc_helper.proxy.forward import forwarded_metadata
from grpc_helper_samples.api import EchoApiVersion, EchoRequest, EchoResponse
from grpc_helper_samples.api.echo_pb2_grpc import (
    EchoServiceServicer,
    EchoServiceStub,
    add_EchoServiceServicer_to_server,
)

KINDS = (
    "raw",
    "helper",
    "helper-metrics",
    "proxy",
    "proxy-metrics",
    "events",
    "rawproxy",
    "rawevents",
    "aioproxy",
    "aioevents",
)


class RawEcho(EchoServiceServicer):
    """The echo service as a plain grpcio servicer."""

    def echo(self, request: EchoRequest, _context: Any) -> EchoResponse:
        return EchoResponse(payload=request.payload)

    def repeat(self, request: EchoRequest, _context: Any) -> Iterable[EchoResponse]:
        payload = request.payload
        for i in range(request.count):
            yield EchoResponse(payload=payload, index=i)


class HelperEcho(EchoServiceServicer, RpcManager):
    """The same service as a grpc-helper manager: one request parameter, annotated return type."""

    def echo(self, request: EchoRequest) -> EchoResponse:
        return EchoResponse(payload=request.payload)

    def repeat(self, request: EchoRequest) -> Iterator[EchoResponse]:
        payload = request.payload
        for i in range(request.count):
            yield EchoResponse(payload=payload, index=i)


def echo_descriptor(is_proxy: bool = False) -> RpcServiceDescriptor:
    """The echo service descriptor, served by `HelperEcho` or proxied (plain servicer as manager)."""
    manager = EchoServiceServicer() if is_proxy else HelperEcho()
    register, stub = add_EchoServiceServicer_to_server, EchoServiceStub
    return RpcServiceDescriptor(grpc_helper_samples, "echo", EchoApiVersion, manager, register, stub, is_proxy)


class _Forwarder(grpc.GenericRpcHandler):
    """A handler per method path of the echo service, made on first use by `_make`."""

    def __init__(self) -> None:
        self._handlers: dict[str, grpc.RpcMethodHandler] = {}

    def service(self, details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler | None:
        path = details.method  # type: ignore[attr-defined]
        handler = self._handlers.get(path)
        if handler is None:
            handler = self._handlers[path] = self._make(path)
        return handler

    def _make(self, path: str) -> grpc.RpcMethodHandler:
        raise NotImplementedError


class _BytesForwarder(_Forwarder):
    """`rawproxy`: forwards every call of the echo service to a backend, bytes in, bytes out."""

    def __init__(self, port: int) -> None:
        super().__init__()
        self._channel = grpc.insecure_channel(f"127.0.0.1:{port}", options=channel_options(Peer.OURS))

    def _make(self, path: str) -> grpc.RpcMethodHandler:
        if path.endswith("/repeat"):
            stream_call = self._channel.unary_stream(path, None, None, _registered_method=True)

            def stream(request: bytes, context: grpc.ServicerContext) -> Iterator[bytes]:
                yield from stream_call(request, metadata=forwarded_metadata(context.invocation_metadata()))

            return grpc.unary_stream_rpc_method_handler(stream)
        unary_call = self._channel.unary_unary(path, None, None, _registered_method=True)

        def unary(request: bytes, context: grpc.ServicerContext) -> bytes:
            return unary_call(request, metadata=forwarded_metadata(context.invocation_metadata()))

        return grpc.unary_unary_rpc_method_handler(unary)


class RawEvents(EventServiceServicer):
    """`rawevents`: listen/send/interrupt with a queue per listener, nothing more (no retention, no limits)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._ids = itertools.count(1)
        self._queues: dict[int, tuple[frozenset[str], SimpleQueue[Event | None]]] = {}

    def listen(self, request: EventFilter, context: Any) -> Iterator[EventStatus]:
        queue: SimpleQueue[Event | None] = SimpleQueue()
        with self._lock:
            cid = next(self._ids)
            self._queues[cid] = (frozenset(request.names), queue)
        context.add_callback(lambda: queue.put(None))
        yield EventStatus(client_id=cid)
        while (event := queue.get()) is not None:
            yield EventStatus(event=event, client_id=cid)
        with self._lock:
            self._queues.pop(cid, None)

    def send(self, request: Event, _context: Any) -> ResultStatus:
        with self._lock:
            queues = list(self._queues.values())
        for names, queue in queues:
            if not names or request.name in names:
                queue.put(request)
        return ResultStatus()

    def interrupt(self, request: EventInterrupt, _context: Any) -> ResultStatus:
        with self._lock:
            entry = self._queues.pop(request.client_id, None)
        if entry is not None:
            entry[1].put(None)
        return ResultStatus()


class _AioBytesForwarder(_Forwarder):
    """`aioproxy`: `_BytesForwarder` with coroutines on a `grpc.aio` channel."""

    def __init__(self, port: int) -> None:
        super().__init__()
        self._channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}", options=channel_options(Peer.OURS))

    def _make(self, path: str) -> grpc.RpcMethodHandler:
        if path.endswith("/repeat"):
            stream_call = self._channel.unary_stream(path)

            async def stream(request: bytes, context: Any) -> Any:
                async for response in stream_call(request, metadata=forwarded_metadata(context.invocation_metadata())):
                    yield response

            return grpc.unary_stream_rpc_method_handler(stream)
        unary_call = self._channel.unary_unary(path)

        async def unary(request: bytes, context: Any) -> Any:
            return await unary_call(request, metadata=forwarded_metadata(context.invocation_metadata()))

        return grpc.unary_unary_rpc_method_handler(unary)


class AioEvents(EventServiceServicer):
    """`aioevents`: `RawEvents` with coroutines and an `asyncio.Queue` per listener."""

    def __init__(self) -> None:
        self._ids = itertools.count(1)
        self._queues: dict[int, tuple[frozenset[str], asyncio.Queue[Event | None]]] = {}

    async def listen(self, request: EventFilter, _context: Any) -> Any:
        queue: asyncio.Queue[Event | None] = asyncio.Queue()
        cid = next(self._ids)
        self._queues[cid] = (frozenset(request.names), queue)
        try:
            yield EventStatus(client_id=cid)
            while (event := await queue.get()) is not None:
                yield EventStatus(event=event, client_id=cid)
        finally:
            self._queues.pop(cid, None)

    async def send(self, request: Event, _context: Any) -> ResultStatus:
        for names, queue in list(self._queues.values()):
            if not names or request.name in names:
                queue.put_nowait(request)
        return ResultStatus()

    async def interrupt(self, request: EventInterrupt, _context: Any) -> ResultStatus:
        entry = self._queues.pop(request.client_id, None)
        if entry is not None:
            entry[1].put_nowait(None)
        return ResultStatus()


async def _serve_aio(kind: str, ports: Any, stop: Any, backends: tuple[int, ...]) -> None:
    server = grpc.aio.server()
    if kind == "aioproxy":
        server.add_generic_rpc_handlers((_AioBytesForwarder(backends[0]),))
    else:
        add_EventServiceServicer_to_server(AioEvents(), server)  # type: ignore[no-untyped-call]
    ports.put(server.add_insecure_port("127.0.0.1:0"))
    await server.start()
    await asyncio.get_running_loop().run_in_executor(None, stop.wait)
    await server.stop(0)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _serve(kind: str, ports: Any, stop: Any, backends: tuple[int, ...]) -> None:
    """Child process body: start a server of `kind`, report its port, serve until `stop` is set."""
    kind, sampled = otel.traced_kind(kind)
    if sampled is not None:
        otel.configure(sampled)
    if kind in ("aioproxy", "aioevents"):
        asyncio.run(_serve_aio(kind, ports, stop, backends))
        return
    if kind in ("raw", "rawproxy", "rawevents"):
        # Event listeners each hold a thread for the whole stream
        interceptors = otel.server_interceptors() if sampled is not None else []  # raw-otel: the official one
        server = grpc.server(futures.ThreadPoolExecutor(200 if kind == "rawevents" else 30), interceptors=interceptors)
        if kind == "raw":
            add_EchoServiceServicer_to_server(RawEcho(), server)
        elif kind == "rawevents":
            add_EventServiceServicer_to_server(RawEvents(), server)
        else:
            server.add_generic_rpc_handlers((_BytesForwarder(backends[0]),))
        ports.put(secure.add_port(server))
        server.start()
        stop.wait()
        server.stop(0)
        return
    config = secure.server_config()  # TLS and a policy when run by bench/security.py
    if kind == "helper":
        srv = RpcServer(0, [echo_descriptor()], cli_config=config, with_debug_signal=False)
    elif kind == "helper-metrics":  # the reference stack's setting: metrics measured and served
        config = {**config, "rpc-metrics-port": str(_free_port())}
        srv = RpcServer(0, [echo_descriptor()], cli_config=config, with_debug_signal=False)
    elif kind in ("proxy", "proxy-metrics"):
        if kind == "proxy-metrics":  # main with its metrics served too (its proxy families measured)
            config = {**config, "rpc-metrics-port": str(_free_port())}
        srv = RpcServer(0, [echo_descriptor(is_proxy=True)], cli_config=config, with_debug_signal=False)
        for port in backends:  # each one an endpoint (a replica) of echo
            request = ProxyRegisterRequest(names=["echo"], version="bench", host="127.0.0.1", port=port)
            srv.client.srv.proxy_register(request)
    elif kind == "events":
        # The fan-out's listeners all come from this host: one caller, its share lifted
        shares = {"rpc-max-streams-per-caller": "1000"}
        srv = RpcServer(0, [], cli_config=shares, with_events=True, with_debug_signal=False)
    else:
        raise ValueError(f"unknown server kind {kind!r} (expected one of {', '.join(KINDS)})")
    ports.put(srv.port)
    stop.wait()
    srv.shutdown()


class ServerProcess:
    """A server of `kind` in a child process (`backends`: the backend port(s) of a proxy, each a replica
    of echo for `proxy`; the minimal proxies use the first); `close()` stops it."""

    def __init__(self, kind: str, backends: tuple[int, ...] = ()) -> None:
        ctx = mp.get_context("spawn")
        queue, self._stop = ctx.Queue(), ctx.Event()
        self.kind = kind
        args = (kind, queue, self._stop, backends)
        self._proc = ctx.Process(target=_serve, args=args, daemon=True, name=f"bench-{kind}")
        self._proc.start()
        self.port: int = queue.get(timeout=60)

    @property
    def pid(self) -> int:
        assert self._proc.pid is not None
        return self._proc.pid

    def close(self) -> None:
        self._stop.set()
        self._proc.join(30)
        if self._proc.is_alive():
            self._proc.kill()
            self._proc.join()
