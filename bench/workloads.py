"""Client workloads, each run in its own spawned process(es).

- `echo`: N threads calling `echo` (unary) or `repeat` (server streaming) back to back, through a
  plain generated stub ("raw") or an `RpcClient` ("helper").
- `fanout`: one sender and L `EventsListener`s spread over P processes (the sender lives in the
  first one), with at most `window` events in flight (not yet received by every listener).

Both run a warm-up, then measure for a fixed window: the rate is the number of ops completed in
the window over its length (so streams in progress at its edges count for the messages received
inside it), latencies come from the calls started in the window, CPU from `stats.CpuMeter`.
"""

from __future__ import annotations

import multiprocessing as mp
import threading
import time
from collections.abc import Callable
from typing import Any

import otel
import secure
from stats import CpuMeter, Result, percentile_ms

from grpc_helper import RpcClient
from grpc_helper.options import Peer, channel_options
from grpc_helper_samples.api import EchoApiVersion, EchoRequest
from grpc_helper_samples.api.echo_pb2_grpc import EchoServiceStub

PAYLOAD = b"x" * 64
STREAM_COUNT = 500
EVENT_NAME = "BENCH"

# --- echo ---


def _echo_loop(
    client_kind: str, ports: tuple[int, ...], workload: str
) -> Callable[[list[int], int, threading.Event], None]:
    """A function making one call, adding the ops it completes to `counts[i]`, stopping early on `stop`.

    `ports`: the server's; for a `raw` client, several are plain grpcio replicas, balanced by gRPC's
    round_robin over one channel (what a grpcio user does with several servers)."""
    client_kind, sampled = otel.traced_kind(client_kind)
    if sampled is not None:
        otel.configure(sampled)  # before the client is made
    if client_kind in ("raw", "raw-st"):
        # raw-st (diagnostic): the plain stub with the channel options RpcClient uses
        options = channel_options(Peer.OURS) if client_kind == "raw-st" else None
        channel = secure.channel(ports, options)
        # raw-otel: the official instrumentation's client interceptor
        stub: Any = EchoServiceStub(otel.intercepted(channel) if sampled is not None else channel)
    else:
        stubs = {"echo": (EchoServiceStub, EchoApiVersion.ECHO_API_CURRENT)}
        # direct: RpcClient's direct mode, given main's port (it calls the backends past main)
        direct = client_kind == "direct"
        stub = RpcClient("localhost", ports[0], stubs, security=secure.client_security(), direct=direct).echo
    request = EchoRequest(payload=PAYLOAD, count=STREAM_COUNT)

    if workload == "unary":

        def unary(counts: list[int], i: int, _stop: threading.Event) -> None:
            stub.echo(request)
            counts[i] += 1

        return unary

    def stream(counts: list[int], i: int, stop: threading.Event) -> None:
        responses = stub.repeat(request)
        for _ in responses:
            counts[i] += 1
            if stop.is_set():  # the window is over: don't wait for the end of the stream
                # raw-otel: the official client interceptor makes the stream a generator, which has no cancel()
                getattr(responses, "cancel", None) or responses.close()
                return

    return stream


def _run_echo(
    client_kind: str,
    ports: tuple[int, ...],
    workload: str,
    threads: int,
    duration: float,
    warmup: float,
    pids: dict[str, int],
    out: Any,
) -> None:
    call = _echo_loop(client_kind, ports, workload)
    call([0], 0, threading.Event())  # connect before the clock starts
    counts = [0] * threads
    latencies: list[list[float]] = [[] for _ in range(threads)]
    stop = threading.Event()
    window: list[float] = []  # [start, end] of the measured window, set by the main thread

    def worker(i: int) -> None:
        lat = latencies[i]
        while not stop.is_set():
            t0 = time.perf_counter()
            call(counts, i, stop)
            t1 = time.perf_counter()
            if window and window[0] <= t0 < window[1] and t1 <= window[1]:
                lat.append(t1 - t0)

    pool = [threading.Thread(target=worker, args=(i,), daemon=True) for i in range(threads)]
    for t in pool:
        t.start()
    time.sleep(warmup)
    meter = CpuMeter(pids)
    start, done0 = time.perf_counter(), sum(counts)
    window[:] = [start, start + duration]
    meter.start()
    time.sleep(duration)
    end, done = time.perf_counter(), sum(counts) - done0
    window[1] = end
    server_cpu, client_cpu, foreign = meter.stop(done, end - start)
    stop.set()
    for t in pool:
        t.join(30)
    all_lat = [x for lat in latencies for x in lat]
    elapsed = end - start
    rate = done / elapsed
    out.put(Result(rate, percentile_ms(all_lat, 0.5), percentile_ms(all_lat, 0.99), server_cpu, client_cpu, foreign))


def run_in_process(target: Callable[..., None], *args: Any) -> Any:
    """Run `target(*args, queue)` in a spawned process; return what it put in the queue."""
    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    proc = ctx.Process(target=target, args=(*args, out), name="bench-client")
    proc.start()
    try:
        return out.get(timeout=600)
    finally:
        proc.join(60)


def echo(
    client_kind: str,
    ports: tuple[int, ...],
    workload: str,
    threads: int,
    duration: float,
    warmup: float = 1.0,
    pids: dict[str, int] | None = None,
) -> Result:
    """Measure `workload` ("unary" or "stream") with a `client_kind` client ("raw", "raw-st", "helper",
    "direct"; "-otel" or "-otel-idle" added: traced, see otel.py) of the server at `ports` (several: plain
    grpcio replicas, for a raw client)."""
    return run_in_process(_run_echo, client_kind, ports, workload, threads, duration, warmup, pids or {})


# --- events fan-out ---


def _events_client(port: int) -> RpcClient:
    from grpc_helper.api import EventApiVersion
    from grpc_helper.api.events_pb2_grpc import EventServiceStub

    return RpcClient("127.0.0.1", port, {"events": (EventServiceStub, EventApiVersion.EVENT_API_CURRENT)})


def _start_listeners(port: int, slots: range, channels: int, counts: Any) -> tuple[list[Any], list[list[int]]]:
    """`EventsListener`s for `slots`, counting into `counts[slot]`; (listeners, [(sent_ns, latency_ns)...])."""
    from grpc_helper.api import Event
    from grpc_helper.events import EventsListener

    records: list[list[int]] = [[] for _ in slots]

    class BenchListener(EventsListener):
        def __init__(self, client: RpcClient, slot: int, record: list[int]) -> None:
            self.slot, self.record = slot, record
            super().__init__(client, [EVENT_NAME])

        def on_event(self, event: Event) -> None:
            sent = int(event.properties[0].value)
            self.record.append(sent)
            self.record.append(time.time_ns() - sent)
            counts[self.slot] += 1

    clients = [_events_client(port) for _ in range(channels)]
    listeners = [BenchListener(clients[n % channels], slot, records[n]) for n, slot in enumerate(slots)]
    for listener in listeners:
        if not listener.ready.wait(60):
            raise RuntimeError("an events listener did not start")
    return listeners, records


def _stop_listeners(listeners: list[Any]) -> None:
    for listener in listeners:
        listener.interrupt()


def _latencies_in(records: list[list[int]], start_ns: int, end_ns: int) -> list[float]:
    """Send-to-receive latencies (s) of the events sent within [start_ns, end_ns)."""
    out = []
    for record in records:
        for j in range(0, len(record), 2):
            if start_ns <= record[j] < end_ns:
                out.append(record[j + 1] / 1e9)
    return out


def _fanout_listeners(port: int, slots: range, channels: int, counts: Any, ready: Any, done: Any, out: Any) -> None:
    """Listener-only process: listen until `done`, then report the raw latency records."""
    listeners, records = _start_listeners(port, slots, channels, counts)
    with ready.get_lock():
        ready.value += 1
    done.wait()
    _stop_listeners(listeners)
    out.put(records)


def _fanout_sender(
    port: int,
    slots: range,
    channels: int,
    counts: Any,
    ready: Any,
    done: Any,
    processes: int,
    duration: float,
    warmup: float,
    window: int,
    pids: dict[str, int],
    client_pids: tuple[int, ...],
    out: Any,
) -> None:
    """First client process: its share of listeners plus the sender; measures the whole fan-out."""
    from grpc_helper.api import Event, EventProperty

    listeners, records = _start_listeners(port, slots, channels, counts)
    with ready.get_lock():
        ready.value += 1
    deadline = time.monotonic() + 120
    while ready.value < processes:  # every listener of every process is attached
        if time.monotonic() > deadline:
            raise RuntimeError("listener processes did not start")
        time.sleep(0.01)
    n_listeners = len(counts)
    sender = _events_client(port).events
    meter = CpuMeter(pids, client_pids)

    def wait_delivered(events: int, timeout: float = 60) -> None:
        target, limit = events * n_listeners, time.monotonic() + timeout
        while sum(counts) < target:
            if time.monotonic() > limit:
                raise RuntimeError(f"deliveries stuck at {sum(counts)}/{target}")
            time.sleep(0.0005)

    sent = 0
    t0 = time.perf_counter()
    start = end = 0.0
    start_ns = end_ns = delivered0 = 0
    phase = "warmup"
    while True:
        now = time.perf_counter()
        if phase == "warmup" and now - t0 >= warmup:
            phase, start, start_ns, delivered0 = "measure", now, time.time_ns(), sum(counts)
            meter.start()
        elif phase == "measure" and now - start >= duration:
            end, end_ns = now, time.time_ns()
            delivered = sum(counts) - delivered0
            break
        wait_delivered(sent - window)
        sender.send(Event(name=EVENT_NAME, properties=[EventProperty(name="t", value=str(time.time_ns()))]))
        sent += 1
    server_cpu, client_cpu, foreign = meter.stop(delivered, end - start)
    wait_delivered(sent)
    done.set()
    _stop_listeners(listeners)
    out.put((delivered / (end - start), start_ns, end_ns, server_cpu, client_cpu, foreign, records))


def fanout(
    port: int,
    listeners: int,
    duration: float,
    window: int = 4,
    processes: int = 1,
    channels: int = 4,
    warmup: float = 1.0,
    pids: dict[str, int] | None = None,
) -> Result:
    """Deliveries/s and send-to-receive latency of events sent to `listeners` listeners.

    Listeners are spread over `processes` client processes, each with `channels` client channels;
    the sender runs in the first process.
    """
    ctx = mp.get_context("spawn")
    counts = ctx.RawArray("q", listeners)  # one slot per listener, written by its own thread only
    ready, done, out = ctx.Value("i", 0), ctx.Event(), ctx.Queue()
    shares = [range(p * listeners // processes, (p + 1) * listeners // processes) for p in range(processes)]
    others = [
        ctx.Process(
            target=_fanout_listeners,
            args=(port, shares[p], channels, counts, ready, done, out),
            name=f"bench-listeners-{p}",
        )
        for p in range(1, processes)
    ]
    for proc in others:
        proc.start()
    client_pids = tuple(proc.pid for proc in others if proc.pid is not None)
    args = (port, shares[0], channels, counts, ready, done, processes, duration, warmup, window, pids or {})
    first = ctx.Process(target=_fanout_sender, args=(*args, client_pids, out), name="bench-sender")
    first.start()
    try:
        results = [out.get(timeout=600) for _ in range(processes)]
    finally:
        done.set()
        for proc in (first, *others):
            proc.join(60)
            if proc.is_alive():
                proc.kill()
    main = next(r for r in results if isinstance(r, tuple))
    rate, start_ns, end_ns, server_cpu, client_cpu, foreign, records = main
    for r in results:
        if isinstance(r, list):
            records += r
    lat = _latencies_in(records, start_ns, end_ns)
    return Result(rate, percentile_ms(lat, 0.5), percentile_ms(lat, 0.99), server_cpu, client_cpu, foreign)
