"""Main's proxy and the events service in Prometheus (grpc_helper.metrics, issue 22 item 1): each family's values
after known traffic on real servers, direct and through main, read from the /metrics endpoint."""

from __future__ import annotations

import threading
from collections.abc import Callable

import grpc
import pytest
from test_compat_proxy import raw_echo, register
from test_metrics import ECHO_STUBS, Samples, free_port, scrape, value

from grpc_helper import RpcClient, RpcException, RpcMetadata, RpcStaticConfig
from grpc_helper.api import EventApiVersion, EventInterrupt, Filter
from grpc_helper.api.events_pb2_grpc import EventServiceStub
from grpc_helper.errors import AccessDenied
from grpc_helper_samples.api import EchoRequest, EchoResponse

from helpers import EchoManager, Servers, Stream, echo_descriptor, event, wait_until

EVENTS = {"events": (EventServiceStub, EventApiVersion.EVENT_API_CURRENT)}


class Denying(EchoManager):
    """Echo answering `text="deny"` with gRPC status PERMISSION_DENIED (a manager's `AccessDenied`)."""

    def echo(self, request: EchoRequest) -> EchoResponse:
        if request.text == "deny":
            raise AccessDenied("asked to deny")
        return super().echo(request)


class Metrics:
    """The metrics endpoint of the test's servers, and what it said at the start."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.before = scrape(port)

    def now(self, name: str, **labels: str) -> float:
        return value(scrape(self.port), name, **labels)

    def delta(self, name: str, **labels: str) -> float:
        return self.now(name, **labels) - value(self.before, name, **labels)

    def reaches(self, read: Callable[[], float], expected: float, timeout: float = 10) -> bool:
        """Whether `read()` (a gauge: set by a background thread) reaches `expected` within `timeout`."""
        return wait_until(lambda: read() == expected, timeout)


def series(samples: Samples, name: str, **labels: str) -> int:
    """How many series of `name` have `labels`."""
    want = set(labels.items())
    return sum(1 for (n, ls) in samples if n == name and want <= ls)


def test_upstream_calls_measured_per_endpoint(servers: Servers) -> None:
    """Through main: calls waiting for a registration, one unforwarded, then calls to the endpoint, some answered
    PERMISSION_DENIED by the backend; the same calls made directly to the backend are not main's."""
    port = free_port()
    config = {"rpc-metrics-port": str(port)}  # both servers: one process, one endpoint
    main = servers(0, [echo_descriptor(is_proxy=True)], cli_config=config)
    backend = servers(0, [echo_descriptor(Denying())], cli_config=config)
    metrics = Metrics(port)
    echo = {"proxied_service": "echo"}
    channel, stub = raw_echo(main.port)
    with channel:
        # Nothing registered: a caller's deadline passes while it waits
        with pytest.raises(grpc.RpcError) as exc:
            stub.echo(EchoRequest(text="early"), timeout=0.3)
        assert exc.value.code() is grpc.StatusCode.DEADLINE_EXCEEDED
        unforwarded = "grpc_helper_proxy_calls_unforwarded_total"
        assert metrics.reaches(lambda: metrics.delta(unforwarded, **echo, reason="unregistered"), 1)
        # A call waits for the registration, counted meanwhile
        answers: list[str] = []
        waiter = threading.Thread(target=lambda: answers.append(stub.echo(EchoRequest(text="w"), timeout=30).text))
        waiter.start()
        try:
            assert metrics.reaches(lambda: metrics.delta("grpc_helper_proxy_calls_waiting", **echo), 1)
        finally:
            register(main, backend.port, host="127.0.0.1")
            waiter.join(30)
        assert answers == ["w"]
        assert metrics.delta("grpc_helper_proxy_calls_waiting", **echo) == 0
    endpoint = {**echo, "endpoint": f"127.0.0.1:{backend.port}"}
    assert metrics.delta("grpc_helper_proxy_endpoints", **echo) == 1
    assert metrics.now("grpc_helper_proxy_endpoint_serving", **endpoint) == 1
    with RpcClient("127.0.0.1", main.port, ECHO_STUBS, timeout=10) as client:
        for _ in range(3):
            client.echo.echo(EchoRequest(text="hi"))
        for _ in range(2):
            with pytest.raises(RpcException):  # main answers in 2.x's shape: gRPC OK, r.code ERROR_RPC
                client.echo.echo(EchoRequest(text="deny"))
        assert len(list(client.echo.repeat(EchoRequest(text="s", count=4)))) == 4  # one upstream call
    with RpcClient("127.0.0.1", backend.port, ECHO_STUBS, timeout=10) as direct:
        for _ in range(5):
            direct.echo.echo(EchoRequest(text="direct"))  # the backend's own calls, never main's upstream ones
    duration = "grpc_helper_proxy_upstream_call_duration_seconds_count"
    assert metrics.delta(duration, **endpoint, grpc_status="OK") == 1 + 3 + 1  # the waiter, 3 echoes, a stream
    assert metrics.delta(duration, **endpoint, grpc_status="PERMISSION_DENIED") == 2
    assert metrics.delta("grpc_helper_proxy_upstream_failures_total", **endpoint, grpc_status="PERMISSION_DENIED") == 2
    assert metrics.delta("grpc_helper_proxy_upstream_failures_total", **endpoint) == 2  # no other failure
    # Unregistered: the endpoint's series go (an address that comes and goes leaves none behind)
    main.client.srv.proxy_forget(Filter(names=["echo"]))
    assert metrics.delta("grpc_helper_proxy_endpoints", **echo) == 0
    after = scrape(port)
    assert series(after, "grpc_helper_proxy_endpoint_serving", **endpoint) == 0
    assert wait_until(lambda: series(scrape(port), duration, **endpoint) == 0, 10)  # its channel closed


def test_an_endpoint_forgotten_by_timeout(servers: Servers, refused_port: int) -> None:
    """A registered endpoint that stopped serving: its health 0, then forgotten after rpc-proxy-stale-timeout."""
    port = free_port()
    config = {"rpc-metrics-port": str(port)}
    main = servers(0, [echo_descriptor(is_proxy=True)], cli_config=config)
    live = servers(0, [echo_descriptor()], cli_config=config)
    metrics = Metrics(port)
    echo = {"proxied_service": "echo"}
    register(main, refused_port, host="127.0.0.1")  # a replica that died without forgetting itself
    register(main, live.port, host="127.0.0.1")
    dead = {**echo, "endpoint": f"127.0.0.1:{refused_port}"}
    alive = {**echo, "endpoint": f"127.0.0.1:{live.port}"}
    assert metrics.delta("grpc_helper_proxy_endpoints", **echo) == 2
    assert metrics.reaches(lambda: metrics.now("grpc_helper_proxy_endpoint_serving", **dead), 0)
    assert metrics.now("grpc_helper_proxy_endpoint_serving", **alive) == 1
    RpcStaticConfig.PROXY_STALE_TIMEOUT.update("0.5")  # static items are process-wide: once all servers started
    assert metrics.reaches(lambda: metrics.delta("grpc_helper_proxy_endpoints_forgotten_total", **echo), 1)
    assert metrics.delta("grpc_helper_proxy_endpoints", **echo) == 1
    assert series(scrape(port), "grpc_helper_proxy_endpoint_serving", **dead) == 0


def test_events_families(servers: Servers) -> None:
    """Events sent (directly, and routed through main to the backend's events service), delivered to a listener,
    retained once it is interrupted, and dropped by a queue's bound."""
    port = free_port()
    config = {"rpc-metrics-port": str(port), "rpc-event-queue-max": "2"}
    main = servers(0, [echo_descriptor(is_proxy=True)], cli_config=config, with_events=True)  # routes events
    backend = servers(0, [echo_descriptor()], cli_config=config, with_events=True)
    register(main, backend.port, host="127.0.0.1")
    metrics = Metrics(port)
    live, retained = {"state": "live"}, {"state": "retained"}
    with RpcClient("127.0.0.1", backend.port, EVENTS, timeout=10) as client:
        stream = Stream(client, ["M"])
        assert metrics.delta("grpc_helper_events_listeners") == 1
        assert metrics.delta("grpc_helper_events_queues", **live) == 1
        for i in range(3):  # one at a time: a live queue never holds more than its bound here
            client.events.send(event("M", n=str(i)))
            assert stream.next_event().properties[0].value == str(i)
        assert metrics.delta("grpc_helper_events_sent_total") == 3
        assert metrics.reaches(lambda: metrics.delta("grpc_helper_events_delivered_total"), 3)
        client.events.interrupt(EventInterrupt(client_id=stream.client_id))
        assert metrics.reaches(lambda: metrics.delta("grpc_helper_events_listeners"), 0)
        assert metrics.delta("grpc_helper_events_queues", **retained) == 1
        assert metrics.delta("grpc_helper_events_queues", **live) == 0
        # Through main, routed to the backend's events service: retained, the third one past the bound
        routed = RpcMetadata(client="routed", route_service="echo", route_endpoint=f"127.0.0.1:{backend.port}")
        with RpcClient("127.0.0.1", main.port, EVENTS, timeout=10, name=routed) as through_main:
            sent = [event("M", n=f"r{i}") for i in range(3)]
            for e in sent:
                through_main.events.send(e)
        assert metrics.delta("grpc_helper_events_sent_total") == 3 + 3
        assert metrics.delta("grpc_helper_events_dropped_total", bound="rpc-event-queue-max") == 1
        kept = sum(len(e.SerializeToString()) for e in sent[1:])  # the newest two
        assert metrics.delta("grpc_helper_events_queued_bytes", **retained) == kept
        assert metrics.delta("grpc_helper_events_delivered_total") == 3  # nobody listened
        upstream = {"proxied_service": "echo", "endpoint": f"127.0.0.1:{backend.port}", "grpc_status": "OK"}
        assert metrics.delta("grpc_helper_proxy_upstream_call_duration_seconds_count", **upstream) == 3
        stream.it.cancel()
