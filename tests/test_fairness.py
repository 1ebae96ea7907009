"""Fair sharing under a greedy caller (issue 17, item 5): one caller holding streams open without reading
them gets RESOURCE_EXHAUSTED beyond its share, at once, while another caller is served as usual; its
share is freed as soon as it leaves. Real servers on loopback, real unread streams (about 10 s in all)."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
import test_hostile as hostile
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from test_security import TOKENS, Pki, client_as, pki, proxied_echo, tls_config, write_policy

from grpc_helper import Folders, RpcClient, RpcServer
from grpc_helper.api import EventFilter, Filter, ProxyRegisterRequest
from grpc_helper.api.events_pb2_grpc import EventServiceStub
from grpc_helper.errors import RpcTransportError
from grpc_helper.metadata import RpcMetadata
from grpc_helper.server.fairness import Share, peer_host
from grpc_helper_samples.api import EchoRequest
from grpc_helper_samples.api.echo_pb2_grpc import EchoServiceStub

from helpers import BlockingEcho, Servers, Stream, echo_descriptor, event, wait_until

__all__ = ["pki"]  # a fixture of test_security's, used here

GREEDY, HONEST = TOKENS["app"], "t-user2-0123456789"  # identities "app" and "app2" of write_policy
QUICK = 1.0  # seconds: generous, a bound on "at once" and "as usual", not a timing


def metadata(token: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {token}"),)


@contextmanager
def unread_streams(
    address: str, count: int, start: Callable[[grpc.Channel], Any], share: Share, caller: str
) -> Iterator[list[Any]]:
    """`count` streams started with `start(channel)` and never read, once `share` counts them all for `caller`;
    cancelled on the way out."""
    with grpc.insecure_channel(address) as channel:
        calls = [start(channel) for _ in range(count)]
        try:
            assert wait_until(lambda: share.count(caller) == count, 10), share.count(caller)
            yield calls
        finally:
            for call in calls:
                call.cancel()


def refused_at_once(start: Callable[[], Any], item: str) -> None:
    """A new stream gets RESOURCE_EXHAUSTED naming `item` as its first answer, at once."""
    t0 = time.monotonic()
    with pytest.raises(grpc.RpcError) as refused:
        next(iter(start()))
    assert time.monotonic() - t0 < QUICK
    assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert item in (refused.value.details() or "")


def answered_quickly(call: Callable[[], Any]) -> Any:
    t0 = time.monotonic()
    result = call()
    assert time.monotonic() - t0 < QUICK
    return result


def repeat(token: str) -> Callable[[grpc.Channel], Any]:
    """An echo.repeat stream of (practically) endless 1 KiB messages, as `token`'s identity."""
    request = EchoRequest(text="greedy", count=10**9, payload=b"x" * 1024)
    return lambda channel: EchoServiceStub(channel).repeat(request, metadata=metadata(token), timeout=30)


@pytest.mark.parametrize(
    ("peer", "host"),
    [
        ("ipv4:127.0.0.1:5555", "127.0.0.1"),
        ("ipv6:[::1]:5555", "::1"),
        ("ipv6:%5B::1%5D:5555", "::1"),
        ("ipv6:[::ffff:10.0.0.7]:80", "10.0.0.7"),
        ("ipv6:[2001:db8::ffff:1]:80", "2001:db8::ffff:1"),
        ("unix:/run/grpc.sock", "unix:/run/grpc.sock"),
    ],
)
def test_a_caller_without_a_policy_is_its_ip_address(peer: str, host: str) -> None:
    assert peer_host(peer) == host


def test_unread_streams_on_the_workers(servers: Servers, tmp_path: Path) -> None:
    """Generator streams hold a worker each: one identity gets `rpc-max-calls-per-caller` of them."""
    config = {"rpc-auth-policy": str(write_policy(tmp_path)), "rpc-max-calls-per-caller": "4"}
    srv = servers(0, [echo_descriptor()], cli_config=config)
    address, share = f"127.0.0.1:{srv.port}", srv.fairness.calls
    with unread_streams(address, 4, repeat(GREEDY), share, "app"), grpc.insecure_channel(address) as channel:
        refused_at_once(lambda: repeat(GREEDY)(channel), "rpc-max-calls-per-caller=4")
        with client_as(srv, HONEST) as honest:
            for _ in range(20):
                assert answered_quickly(lambda: honest.echo.echo(EchoRequest(text="hi"))).text == "hi"
            assert next(iter(answered_quickly(lambda: honest.echo.repeat(EchoRequest(count=1))))).index == 0
    # Cancelled: the share is free at once, and new streams are served
    assert wait_until(lambda: share.count("app") == 0, QUICK)
    with grpc.insecure_channel(address) as channel:
        assert next(iter(repeat(GREEDY)(channel))).text == "greedy"


def ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as sock:
            sock.bind(("::1", 0))
    except OSError:
        return False
    return True


@pytest.mark.skipif(not ipv6_loopback(), reason="no IPv6 loopback: two addresses of this host are needed")
def test_without_a_policy_each_address_has_its_share(servers: Servers) -> None:
    srv = servers(0, [echo_descriptor()], cli_config={"rpc-max-calls-per-caller": "2"})
    share = srv.fairness.calls
    with (
        unread_streams(f"[::1]:{srv.port}", 2, repeat(GREEDY), share, "::1"),
        grpc.insecure_channel(f"[::1]:{srv.port}") as channel,
    ):
        refused_at_once(lambda: repeat(GREEDY)(channel), "for caller ::1 (rpc-max-calls-per-caller=2)")
        # 127.0.0.1 is another caller (its IPv4-mapped address on the dual-stack socket, as IPv4)
        assert answered_quickly(lambda: srv.client.echo.echo(EchoRequest(text="hi"))).text == "hi"
    assert wait_until(lambda: share.count("::1") == 0, QUICK)


def test_unread_streams_through_main(servers: Servers, tmp_path: Path) -> None:
    """Proxied streams hold a thread of main's stream pool each (and, unread, a worker of the backend):
    one identity gets `rpc-max-streams-per-caller` of them at main."""
    config = {"rpc-auth-policy": str(write_policy(tmp_path)), "rpc-max-streams-per-caller": "4"}
    main = proxied_echo(servers, {}, config)
    address, share = f"127.0.0.1:{main.port}", main.fairness.streams
    with unread_streams(address, 4, repeat(GREEDY), share, "app"), grpc.insecure_channel(address) as channel:
        refused_at_once(lambda: repeat(GREEDY)(channel), "rpc-max-streams-per-caller=4")
        with client_as(main, HONEST) as honest:
            for _ in range(20):
                assert answered_quickly(lambda: honest.echo.echo(EchoRequest(text="hi"))).text == "hi"
    # Gone: main's share and its stream threads are free at once (the backend calls are cancelled too)
    assert wait_until(lambda: share.count("app") == 0, QUICK)
    assert wait_until(lambda: main.streams.pending == 0, QUICK)
    with grpc.insecure_channel(address) as channel:
        assert next(iter(repeat(GREEDY)(channel))).text == "greedy"


def test_unread_listeners(servers: Servers, tmp_path: Path) -> None:
    """Listeners hold no thread, but a queue each: one identity gets `rpc-max-streams-per-caller` live ones."""
    config = {"rpc-auth-policy": str(write_policy(tmp_path)), "rpc-max-streams-per-caller": "3"}
    srv: RpcServer = servers(0, [], cli_config=config, with_events=True)
    address, share = f"127.0.0.1:{srv.port}", srv.fairness.streams

    def listen(channel: grpc.Channel) -> Any:
        return EventServiceStub(channel).listen(EventFilter(), metadata=metadata(GREEDY), timeout=30)

    with unread_streams(address, 3, listen, share, "app"), grpc.insecure_channel(address) as channel:
        refused_at_once(lambda: listen(channel), "rpc-max-streams-per-caller=3")
        with client_as(srv, HONEST) as honest, client_as(srv, TOKENS["svc"]) as sender:
            stream = answered_quickly(lambda: Stream(honest))
            answered_quickly(lambda: sender.events.send(event("E", n="1")))
            assert answered_quickly(stream.next_event).name == "E"
            stream.it.cancel()
    assert wait_until(lambda: share.count("app") == 0, QUICK)
    with grpc.insecure_channel(address) as channel:
        assert next(iter(listen(channel))).client_id > 0


def test_certificate_callers(servers: Servers, pki: Pki, tmp_path: Path) -> None:
    """A certificate caller's identity is only known inside the behavior: it is counted by that identity."""
    policy = write_policy(tmp_path, certificate_service="echo")
    config = tls_config(pki, client_auth="required", **{"rpc-auth-policy": str(policy)})
    srv = servers(0, [echo_descriptor()], cli_config={**config, "rpc-max-calls-per-caller": "2"})
    share, stubs = srv.fairness.calls, srv.client.stubs
    request = EchoRequest(text="greedy", count=10**9, payload=b"x" * 1024)
    with RpcClient("localhost", srv.port, stubs, timeout=5, security=pki.client("echo")) as greedy:
        streams = [greedy.echo.repeat(request) for _ in range(2)]  # started, never read
        assert wait_until(lambda: share.count("echo") == 2, 10)
        with pytest.raises(RpcTransportError) as refused:
            answered_quickly(lambda: next(greedy.echo.repeat(request)))
        assert refused.value.status == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "for caller echo (rpc-max-calls-per-caller=2)" in str(refused.value)
        honest = pki.client("stranger", token=HONEST)  # the token's identity, app2
        with RpcClient("localhost", srv.port, stubs, timeout=5, security=honest) as other:
            assert answered_quickly(lambda: other.echo.echo(EchoRequest(text="hi"))).text == "hi"
        for stream in streams:
            stream.cancel()
        assert wait_until(lambda: share.count("echo") == 0, QUICK)


def test_the_call_limit_is_decided_per_call_for_certificate_callers(servers: Servers, pki: Pki, tmp_path: Path) -> None:
    """The Authorizer wraps, for certificate callers, whatever handler comes from within: for one path, the
    method's own or the call limit's rejection; each call gets its own (a wrapper kept per path alone made
    the first call's decide for every later one)."""
    busy = BlockingEcho()
    policy = write_policy(tmp_path, certificate_service="echo")
    config = tls_config(pki, client_auth="required", **{"rpc-auth-policy": str(policy)})
    srv = servers(0, [echo_descriptor(busy)], cli_config={**config, "rpc-max-workers": "1", "rpc-max-calls": "1"})
    with RpcClient("localhost", srv.port, srv.client.stubs, timeout=10, security=pki.client("echo")) as client:
        held = threading.Thread(target=lambda: client.echo.echo(EchoRequest()))
        held.start()
        assert busy.started.wait(10)
        with pytest.raises(RpcTransportError) as refused:
            answered_quickly(lambda: client.echo.echo(EchoRequest()))
        assert refused.value.status == grpc.StatusCode.RESOURCE_EXHAUSTED
        busy.release.set()
        held.join(10)
        assert answered_quickly(lambda: client.echo.echo(EchoRequest())).text == "done"


@dataclass
class SecureProxy:
    """main (events on, `rpc-max-streams-per-caller=4`) and an echo backend (events on), mTLS and the policy on
    both, as the reference stack runs them; callers in both identity forms (`hostile.FORMS`)."""

    main: RpcServer
    backend: RpcServer
    pki: hostile.Pki

    def client(self, name: str, form: str, route: str = "") -> RpcClient:
        """Identity `name` in `form`, calling main (routed to `route`'s server if given), one attempt per call."""
        metadata = RpcMetadata(client=f"fair-{name}", route_service=route)
        security = self.pki.security(name, form)
        return RpcClient("127.0.0.1", self.main.port, hostile.STUBS, timeout=None, name=metadata, security=security)

    def honest_calls_answer(self) -> None:
        """Another identity, in each form, is answered at once, proxied and routed."""
        for form in hostile.FORMS:
            with self.client("app2", form) as honest, self.client("app2", form, route="echo") as routed:
                for _ in range(10):
                    assert answered_quickly(lambda: honest.echo.echo(EchoRequest(text="hi"))).text == "hi"
                assert next(answered_quickly(lambda: honest.echo.repeat(EchoRequest(count=1)))).index == 0
                assert answered_quickly(lambda: routed.srv.info(Filter())).items


@pytest.fixture
def secure_proxy(servers: Servers, tmp_path: Path) -> SecureProxy:
    pki = hostile.Pki.create(tmp_path / "pki")
    policy = hostile.write_policy(tmp_path / "policy.json")
    backend_items = pki.tls_items("echo", policy)
    backend = servers(0, [echo_descriptor()], Folders(workspace=tmp_path / "backend"), backend_items, with_events=True)
    main_items = pki.tls_items("main", policy, **{"rpc-max-streams-per-caller": "4"})
    main = servers(
        0, [echo_descriptor(is_proxy=True)], Folders(workspace=tmp_path / "main"), main_items, with_events=True
    )
    main.client.srv.proxy_register(
        ProxyRegisterRequest(names=["echo"], version="1", host="127.0.0.1", port=backend.port)
    )
    return SecureProxy(main, backend, pki)


def refused_share(start: Callable[[], Any], item: str) -> None:
    """A new call of the greedy caller's (`start()`, iterated) is refused RESOURCE_EXHAUSTED at once, naming `item`."""
    with pytest.raises(RpcTransportError) as refused:
        answered_quickly(lambda: next(iter(start())))
    assert refused.value.status == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert item in str(refused.value)


@pytest.mark.parametrize("form", hostile.FORMS)
def test_a_greedy_identity_through_main_in_each_form(secure_proxy: SecureProxy, form: str) -> None:
    """The greedy identity in `form`: its unread streams through main (proxied `echo.repeat`, and listeners routed
    to the backend) get main's `rpc-max-streams-per-caller`, and hold the backend's workers as that identity's,
    not main's; beyond, it is refused at once; another identity, in either form, is served as usual; its share
    is back once it left."""
    main, backend = secure_proxy.main, secure_proxy.backend
    greedy, routed = secure_proxy.client("app", form), secure_proxy.client("app", form, route="echo")
    request = EchoRequest(text="greedy", count=10**9, payload=b"x" * 1024)
    share = main.fairness.streams
    streams = [greedy.echo.repeat(request) for _ in range(3)]  # started, never read
    streams.append(routed.events.listen(EventFilter()))
    try:
        assert wait_until(lambda: share.count("app") == 4, 10), share.count("app")
        # At the backend, main's forwarded calls are the caller's: its workers held for app, none for main
        assert wait_until(lambda: backend.fairness.calls.count("app") == 3, 10)
        assert backend.fairness.calls.count("main") == 0
        for start in (lambda: greedy.echo.repeat(request), lambda: routed.events.listen(EventFilter())):
            refused_share(start, "for caller app (rpc-max-streams-per-caller=4)")
        secure_proxy.honest_calls_answer()
    finally:
        for stream in streams:
            stream.cancel()
    assert wait_until(lambda: share.count("app") == 0, QUICK)
    assert wait_until(lambda: backend.fairness.calls.count("app") == 0, QUICK)  # main cancelled its backend calls
    stream = greedy.echo.repeat(request)
    assert next(stream).text == "greedy"
    stream.cancel()
    greedy.close()
    routed.close()


@pytest.mark.parametrize("form", hostile.FORMS)
def test_idle_reflection_streams(secure_proxy: SecureProxy, form: str) -> None:
    """A reflection stream (bidirectional, on main's stream pool) held open without a request holds a thread of
    that pool: one identity gets its share of them, not the pool (it once took all of it: every proxied and
    routed call of the others waited to its deadline)."""
    main = secure_proxy.main
    greedy = secure_proxy.client("app", form)
    channel, stop = greedy.channel, threading.Event()
    metadata = (*greedy.metadata.as_metadata(), *greedy.security.metadata())

    def idle() -> Iterator[reflection_pb2.ServerReflectionRequest]:
        stop.wait(30)  # no request: the server's reader waits
        yield from ()

    def start() -> Any:
        return reflection_pb2_grpc.ServerReflectionStub(channel).ServerReflectionInfo(idle(), metadata=metadata)

    streams = [start() for _ in range(4)]
    try:
        assert wait_until(lambda: main.fairness.streams.count("app") == 4, 10), main.fairness.streams.count("app")
        with pytest.raises(grpc.RpcError) as refused:
            answered_quickly(lambda: next(start()))
        assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "for caller app (rpc-max-streams-per-caller=4)" in (refused.value.details() or "")
        secure_proxy.honest_calls_answer()
    finally:
        stop.set()
        for stream in streams:
            stream.cancel()
    assert wait_until(lambda: main.fairness.streams.count("app") == 0, QUICK)
    greedy.close()


def test_health_watches_are_bounded_per_caller(servers: Servers) -> None:
    """Health is open to anybody, and a Watch holds no thread but its call's memory (10,000 from one client once
    took 190 MB of main's): one caller (its address: health has no identity) gets `rpc-max-watches-per-caller`
    of them, the next is refused at once, health checks still answer, and a watch that ends frees its place."""
    srv = servers(0, [echo_descriptor()], cli_config={"rpc-max-watches-per-caller": "3"})
    share = srv.fairness.watches
    request = health_pb2.HealthCheckRequest(service="")
    with grpc.insecure_channel(f"127.0.0.1:{srv.port}") as channel:
        health = health_pb2_grpc.HealthStub(channel)
        watches = [health.Watch(request) for _ in range(3)]
        try:
            for watch in watches:
                assert next(watch).status == health_pb2.HealthCheckResponse.SERVING
            assert share.count("127.0.0.1") == 3
            with pytest.raises(grpc.RpcError) as refused:
                answered_quickly(lambda: next(health.Watch(request)))
            assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert "for caller 127.0.0.1 (rpc-max-watches-per-caller=3)" in (refused.value.details() or "")
            assert answered_quickly(lambda: health.Check(request)).status == health_pb2.HealthCheckResponse.SERVING
            watches.pop().cancel()
            assert wait_until(lambda: share.count("127.0.0.1") == 2, QUICK)
            watches.append(health.Watch(request))
            assert next(watches[-1]).status == health_pb2.HealthCheckResponse.SERVING
        finally:
            for watch in watches:
                watch.cancel()
    assert wait_until(lambda: share.count("127.0.0.1") == 0, QUICK)
