"""Issue 11, items 3, 6, 8, 9: health never waits for a worker, the client timeout bounds a whole call,
calls beyond `rpc-max-calls` are rejected at once, idle threads end (IdlePool)."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from concurrent.futures import Future
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from grpc_helper import RpcClient, RpcException, RpcServer, threads
from grpc_helper.api import Filter, ProxyRegisterRequest
from grpc_helper.api.server_pb2_grpc import RpcServerServiceStub
from grpc_helper.errors import RpcTransportError
from grpc_helper.threads import IdlePool
from grpc_helper_samples.api import EchoRequest
from grpc_helper_samples.api.echo_pb2_grpc import EchoServiceStub

from helpers import BlockingEcho, Servers, Stream, echo_descriptor, wait_until


def threads_named(prefix: str) -> int:
    return sum(1 for t in threading.enumerate() if t.name.startswith(prefix))


@pytest.fixture
def busy() -> Iterator[BlockingEcho]:
    """An echo manager whose calls block until the test ends."""
    manager = BlockingEcho()
    yield manager
    manager.release.set()


def block_workers(server: RpcServer, manager: BlockingEcho, n: int) -> tuple[grpc.Channel, list[Any]]:
    """`n` echo calls blocked in `manager` (started in that order: each has its worker before the next)."""
    channel = grpc.insecure_channel(f"127.0.0.1:{server.port}")
    stub = EchoServiceStub(channel)
    calls = []
    for _ in range(n):
        manager.started.clear()
        calls.append(stub.echo.future(EchoRequest(), timeout=30))
        assert manager.started.wait(10)
    return channel, calls


# --- 3: health never waits for a worker ---


def test_health_check_answers_while_every_worker_is_busy(servers: Servers, busy: BlockingEcho) -> None:
    server = servers(0, [echo_descriptor(busy)], cli_config={"rpc-max-workers": "2"})
    channel, _calls = block_workers(server, busy, 2)
    with channel:
        health = health_pb2_grpc.HealthStub(channel)
        start = time.monotonic()
        answer = health.Check(health_pb2.HealthCheckRequest(service=""), timeout=5)
        assert answer.status == health_pb2.HealthCheckResponse.SERVING
        assert time.monotonic() - start < 1
        watch = health.Watch(health_pb2.HealthCheckRequest(service=""), timeout=5)
        assert next(watch).status == health_pb2.HealthCheckResponse.SERVING
        watch.cancel()
        busy.release.set()


def test_health_pools_are_per_server(servers: Servers) -> None:
    """Each server's health service runs on that server's own pools: another's shutdown leaves it working."""
    first = servers(0)
    second = servers(0)
    first.shutdown()  # its pools are shut down: the other server's watches must not use them
    with grpc.insecure_channel(f"127.0.0.1:{second.port}") as channel:
        watch = health_pb2_grpc.HealthStub(channel).Watch(health_pb2.HealthCheckRequest(service=""), timeout=5)
        assert next(watch).status == health_pb2.HealthCheckResponse.SERVING
        watch.cancel()


def test_health_watches_opening_and_closing_never_wedge_the_server(servers: Servers) -> None:
    """Watch streams that open and close all the time (gRPC clients health-checking a backend: main's
    channels do) while statuses change: the health service keeps answering and the server shuts down
    at once. grpc_health's servicer hung here: it sends a Watch's first status under its lock, and
    the send waits for grpcio's server thread, which was blocked on that lock closing another watch."""
    server = servers(0)
    stop = threading.Event()
    errors: list[BaseException] = []

    def watcher() -> None:
        with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            for _ in range(300):
                if stop.is_set():
                    return
                watch = stub.Watch(health_pb2.HealthCheckRequest(service=""), timeout=5)
                try:
                    next(watch)
                except grpc.RpcError as exc:  # the server wedged: Watch's first status never came
                    errors.append(exc)
                    return
                watch.cancel()

    def flapper() -> None:
        for i in range(2000):
            if stop.is_set():
                return
            server.health.set("", health_pb2.HealthCheckResponse.SERVING if i % 2 else 2)

    threads = [threading.Thread(target=watcher) for _ in range(4)] + [threading.Thread(target=flapper)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    stop.set()
    assert errors == []
    assert not any(t.is_alive() for t in threads)
    with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        check = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=""), timeout=5)
        assert check.status in (health_pb2.HealthCheckResponse.SERVING, health_pb2.HealthCheckResponse.NOT_SERVING)
    start = time.monotonic()
    server.shutdown()
    assert server.wait_shutdown(30)
    assert time.monotonic() - start < 10


# --- 8: calls beyond rpc-max-calls are rejected at once ---


def test_calls_over_the_limit_are_rejected_at_once(servers: Servers, busy: BlockingEcho) -> None:
    server = servers(0, [echo_descriptor(busy)], cli_config={"rpc-max-workers": "2", "rpc-max-calls": "3"})
    channel, calls = block_workers(server, busy, 2)
    with channel:
        stub = EchoServiceStub(channel)
        queued = stub.echo.future(EchoRequest(), timeout=30)  # the 3rd: waits for a worker
        assert wait_until(lambda: server._workers.pending == 3, 10)
        start = time.monotonic()
        with pytest.raises(grpc.RpcError) as info:
            stub.echo(EchoRequest(), timeout=10)
        assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert time.monotonic() - start < 1
        # health, srv.info and srv.shutdown's service still answer under that load, at once
        start = time.monotonic()
        check = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
        assert check.status == health_pb2.HealthCheckResponse.SERVING
        srv = RpcServerServiceStub(channel)
        assert [i.name for i in srv.info(Filter(), timeout=5).items][:1] == ["srv"]
        assert time.monotonic() - start < 1
        # once the calls end, their slots are free again
        busy.release.set()
        assert [c.result(10).text for c in [*calls, queued]] == ["done"] * 3
        assert wait_until(lambda: server._workers.pending == 0, 10)
        assert stub.echo(EchoRequest(), timeout=10).text == "done"


def test_rejected_and_cancelled_calls_free_their_slots(servers: Servers, busy: BlockingEcho) -> None:
    """Calls dropped before a worker ran them (cancelled, undecodable) don't keep a slot."""
    server = servers(0, [echo_descriptor(busy)], cli_config={"rpc-max-workers": "1", "rpc-max-calls": "3"})
    channel, _calls = block_workers(server, busy, 1)
    with channel:
        stub = EchoServiceStub(channel)
        queued = [stub.echo.future(EchoRequest(), timeout=30) for _ in range(2)]
        assert wait_until(lambda: server._workers.pending == 3, 10)
        for call in queued:
            call.cancel()
        garbage: Any = channel.unary_unary("/grpc_helper_samples.api.EchoService/echo")
        with pytest.raises(grpc.RpcError):
            garbage(b"\xff\xff\xff", timeout=1)
        busy.release.set()
        assert wait_until(lambda: server._workers.pending == 0, 10)


# --- 6: the client timeout bounds the whole call ---


def test_client_timeout_bounds_a_call_to_a_stopped_backend(servers: Servers) -> None:
    main = servers(0, [echo_descriptor(is_proxy=True)])  # rpc-client-timeout: 60 s, the default
    backend = servers(0, [echo_descriptor()])
    main.client.srv.proxy_register(
        ProxyRegisterRequest(names=["echo"], version="1", host="127.0.0.1", port=backend.port)
    )
    backend.shutdown()  # registered, but stopped
    client = RpcClient("127.0.0.1", main.port, {"echo": (EchoServiceStub, None)}, timeout=2)
    with client:
        start = time.monotonic()
        with pytest.raises(RpcException):  # the proxy's error, or the deadline's (whichever comes first)
            client.echo.echo(EchoRequest(text="x"))
        assert time.monotonic() - start < 4


def test_client_timeout_window_starts_with_the_call(refused_port: int) -> None:
    """Retries against an unreachable server stop `timeout` seconds after the call started."""
    client = RpcClient("127.0.0.1", refused_port, {"echo": (EchoServiceStub, None)}, timeout=1)
    with client:
        start = time.monotonic()
        with pytest.raises(RpcTransportError):
            client.echo.echo(EchoRequest())
        assert time.monotonic() - start < 2


# --- 9: idle threads end ---


def test_idle_pool_runs_tasks_and_ends_idle_threads() -> None:
    pool = IdlePool(4, "idle-test", idle_timeout=0.2)
    gate = threading.Event()
    futures: list[Future[int]] = [pool.submit(lambda i=i: gate.wait(10) and i) for i in range(10)]
    assert wait_until(lambda: pool.thread_count == 4, 5)  # bounded by max_workers, the rest queued
    assert pool.pending == 10
    gate.set()
    assert [f.result(10) for f in futures] == list(range(10))
    assert pool.pending == 0
    assert wait_until(lambda: pool.thread_count == 0 and threads_named("idle-test") == 0, 5)
    assert pool.submit(lambda: 7).result(5) == 7  # a new thread once needed again
    failing = pool.submit(lambda: 1 / 0)
    with pytest.raises(ZeroDivisionError):
        failing.result(5)
    pool.shutdown(wait=True)
    assert pool.thread_count == 0
    with pytest.raises(RuntimeError):
        pool.submit(lambda: 1)


def test_ending_idle_threads_give_freed_memory_back(monkeypatch: pytest.MonkeyPatch) -> None:
    """What a burst's threads freed goes back to the system as they end (glibc keeps it otherwise), at most once
    a second whatever the number of threads ending; not when a lone thread comes and goes."""
    trims: list[int] = []
    monkeypatch.setattr(threads, "_trim", trims.append)
    monkeypatch.setattr(threads, "_trimmed", 0.0)
    monkeypatch.setattr(threads, "_TRIM_INTERVAL", 60.0)  # however slow the machine, the threads end within it
    pool = IdlePool(8, "idle-trim", idle_timeout=0.05)
    assert pool.submit(lambda: 1).result(5) == 1
    assert wait_until(lambda: pool.thread_count == 0, 5)
    assert not trims  # a thread coming and going (a probe's) is no burst
    gate = threading.Event()
    futures = [pool.submit(gate.wait, 10) for _ in range(8)]
    assert wait_until(lambda: pool.thread_count == 8, 5)
    assert not trims  # busy threads: nothing
    gate.set()
    assert all(f.result(10) for f in futures)
    assert wait_until(lambda: pool.thread_count == 0, 5)
    assert trims == [0]  # eight threads ended: one trim
    pool.shutdown()


def test_idle_pool_shutdown_cancels_queued_tasks() -> None:
    pool = IdlePool(1, "idle-cancel")
    gate = threading.Event()
    running = pool.submit(gate.wait, 10)
    assert wait_until(running.running, 5)
    queued = pool.submit(lambda: 1)
    pool.shutdown(wait=False, cancel_futures=True)
    assert queued.cancelled()
    gate.set()
    assert running.result(10) is True
    assert wait_until(lambda: pool.thread_count == 0, 5)


def test_idle_pool_without_threads_to_start(monkeypatch: pytest.MonkeyPatch) -> None:
    """When the system refuses a thread ("can't start new thread"), a task waits for a running one; with
    none running, `submit` says so and counts nothing."""
    pool, empty = IdlePool(4, "idle-refused"), IdlePool(2, "idle-none")
    gate = threading.Event()
    running = pool.submit(gate.wait, 10)
    assert wait_until(running.running, 5)

    def refuse(_thread: threading.Thread) -> None:
        raise RuntimeError("can't start new thread")

    with monkeypatch.context() as patch:
        patch.setattr(threading.Thread, "start", refuse)
        queued = pool.submit(lambda: 2)
        assert (pool.pending, pool.thread_count) == (2, 1)
        with pytest.raises(RuntimeError, match="can't start"):
            empty.submit(lambda: 1)
        assert (empty.pending, empty.thread_count) == (0, 0)
    gate.set()
    assert queued.result(10) == 2  # run by the thread that was there
    assert empty.submit(lambda: 3).result(10) == 3  # threads again: back to normal
    pool.shutdown(wait=True)
    empty.shutdown(wait=True)
    assert pool.thread_count == empty.thread_count == 0


class LongLivedEcho(BlockingEcho):
    _long_lived_methods = ("echo",)  # served on the stream pool, as proxied calls are


def test_stream_threads_end_once_streams_left(servers: Servers) -> None:
    manager = LongLivedEcho()
    # 200 streams from one host: lift its share (tests/test_fairness.py covers it)
    server = servers(0, [echo_descriptor(manager)], with_events=True, cli_config={"rpc-max-streams-per-caller": "1000"})
    before = threads_named("rpc-stream")
    with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        calls = [EchoServiceStub(channel).echo.future(EchoRequest(text="x"), timeout=30) for _ in range(200)]
        assert wait_until(lambda: threads_named("rpc-stream") >= before + 200, 30)
        manager.release.set()
        assert all(call.result().text == "done" for call in calls)
    assert wait_until(lambda: threads_named("rpc-stream") <= before + 5, 15)
    # Event listeners are pushed streams: 200 of them hold no stream thread at all
    client = RpcClient("127.0.0.1", server.port, {"events": (server.client.stubs["events"][0], None)}, timeout=5)
    with client:
        streams = [Stream(client) for _ in range(200)]
        assert threads_named("rpc-stream") <= before + 5
        for stream in streams:
            stream.it.cancel()
