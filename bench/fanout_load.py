"""Fan-out at scale: many live event listeners, steady events, and the latency everybody else sees.

    python bench/fanout_load.py [--listeners 500] [--rate 10] [--calls 20] [--duration 10]

One server process per kind, side by side in one run:

- `grpcio`: a plain `grpc.server` (a thread per stream, `--listeners` + 50 threads) serving the echo
  service and `RawEvents` (a `SimpleQueue` per listener: the least a sync events server can do);
- `RpcServer`: `RpcServer(with_events=True)` with the echo service as an `RpcManager`.

Against each, `--listeners` listeners (a `grpc.aio` client process: one event loop for all, so the
clients cost as little CPU as they can), a sender sending `--rate` events/s and a caller making
`--calls` unary echo calls/s (both paced, from a third process), for `--duration` seconds after a
warm-up. Reported: the p50/p99/max latency of `send` and of the unary calls, the deliveries/s,
and the server's CPU. Targets (issue 11): 500 listeners, 10 events/s, unary and send p99 < 20 ms.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing as mp
import threading
import time
from concurrent import futures
from queue import SimpleQueue
from typing import Any

import grpc
from servers import HelperEcho, RawEcho, RawEvents
from stats import percentile_ms

import grpc_helper_samples
from grpc_helper import RpcClient, RpcServer, RpcServiceDescriptor
from grpc_helper.api import Event, EventApiVersion, EventFilter, EventProperty, EventStatus, ResultStatus
from grpc_helper.api.events_pb2_grpc import EventServiceStub, add_EventServiceServicer_to_server
from grpc_helper_samples.api import EchoApiVersion, EchoRequest
from grpc_helper_samples.api.echo_pb2_grpc import EchoServiceStub, add_EchoServiceServicer_to_server

EVENT = "LOAD"


class _NbListener:
    """A listener of `NonBlockingEvents`: pending events, drained by one delivery thread at a time."""

    def __init__(self, names: frozenset[str], respond: Any, ready: SimpleQueue[Any]) -> None:
        self.names, self.respond, self.ready = names, respond, ready
        self.pending: list[Event] = []
        self.lock = threading.Lock()
        self.busy = False

    def push(self, event: Event) -> None:
        with self.lock:
            self.pending.append(event)
            if self.busy:
                return
            self.busy = True
        self.ready.put(self)

    def drain(self) -> None:
        while True:
            with self.lock:
                batch, self.pending = self.pending, []
                if not batch:
                    self.busy = False
                    return
            for event in batch:
                self.respond(EventStatus(event=event))


class NonBlockingEvents(RawEvents):
    """`grpcio-nb` (diagnostic): listen as a grpcio non-blocking stream (no thread held per listener),
    deliveries by `threads` threads taking the listeners with something pending from one queue."""

    def __init__(self, threads: int) -> None:
        super().__init__()
        self._ready: SimpleQueue[_NbListener] = SimpleQueue()
        self._listeners: dict[int, _NbListener] = {}
        for _ in range(threads):
            threading.Thread(target=self._deliver, daemon=True).start()

    def _deliver(self) -> None:
        while True:
            self._ready.get().drain()

    def listen(self, request: EventFilter, context: Any, respond: Any) -> None:  # type: ignore[override]
        listener = _NbListener(frozenset(request.names), respond, self._ready)
        with self._lock:
            cid = next(self._ids)
            self._listeners[cid] = listener
        context.add_callback(lambda: self._listeners.pop(cid, None))
        respond(EventStatus(client_id=cid))

    listen.experimental_non_blocking = True  # type: ignore[attr-defined]

    def send(self, request: Event, _context: Any) -> ResultStatus:
        for listener in list(self._listeners.values()):
            if not listener.names or request.name in listener.names:
                listener.push(request)
        return ResultStatus()


def _serve(kind: str, listeners: int, ports: Any, stop: Any) -> None:
    if kind in ("grpcio", "grpcio-nb"):
        server = grpc.server(futures.ThreadPoolExecutor(listeners + 50 if kind == "grpcio" else 30))
        add_EchoServiceServicer_to_server(RawEcho(), server)
        events = (
            RawEvents() if kind == "grpcio" else NonBlockingEvents(int(__import__("os").environ.get("NB_THREADS", "4")))
        )
        add_EventServiceServicer_to_server(events, server)  # type: ignore[no-untyped-call]
        ports.put(server.add_insecure_port("127.0.0.1:0"))
        server.start()
        stop.wait()
        server.stop(0)
        return
    echo = RpcServiceDescriptor(
        grpc_helper_samples, "echo", EchoApiVersion, HelperEcho(), add_EchoServiceServicer_to_server, EchoServiceStub
    )
    # Every listener comes from this host: one caller, whose share is lifted as the total is
    config = {"rpc-max-streams": str(listeners + 50), "rpc-max-streams-per-caller": str(listeners + 50)}
    srv = RpcServer(0, [echo], cli_config=config, with_events=True, with_debug_signal=False)
    ports.put(srv.port)
    stop.wait()
    srv.shutdown()


def _listen(port: int, listeners: int, ready: Any, received: Any, stop: Any) -> None:
    """All the listeners, on one grpc.aio event loop; counts deliveries into `received`."""

    async def main() -> None:
        channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
        stub = EventServiceStub(channel)  # type: ignore[no-untyped-call]
        metadata = (("api_version", str(EventApiVersion.EVENT_API_CURRENT)),)
        count = 0
        started = 0

        async def one() -> None:
            nonlocal count, started
            call = stub.listen(EventFilter(names=[EVENT]), metadata=metadata)
            first = True
            async for status in call:
                if first:
                    first, started = False, started + 1
                    if started == listeners:
                        ready.set()
                elif status.event.name:
                    count += 1

        tasks = [asyncio.ensure_future(one()) for _ in range(listeners)]
        while not stop.is_set():
            await asyncio.sleep(0.1)
            received.value = count
        for task in tasks:
            task.cancel()
        await channel.close()

    asyncio.run(main())


def _paced(rate: float, duration: float, call: Any, out: list[float]) -> None:
    """`call()` `rate` times a second for `duration` seconds, timing each into `out` (s)."""
    period, start = 1 / rate, time.perf_counter()
    n = 0
    while (due := start + n * period) < start + duration:
        time.sleep(max(0.0, due - time.perf_counter()))
        t0 = time.perf_counter()
        call()
        out.append(time.perf_counter() - t0)
        n += 1


def _drive(kind: str, port: int, rate: float, calls: float, duration: float, warmup: float, out: Any) -> None:
    if kind != "RpcServer":
        channel = grpc.insecure_channel(f"127.0.0.1:{port}")
        echo: Any = EchoServiceStub(channel).echo
        send: Any = EventServiceStub(channel).send  # type: ignore[no-untyped-call]
    else:
        stubs = {
            "echo": (EchoServiceStub, EchoApiVersion.ECHO_API_CURRENT),
            "events": (EventServiceStub, EventApiVersion.EVENT_API_CURRENT),
        }
        client = RpcClient("127.0.0.1", port, stubs)
        echo, send = client.echo.echo, client.events.send
    request = EchoRequest(payload=b"x" * 64)

    def event() -> None:
        send(Event(name=EVENT, properties=[EventProperty(name="t", value=str(time.time_ns()))]))

    for phase in ("warmup", "measure"):
        sends: list[float] = []
        unary: list[float] = []
        length = warmup if phase == "warmup" else duration
        threads = [
            threading.Thread(target=_paced, args=(rate, length, event, sends)),
            threading.Thread(target=_paced, args=(calls, length, lambda: echo(request), unary)),
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    out.put((sends, unary))


def _cpu(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    import os

    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def measure(kind: str, args: argparse.Namespace) -> dict[str, Any]:
    ctx = mp.get_context("spawn")
    ports, stop = ctx.Queue(), ctx.Event()
    server = ctx.Process(target=_serve, args=(kind, args.listeners, ports, stop), daemon=True)
    server.start()
    port = ports.get(timeout=60)
    ready, done, received = ctx.Event(), ctx.Event(), ctx.Value("q", 0)
    listeners = ctx.Process(target=_listen, args=(port, args.listeners, ready, received, done), daemon=True)
    listeners.start()
    try:
        if not ready.wait(120):
            raise RuntimeError("the listeners did not all start")
        out = ctx.Queue()
        driver = ctx.Process(
            target=_drive, args=(kind, port, args.rate, args.calls, args.duration, args.warmup, out), daemon=True
        )
        assert server.pid is not None
        cpu0, delivered0 = None, 0
        driver.start()
        time.sleep(args.warmup)  # the driver measures from the end of its warm-up: align the CPU window
        cpu0, delivered0, t0 = _cpu(server.pid), received.value, time.perf_counter()
        sends, unary = out.get(timeout=args.duration + args.warmup + 120)
        cpu, delivered, elapsed = _cpu(server.pid) - cpu0, received.value - delivered0, time.perf_counter() - t0
        driver.join(30)
    finally:
        done.set()
        listeners.join(30)
        stop.set()
        server.join(30)
        for proc in (listeners, server):
            if proc.is_alive():
                proc.kill()
    return {
        "send": (percentile_ms(sends, 0.5), percentile_ms(sends, 0.99), max(sends) * 1000, len(sends)),
        "unary": (percentile_ms(unary, 0.5), percentile_ms(unary, 0.99), max(unary) * 1000, len(unary)),
        "deliveries": delivered / elapsed,
        "cpu": cpu / elapsed,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--listeners", type=int, default=500)
    parser.add_argument("--rate", type=float, default=10, help="events sent per second")
    parser.add_argument("--calls", type=float, default=20, help="unary echo calls per second")
    parser.add_argument("--duration", type=float, default=10)
    parser.add_argument("--warmup", type=float, default=2)
    parser.add_argument("--only", choices=("grpcio", "grpcio-nb", "RpcServer"), action="append")
    args = parser.parse_args()
    print(
        f"{args.listeners} listeners, {args.rate:g} events/s, {args.calls:g} unary calls/s,"
        f" {args.duration:g} s measured (p50 / p99 / max, ms)"
    )
    for kind in args.only or ("grpcio", "RpcServer"):
        r = measure(kind, args)
        send, unary = r["send"], r["unary"]
        print(
            f"  {kind:10} send {send[0]:.1f} / {send[1]:.1f} / {send[2]:.1f} ({send[3]} sends);"
            f" unary {unary[0]:.1f} / {unary[1]:.1f} / {unary[2]:.1f} ({unary[3]} calls);"
            f" {r['deliveries']:.0f} deliveries/s; server CPU {r['cpu'] * 100:.0f}%"
        )


if __name__ == "__main__":
    main()
