"""Standard health checking and server reflection on every RpcServer."""

from __future__ import annotations

import threading
import time

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from grpc_helper_samples.api import EchoRequest

from helpers import BlockingEcho, Servers, echo_descriptor

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


def test_reflection_lists_every_service(servers: Servers) -> None:
    srv = servers(0, [echo_descriptor()], with_events=True)
    with grpc.insecure_channel(f"127.0.0.1:{srv.port}") as channel:
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        responses = stub.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]))
        names = {s.name for s in next(responses).list_services_response.service}
    assert {
        "RpcServerService", "ConfigService", "LoggerService", "EventService", "EchoService",
        "grpc.health.v1.Health", "grpc.reflection.v1alpha.ServerReflection", "grpc.channelz.v1.Channelz",
    } <= names  # fmt: skip


def test_reflection_describes_a_service(servers: Servers) -> None:
    srv = servers(0, [echo_descriptor()])
    with grpc.insecure_channel(f"127.0.0.1:{srv.port}") as channel:
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        request = reflection_pb2.ServerReflectionRequest(file_containing_symbol="EchoService")
        response = next(stub.ServerReflectionInfo(iter([request])))
    assert response.file_descriptor_response.file_descriptor_proto


def test_overall_and_per_service_status(servers: Servers) -> None:
    srv = servers(0, [echo_descriptor()])
    with grpc.insecure_channel(f"127.0.0.1:{srv.port}") as channel:
        check = health_pb2_grpc.HealthStub(channel).Check
        for service in ("", "RpcServerService", "ConfigService", "LoggerService", "EchoService"):
            assert check(health_pb2.HealthCheckRequest(service=service), timeout=5).status == SERVING
        with pytest.raises(grpc.RpcError) as exc:
            check(health_pb2.HealthCheckRequest(service="Nope"), timeout=5)
        assert exc.value.code() == grpc.StatusCode.NOT_FOUND


def test_not_serving_when_shutdown_begins(servers: Servers) -> None:
    slow = BlockingEcho()
    started, release = slow.started, slow.release
    srv = servers(0, [echo_descriptor(slow)])
    channel = grpc.insecure_channel(f"127.0.0.1:{srv.port}")
    watch = health_pb2_grpc.HealthStub(channel).Watch(health_pb2.HealthCheckRequest(service=""), timeout=30)
    assert next(watch).status == SERVING
    caller = threading.Thread(target=lambda: srv.client.echo.echo(EchoRequest()))
    caller.start()
    assert started.wait(10)
    stopper = threading.Thread(target=srv.shutdown)
    stopper.start()  # waits for the pending call: meanwhile the health status already changed
    try:
        assert next(watch).status == NOT_SERVING
        assert list(watch) == []  # then the watch ends: it doesn't hold the shutdown
        assert stopper.is_alive()
    finally:
        release.set()
        stopper.join(30)
        caller.join(30)
        channel.close()


def test_watchers_do_not_delay_shutdown(servers: Servers) -> None:
    srv = servers(0, [])
    with grpc.insecure_channel(f"127.0.0.1:{srv.port}") as channel:
        watch = health_pb2_grpc.HealthStub(channel).Watch(health_pb2.HealthCheckRequest(service=""), timeout=60)
        assert next(watch).status == SERVING
        t0 = time.monotonic()
        srv.shutdown()  # rpc-shutdown-grace is 30 s: a held shutdown would take that long
        assert time.monotonic() - t0 < 10
        assert [r.status for r in watch] == [NOT_SERVING]
