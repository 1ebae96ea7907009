"""Overload: more concurrent slow calls than a server's workers, plain grpcio side by side with RpcServer.

    python bench/overload.py [--calls 60] [--workers 4] [--max-calls 8] [--work 0.5] [--deadline 5]

Both servers get `--workers` threads and an echo method taking `--work` seconds; `--calls` callers
call it at once with a `--deadline`, while a prober times `grpc.health.v1.Health/Check`. A plain
grpcio server queues every extra call (each waits for a worker, until its deadline); `RpcServer`
runs or queues at most `rpc-max-calls` and answers the others RESOURCE_EXHAUSTED at once, and
its health check never waits for a worker. Both servers run in this process (one at a time).
"""

from __future__ import annotations

import argparse
import statistics
import threading
import time
from collections import Counter
from collections.abc import Callable
from concurrent import futures

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

import grpc_helper_samples
from grpc_helper import RpcManager, RpcServer, RpcServiceDescriptor
from grpc_helper_samples.api import EchoApiVersion, EchoRequest, EchoResponse
from grpc_helper_samples.api.echo_pb2_grpc import (
    EchoServiceServicer,
    EchoServiceStub,
    add_EchoServiceServicer_to_server,
)


class SlowEcho(EchoServiceServicer, RpcManager):
    def __init__(self, work: float) -> None:
        super().__init__()
        self.work = work

    def echo(self, request: EchoRequest) -> EchoResponse:
        time.sleep(self.work)  # a call's real work, holding its worker
        return EchoResponse(text=request.text)


class RawSlowEcho(EchoServiceServicer):
    def __init__(self, work: float) -> None:
        self.work = work

    def echo(self, request: EchoRequest, _context: grpc.ServicerContext) -> EchoResponse:
        time.sleep(self.work)
        return EchoResponse(text=request.text)


def raw_server(workers: int, work: float) -> tuple[Callable[[], None], int]:
    server = grpc.server(futures.ThreadPoolExecutor(workers))
    add_EchoServiceServicer_to_server(RawSlowEcho(work), server)
    health_pb2_grpc.add_HealthServicer_to_server(health.HealthServicer(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()

    def stop() -> None:
        server.stop(0).wait()

    return stop, port


def helper_server(workers: int, max_calls: int, work: float) -> tuple[Callable[[], None], int]:
    descriptor = RpcServiceDescriptor(
        grpc_helper_samples, "echo", EchoApiVersion, SlowEcho(work), add_EchoServiceServicer_to_server, EchoServiceStub
    )
    config = {"rpc-max-workers": str(workers), "rpc-max-calls": str(max_calls), "rpc-shutdown-grace": "0.1"}
    server = RpcServer(0, [descriptor], cli_config=config, with_debug_signal=False)
    return server.shutdown, server.port


def run(port: int, calls: int, deadline: float) -> dict[str, object]:
    answers: list[tuple[str, float]] = []  # (outcome, seconds to the answer)
    health_times: list[float] = []
    lock = threading.Lock()
    done = threading.Event()
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub, probe = EchoServiceStub(channel), health_pb2_grpc.HealthStub(channel)
        stub.echo(EchoRequest(text="warm-up"), timeout=deadline)

        def caller() -> None:
            start = time.monotonic()
            try:
                stub.echo(EchoRequest(text="x"), timeout=deadline)
                outcome = "OK"
            except grpc.RpcError as exc:
                outcome = exc.code().name
            with lock:
                answers.append((outcome, time.monotonic() - start))

        def prober() -> None:
            while not done.is_set():
                start = time.monotonic()
                try:
                    probe.Check(health_pb2.HealthCheckRequest(), timeout=deadline)
                    health_times.append(time.monotonic() - start)
                except grpc.RpcError:
                    health_times.append(float("inf"))
                done.wait(0.1)

        threads = [threading.Thread(target=caller) for _ in range(calls)]
        probing = threading.Thread(target=prober)
        probing.start()
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        done.set()
        probing.join()
    outcomes = Counter(o for o, _ in answers)
    return {
        # per outcome: count, median and max seconds to the answer
        "outcomes": {
            o: (n, statistics.median(t for x, t in answers if x == o), max(t for x, t in answers if x == o))
            for o, n in sorted(outcomes.items())
        },
        "health_max_ms": max(health_times) * 1000 if health_times else float("nan"),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calls", type=int, default=60)
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--max-calls", type=int, default=8)
    parser.add_argument("--work", type=float, default=0.5)
    parser.add_argument("--deadline", type=float, default=5.0)
    args = parser.parse_args()
    print(
        f"{args.calls} concurrent calls of {args.work}s work, deadline {args.deadline}s, {args.workers} workers"
        f" (RpcServer: rpc-max-calls={args.max_calls})"
    )
    for name, start in (
        ("grpcio", lambda: raw_server(args.workers, args.work)),
        ("RpcServer", lambda: helper_server(args.workers, args.max_calls, args.work)),
    ):
        stop, port = start()
        try:
            r = run(port, args.calls, args.deadline)
        finally:
            stop()
        outcomes = r["outcomes"]
        assert isinstance(outcomes, dict)
        shown = ", ".join(f"{o} {n} (p50 {p50:.2f}s, max {top:.2f}s)" for o, (n, p50, top) in outcomes.items())
        worst = r["health_max_ms"]
        assert isinstance(worst, float)
        probe = "timed out" if worst == float("inf") else f"max {worst:.0f} ms"
        print(f"  {name:10} {shown}; health checks meanwhile: {probe}")


if __name__ == "__main__":
    main()
