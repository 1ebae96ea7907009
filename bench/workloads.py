"""Client workloads, run in their own process: N threads calling as fast as they can."""

from __future__ import annotations

import multiprocessing as mp
import threading
import time
from dataclasses import dataclass
from typing import Any

import grpc

from grpc_helper import RpcClient
from grpc_helper.api import Event as EventMsg
from grpc_helper.api import EventFilter, EventInterrupt, EventProperty
from grpc_helper_samples.api import EchoApiVersion, EchoRequest
from grpc_helper_samples.api.echo_pb2_grpc import EchoServiceStub

PAYLOAD = b"x" * 64
STREAM_COUNT = 500


@dataclass
class Result:
    ops_per_s: float  # calls/s, messages/s or deliveries/s
    p50_ms: float
    p99_ms: float


def _percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))] * 1000


def _echo_call(client_kind: str, port: int, workload: str) -> Any:
    if client_kind == "raw":
        stub = EchoServiceStub(grpc.insecure_channel(f"127.0.0.1:{port}"))
    else:
        stub = RpcClient("127.0.0.1", port, {"echo": (EchoServiceStub, EchoApiVersion.ECHO_API_CURRENT)}).echo
    request = EchoRequest(payload=PAYLOAD, count=STREAM_COUNT)
    if workload == "unary":
        return lambda: (stub.echo(request), 1)[1]

    def stream() -> int:
        n = 0
        for _ in stub.repeat(request):
            n += 1
        return n

    return stream


def _run_echo(client_kind: str, port: int, workload: str, threads: int, duration: float, out: Any) -> None:
    call = _echo_call(client_kind, port, workload)
    for _ in range(20):  # warm-up: connection, caches
        call()
    counts = [0] * threads
    latencies: list[list[float]] = [[] for _ in range(threads)]
    start_line = threading.Barrier(threads + 1)
    stop_at: list[float] = []

    def worker(i: int) -> None:
        start_line.wait()
        end, n, lat = stop_at[0], 0, latencies[i]
        while True:
            t0 = time.perf_counter()
            if t0 >= end:
                break
            n += call()
            lat.append(time.perf_counter() - t0)
        counts[i] = n

    pool = [threading.Thread(target=worker, args=(i,)) for i in range(threads)]
    for t in pool:
        t.start()
    t0 = time.perf_counter()
    stop_at.append(t0 + duration)
    start_line.wait()
    for t in pool:
        t.join()
    elapsed = time.perf_counter() - t0
    all_lat = [x for lat in latencies for x in lat]
    out.put(Result(sum(counts) / elapsed, _percentile(all_lat, 0.5), _percentile(all_lat, 0.99)))


def _run_fanout(port: int, listeners: int, duration: float, window: int, out: Any) -> None:
    """One sender, `listeners` listeners; at most `window` events in flight (bounded latency)."""
    from grpc_helper.api import EventApiVersion
    from grpc_helper.api.events_pb2_grpc import EventServiceStub

    def client() -> RpcClient:
        return RpcClient("127.0.0.1", port, {"events": (EventServiceStub, EventApiVersion.EVENT_API_CURRENT)})

    received = [0] * listeners
    latencies: list[list[float]] = [[] for _ in range(listeners)]
    progress = threading.Condition()
    delivered = [0]
    ids: list[int] = [0] * listeners
    ready = threading.Barrier(listeners + 1)
    clients = [client() for _ in range(4)]  # a few channels, like separate processes would have

    def listen(i: int) -> None:
        stream = clients[i % len(clients)].events.listen(EventFilter(names=["BENCH"]))
        ids[i] = next(stream).client_id
        ready.wait()
        for status in stream:
            if status.event.name:
                sent = int(status.event.properties[0].value)
                latencies[i].append(time.time_ns() - sent)
                received[i] += 1
                with progress:
                    delivered[0] += 1
                    progress.notify_all()

    pool = [threading.Thread(target=listen, args=(i,), daemon=True) for i in range(listeners)]
    for t in pool:
        t.start()
    ready.wait()
    sender = client()
    t0 = time.perf_counter()
    sent = 0

    def delivered_up_to(n: int) -> bool:
        return delivered[0] >= n * listeners

    while time.perf_counter() - t0 < duration:
        with progress:  # keep at most `window` events not yet delivered to everyone
            progress.wait_for(lambda n=sent - window: delivered_up_to(n), 30)
        sender.events.send(EventMsg(name="BENCH", properties=[EventProperty(name="t", value=str(time.time_ns()))]))
        sent += 1
    with progress:
        progress.wait_for(lambda n=sent: delivered_up_to(n), 60)
    elapsed = time.perf_counter() - t0
    for client_id in ids:
        sender.events.interrupt(EventInterrupt(client_id=client_id))
    all_lat = [x / 1e9 for lat in latencies for x in lat]
    out.put(Result(delivered[0] / elapsed, _percentile(all_lat, 0.5), _percentile(all_lat, 0.99)))


def run_in_process(target: Any, *args: Any) -> Result:
    """Run a workload in a separate (spawned) client process and return its Result."""
    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    proc = ctx.Process(target=target, args=(*args, out))
    proc.start()
    result = out.get(timeout=600)
    proc.join(60)
    return result


def echo(client_kind: str, port: int, workload: str, threads: int, duration: float) -> Result:
    return run_in_process(_run_echo, client_kind, port, workload, threads, duration)


def fanout(port: int, listeners: int, duration: float, window: int = 4) -> Result:
    return run_in_process(_run_fanout, port, listeners, duration, window)
