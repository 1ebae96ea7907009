"""A greedy caller: one identity holding many streams open without reading them, and an honest client meanwhile.

    python bench/greedy.py [--streams 300] [--listeners 500] [--measure 8] [--hold 8] [--fill 90] [--after 10]
                           [--only NAME]...

Scenarios, side by side in one run, each on fresh server processes:

- `grpcio stream`: a plain `grpc.server(ThreadPoolExecutor(30))` serving echo; the greedy caller opens
  `--streams` `echo.repeat` streams of endless 1 KiB messages and never reads them;
- `RpcServer stream` / `unshared stream`: a main `RpcServer` proxying echo to an `RpcServer` backend (the
  reference stack's shape, each in its own process, a policy on main with one identity per client);
  the same greedy streams go through main. `unshared`: both servers' shares lifted to 1000 (as before
  they existed);
- `RpcServer listen` / `unshared listen`: `RpcServer(with_events=True)`, a sender sending 8 KiB events at
  20/s to everybody; the greedy identity opens `--listeners` listen streams and never reads them; the
  honest client is measured after `--fill` seconds of events (their flow-control windows full).
  `unshared`: the shares lifted to 1000.

For each: an honest client (another identity, in this process) makes paced unary calls (echo.echo, or
log.get on the events server; 2 s deadline) alone, then while the greedy caller (a process of its own)
holds its streams for `--hold` seconds, and the server's threads and memory (RSS, /proc) are read
before, during, and `--after` seconds after the greedy caller left. Goals (issue 17): the honest p99
within 2x of alone, threads and memory back within 10 s.
"""

from __future__ import annotations

import argparse
import datetime
import json
import logging
import multiprocessing as mp
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from concurrent import futures
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import grpc
from servers import RawEcho, echo_descriptor
from stats import percentile_ms, process_cpu

from grpc_helper import RpcServer
from grpc_helper.api import Event, EventFilter, EventProperty, Filter, ProxyRegisterRequest
from grpc_helper.api.events_pb2_grpc import EventServiceStub
from grpc_helper.api.logger_pb2_grpc import LoggerServiceStub
from grpc_helper.auth import token_hash
from grpc_helper.generated import method_handler
from grpc_helper.server.fairness import CALLS_ITEM, STREAMS_ITEM, WATCHES_ITEM, Fairness
from grpc_helper_samples.api import EchoRequest
from grpc_helper_samples.api.echo_pb2_grpc import EchoServiceStub, add_EchoServiceServicer_to_server

TOKENS = {"greedy": "greedy-0123456789", "honest": "honest-0123456789", "sender": "sender-0123456789"}
ROLES = {"greedy": "user", "honest": "user", "sender": "service"}
SCENARIOS = ("grpcio stream", "RpcServer stream", "unshared stream", "RpcServer listen", "unshared listen")
UNSHARED = {"rpc-max-streams-per-caller": "1000", "rpc-max-calls-per-caller": "1000"}  # as before the shares
DEADLINE = 2.0  # seconds: an honest call slower than this counts as timed out
RATE = 50  # honest calls per second
EVENT_RATE, EVENT_SIZE = 20, 8 << 10
BACK = 10.0  # seconds allowed for threads and memory to come back (the goal)
STREAM_FILL = 30.0  # seconds at most for unread streams' windows to fill (the server then goes quiet)
QUIET = 0.2  # share of a core: the server is quiet again


def _metadata(who: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {TOKENS[who]}"),)


# --- servers, each in a process of its own ---


def _serve(kind: str, config: dict[str, str], backend: int, ports: Any, stop: Any) -> None:
    if kind == "grpcio":
        server = grpc.server(futures.ThreadPoolExecutor(30))
        add_EchoServiceServicer_to_server(RawEcho(), server)
        ports.put(server.add_insecure_port("127.0.0.1:0"))
        server.start()
        stop.wait()
        server.stop(0)
        return
    if kind == "backend":
        srv = RpcServer(0, [echo_descriptor()], cli_config=config, with_debug_signal=False)
    elif kind == "main":
        srv = RpcServer(0, [echo_descriptor(is_proxy=True)], cli_config=config, with_debug_signal=False)
        request = ProxyRegisterRequest(names=["echo"], version="bench", host="127.0.0.1", port=backend)
        srv.client.srv.proxy_register(request)
    else:
        srv = RpcServer(0, [], cli_config=config, with_events=True, with_debug_signal=False)
    ports.put(srv.port)
    stop.wait()
    srv.stop(0)


class Server:
    """A server of `kind` ("grpcio", "backend", "main", "events") in a child process."""

    def __init__(self, kind: str, config: dict[str, str], backend: int = 0) -> None:
        ctx = mp.get_context("spawn")
        ports, self._stop = ctx.Queue(), ctx.Event()
        self._proc = ctx.Process(target=_serve, args=(kind, config, backend, ports, self._stop), daemon=True)
        self._proc.start()
        self.port: int = ports.get(timeout=60)

    @property
    def cpu(self) -> float:
        """CPU seconds used so far by the server process."""
        assert self._proc.pid is not None
        return process_cpu(self._proc.pid)

    def usage(self) -> tuple[int, float]:
        """(threads, RSS in MB) of the server process, from /proc."""
        fields = dict(
            line.split(":", 1)
            for line in Path(f"/proc/{self._proc.pid}/status").read_text().splitlines()
            if ":" in line
        )
        return int(fields["Threads"]), int(fields["VmRSS"].split()[0]) / 1024

    def close(self) -> None:
        self._stop.set()
        self._proc.join(30)
        if self._proc.is_alive():
            self._proc.kill()


# --- the greedy caller and the event sender, each in a process of its own ---


def _greedy(port: int, kind: str, count: int, opened: Any, refused: Any, leave: Any) -> None:
    """`count` streams never read (`kind`: "stream" or "listen") over 10 connections; the number refused
    (answered at once) in `refused`; `opened` once all are started; all cancelled when `leave` is set."""
    options = [("grpc.use_local_subchannel_pool", 1)]  # a connection per channel
    channels = [grpc.insecure_channel(f"127.0.0.1:{port}", options=options) for _ in range(10)]
    request = EchoRequest(text="greedy", count=10**9, payload=b"x" * 1024)
    calls: list[Any] = []
    lock = threading.Lock()

    def done(call: Any) -> None:
        if call.code() == grpc.StatusCode.RESOURCE_EXHAUSTED:
            with lock:
                refused.value += 1

    for n in range(count):
        channel = channels[n % len(channels)]
        if kind == "stream":
            call = EchoServiceStub(channel).repeat(request, metadata=_metadata("greedy"))
        else:
            call = EventServiceStub(channel).listen(EventFilter(), metadata=_metadata("greedy"))
        call.add_done_callback(done)
        calls.append(call)
    opened.set()
    leave.wait()
    for call in calls:
        call.cancel()
    for channel in channels:
        channel.close()


def _send_events(port: int, stop: Any) -> None:
    """`EVENT_RATE` events of `EVENT_SIZE` bytes a second, as a service identity, until `stop`."""
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        send = EventServiceStub(channel).send
        event = Event(name="BIG", properties=[EventProperty(name="data", value="x" * EVENT_SIZE)])
        next_at = time.monotonic()
        while not stop.is_set():
            send(event, metadata=_metadata("sender"), timeout=DEADLINE)
            next_at += 1 / EVENT_RATE
            stop.wait(max(0.0, next_at - time.monotonic()))


# --- measuring ---


def honest_calls(call: Callable[[], object], seconds: float) -> tuple[list[float], int]:
    """`call()` `RATE` times a second for `seconds`: (durations of the answered ones, count of failures: a gRPC
    error, or an error answer in `r`, e.g. main's when the backend refused the forwarded call)."""
    times, failed = [], 0
    next_at = time.monotonic()
    end = next_at + seconds
    while time.monotonic() < end:
        t0 = time.monotonic()
        try:
            result = getattr(call(), "r", None)
            if result is not None and result.code:
                failed += 1
            else:
                times.append(time.monotonic() - t0)
        except grpc.RpcError:
            failed += 1
        next_at += 1 / RATE
        time.sleep(max(0.0, next_at - time.monotonic()))
    return times, failed


def wait(seconds: float) -> float:
    """Unread listeners of 8 KiB events at 20/s fill their flow-control windows (a few MB) only after a while,
    at little cost: wait `seconds`."""
    time.sleep(seconds)
    return seconds


def settle(server: Server, most: float) -> float:
    """Wait until unread streams stopped piling up messages: endless echo messages fill the flow-control windows
    (a few MB per stream, on each hop) at full speed, then the server goes quiet again (under `QUIET` of a core
    for a second); `most` seconds at most. Returns the seconds waited."""
    start = time.monotonic()
    used = server.cpu
    while time.monotonic() - start < most:
        time.sleep(1.0)
        now = server.cpu
        if now - used < QUIET:
            break
        used = now
    return time.monotonic() - start


def back_after(server: Server, baseline: tuple[int, float], seconds: float) -> tuple[float | None, tuple[int, float]]:
    """Seconds until the server's threads are back within 2 of `baseline` (None: not within `seconds`), and
    its (threads, RSS) `seconds` after."""
    start = time.monotonic()
    back = None
    while time.monotonic() - start < seconds:
        threads, _ = server.usage()
        if back is None and threads <= baseline[0] + 2:
            back = time.monotonic() - start
        time.sleep(0.25)
    return back, server.usage()


@contextmanager
def scenario_servers(
    name: str, policy: Path
) -> Iterator[tuple[Server, Callable[[grpc.Channel], Callable[[], object]]]]:
    """The server the clients call, and how the honest client calls it (given a channel)."""
    with_policy = {"rpc-auth-policy": str(policy), "rpc-shutdown-grace": "0.1"}
    started: list[Server] = []
    try:
        if name == "grpcio stream":
            started.append(Server("grpcio", {}))
        elif name.endswith("stream"):
            shares = UNSHARED if name.startswith("unshared") else {}
            started.append(Server("backend", {"rpc-shutdown-grace": "0.1", **shares}))
            config = {**with_policy, **shares}
            started.append(Server("main", config, started[0].port))
        else:
            config = {**with_policy, "rpc-max-streams": "1000", **(UNSHARED if name.startswith("unshared") else {})}
            started.append(Server("events", config))
        if name.endswith("stream"):

            def echo(channel: grpc.Channel) -> Callable[[], object]:
                stub = EchoServiceStub(channel)
                return lambda: stub.echo(EchoRequest(text="hi"), metadata=_metadata("honest"), timeout=DEADLINE)

            yield started[-1], echo
        else:

            def log_get(channel: grpc.Channel) -> Callable[[], object]:
                stub = LoggerServiceStub(channel)
                return lambda: stub.get(Filter(names=["root"]), metadata=_metadata("honest"), timeout=DEADLINE)

            yield started[-1], log_get
    finally:
        for server in reversed(started):
            server.close()


def measure(name: str, policy: Path, args: argparse.Namespace) -> dict[str, Any]:
    ctx = mp.get_context("spawn")
    kind = "stream" if name.endswith("stream") else "listen"
    with scenario_servers(name, policy) as (server, honest):
        sender_stop = ctx.Event()
        sender = None
        if kind == "listen":
            sender = ctx.Process(target=_send_events, args=(server.port, sender_stop), daemon=True)
            sender.start()
        with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            call = honest(channel)
            honest_calls(call, 0.5)  # warm-up
            before = server.usage()
            alone, alone_failed = honest_calls(call, args.measure)
            opened, leave, refused = ctx.Event(), ctx.Event(), ctx.Value("i", 0)
            count = args.streams if kind == "stream" else args.listeners
            greedy = ctx.Process(target=_greedy, args=(server.port, kind, count, opened, refused, leave), daemon=True)
            greedy.start()
            opened.wait(60)
            filled = settle(server, STREAM_FILL) if kind == "stream" else wait(args.fill)
            during, during_failed = honest_calls(call, args.hold)
            peak = server.usage()
            leave.set()
            greedy.join(30)
            back, after = back_after(server, before, args.after)
        sender_stop.set()
        if sender is not None:
            sender.join(10)
    return {
        "name": name,
        "count": count,
        "refused": refused.value,
        "alone": alone,
        "alone_failed": alone_failed,
        "during": during,
        "during_failed": during_failed,
        "before": before,
        "peak": peak,
        "after": after,
        "back": back,
        "filled": filled,
    }


def counting_cost(calls: int = 200_000) -> float:
    """Microseconds the per-caller count adds to a unary call (no policy: the peer's address parsed), best of 5."""

    class Context:
        def peer(self) -> str:
            return "ipv6:[::ffff:127.0.0.1]:54321"

    def behavior(request: object, _context: object) -> object:
        return request

    shares = Fairness(
        futures.ThreadPoolExecutor(1), {CALLS_ITEM: 24, STREAMS_ITEM: 16, WATCHES_ITEM: 100}, logging.getLogger("bench")
    )
    counted = shares.wrap("/S/m", method_handler("unary_unary", behavior)).unary_unary
    assert counted is not None
    context: Any = Context()  # what the count reads of a grpc.ServicerContext: peer()
    best = []
    for fn in (behavior, counted):
        times = []
        for _ in range(5):
            t0 = time.perf_counter()
            for _ in range(calls):
                fn(None, context)
            times.append((time.perf_counter() - t0) / calls)
        best.append(min(times))
    return (best[1] - best[0]) * 1e6


def report(r: dict[str, Any], after: float) -> str:
    def ms(values: list[float], q: float) -> str:
        return f"{percentile_ms(values, q):.1f}" if values else "none answered"

    back = f"{r['back']:.1f} s" if r["back"] is not None else f"> {after:.0f} s"
    ratio = f"{percentile_ms(r['during'], 0.99) / percentile_ms(r['alone'], 0.99):.1f}x" if r["during"] else "-"
    return (
        f"| {r['name']} | {r['count'] - r['refused']} / {r['refused']} | {r['filled']:.0f} s "
        f"| {ms(r['alone'], 0.5)} → {ms(r['during'], 0.5)} | {ms(r['alone'], 0.99)} → {ms(r['during'], 0.99)} "
        f"| {ratio} "
        f"| {r['alone_failed']} / {r['during_failed']} "
        f"| {r['before'][0]} / {r['peak'][0]} / {r['after'][0]} "
        f"| {r['before'][1]:.0f} / {r['peak'][1]:.0f} / {r['after'][1]:.0f} | {back} |"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--streams", type=int, default=300)
    parser.add_argument("--listeners", type=int, default=500)
    parser.add_argument("--measure", type=float, default=8.0, help="seconds of honest calls alone")
    parser.add_argument("--hold", type=float, default=8.0, help="seconds of honest calls while the greedy holds")
    parser.add_argument("--after", type=float, default=BACK, help="seconds watched after the greedy left")
    parser.add_argument("--fill", type=float, default=90.0, help="seconds at most unread listeners get events first")
    parser.add_argument("--only", action="append", choices=SCENARIOS)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        policy = Path(folder) / "policy.json"
        identities = {n: {"role": ROLES[n], "token_sha256": token_hash(t)} for n, t in TOKENS.items()}
        policy.write_text(json.dumps({"identities": identities}))
        results = [measure(name, policy, args) for name in args.only or SCENARIOS]
    print(
        f"{datetime.date.today()}: {args.streams} unread echo.repeat streams or {args.listeners} unread listeners"
        f" ({EVENT_RATE} events/s of {EVENT_SIZE >> 10} KiB) from one identity; an honest client's unary calls"
        f" ({RATE}/s, {DEADLINE:.0f} s deadline, {args.measure:.0f} s alone, {args.hold:.0f} s held)"
    )
    print(
        "| scenario | greedy streams held / refused | waited for windows to fill | honest p50 ms, alone → held |"
        " honest p99 ms, alone → held | p99 ratio | honest calls failed, alone / held |"
        f" server threads before / held / {args.after:.0f} s after | server RSS MB before / held / after |"
        " threads back in |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in results:
        print(report(r, args.after))
    print(f"\nper-caller count on the unary path (no policy): {counting_cost():.2f} us per call")


if __name__ == "__main__":
    main()
