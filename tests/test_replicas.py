"""Issue 13, items 1-7: several endpoints (replicas) per proxied service, balanced and health-checked
by gRPC's own round_robin and client-side health checking; failover; config across replicas."""

from __future__ import annotations

import json
import signal
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from test_compat_proxy import raw_echo, register

from grpc_helper import Config, Folders, RpcClient, RpcException, RpcMetadata, RpcServer, RpcStaticConfig
from grpc_helper.api import (
    ConfigApiVersion,
    ConfigItemUpdate,
    ConfigUpdate,
    ConfigValidator,
    Endpoint,
    EventApiVersion,
    Filter,
    ResultCode,
    ServerApiVersion,
)
from grpc_helper.api.config_pb2_grpc import ConfigServiceStub
from grpc_helper.api.events_pb2_grpc import EventServiceStub
from grpc_helper.api.server_pb2_grpc import RpcServerServiceStub
from grpc_helper.events import RoutesFollower
from grpc_helper.proxy.registry import PROXY_FILE
from grpc_helper_samples import echo
from grpc_helper_samples.api import EchoApiVersion, EchoRequest, EchoResponse
from grpc_helper_samples.api.echo_pb2_grpc import EchoServiceStub

from helpers import EchoManager, Servers, echo_descriptor, start_echo, wait_until


class Tagged(EchoManager):
    """An echo replica answering with its own tag (the text is replaced), counting its calls."""

    def __init__(self, tag: str) -> None:
        super().__init__()
        self.tag = tag
        self.count = 0

    def echo(self, _request: EchoRequest) -> EchoResponse:
        self.count += 1
        return EchoResponse(text=self.tag)


def replicas(servers: Servers, main: RpcServer, n: int) -> list[RpcServer]:
    started = [servers(0, [echo_descriptor(Tagged(f"r{i}"))]) for i in range(n)]
    for backend in started:
        register(main, backend.port, host="127.0.0.1")
    return started


def endpoints(main: RpcServer, name: str = "echo") -> list[tuple[str, int, bool]]:
    item = main.client.srv.info(Filter(names=[name])).items[0]
    return [(e.host, e.port, e.serving) for e in item.endpoints]


def main_health(main: RpcServer, service: str = "EchoService") -> int:
    with grpc.insecure_channel(f"127.0.0.1:{main.port}") as channel:
        request = health_pb2.HealthCheckRequest(service=service)
        return health_pb2_grpc.HealthStub(channel).Check(request, timeout=5).status


SERVING, NOT_SERVING = health_pb2.HealthCheckResponse.SERVING, health_pb2.HealthCheckResponse.NOT_SERVING


def test_every_replica_gets_calls(servers: Servers) -> None:
    main = servers(0, [echo_descriptor(is_proxy=True)])
    backends = replicas(servers, main, 3)
    channel, stub = raw_echo(main.port)
    with channel:
        answers = Counter(stub.echo(EchoRequest(), timeout=10).text for _ in range(60))
    assert set(answers) == {"r0", "r1", "r2"}  # round_robin: every replica, about a third each
    assert all(count >= 10 for count in answers.values()), answers
    assert [(h, p) for h, p, _ in endpoints(main)] == [("127.0.0.1", b.port) for b in backends]


def test_registration_is_per_endpoint_and_idempotent(servers: Servers, tmp_path: Path) -> None:
    main = servers(0, [echo_descriptor(is_proxy=True)], folders=Folders(workspace=tmp_path))
    first, second = replicas(servers, main, 2)
    register(main, first.port, host="127.0.0.1", version="b-2")  # again: refreshed, not added
    assert [(h, p) for h, p, _ in endpoints(main)] == [("127.0.0.1", second.port), ("127.0.0.1", first.port)]
    item = main.client.srv.info(Filter(names=["echo"])).items[0]
    # 2.x's fields show one endpoint: the newest registration, as a 2.x re-registration replaced the old one
    assert (item.proxy_host, item.proxy_port, item.version) == ("127.0.0.1", first.port, "b-2")
    # proxy.json: the newest endpoint at the top level, as 2.x reads it; the others under "replicas"
    saved = json.loads((tmp_path / PROXY_FILE).read_text())
    assert saved == {
        "echo": {
            "host": "127.0.0.1",
            "port": first.port,
            "version": "b-2",
            "replicas": [{"host": "127.0.0.1", "port": second.port, "version": "b-1.0"}],
        }
    }
    # A replica's forget removes its own endpoint only
    main.client.srv.proxy_forget(Filter(names=["echo"], endpoint=Endpoint(host="127.0.0.1", port=first.port)))
    assert [(h, p) for h, p, _ in endpoints(main)] == [("127.0.0.1", second.port)]
    channel, stub = raw_echo(main.port)
    with channel:
        assert {stub.echo(EchoRequest(), timeout=10).text for _ in range(6)} == {"r1"}
    # Forgetting an endpoint that is not registered changes nothing
    main.client.srv.proxy_forget(Filter(names=["echo"], endpoint=Endpoint(host="127.0.0.1", port=1)))
    assert len(endpoints(main)) == 1
    # A 2.x backend's forget (names only) removes every endpoint, as 2.x did
    register(main, first.port, host="127.0.0.1")
    main.client.srv.proxy_forget(Filter(names=["echo"]))
    item = main.client.srv.info(Filter(names=["echo"])).items[0]
    assert (list(item.endpoints), item.proxy_host, item.proxy_port) == ([], "", 0)
    assert json.loads((tmp_path / PROXY_FILE).read_text()) == {}


def test_every_endpoint_is_restored(servers: Servers, tmp_path: Path) -> None:
    folders = Folders(workspace=tmp_path)
    main = servers(0, [echo_descriptor(is_proxy=True)], folders=folders)
    backends = replicas(servers, main, 3)
    main.shutdown()
    assert main.wait_shutdown(30)
    restarted = servers(0, [echo_descriptor(is_proxy=True)], folders=folders)
    assert [(h, p) for h, p, _ in endpoints(restarted)] == [("127.0.0.1", b.port) for b in backends]
    channel, stub = raw_echo(restarted.port)
    with channel:
        assert {stub.echo(EchoRequest(), timeout=10).text for _ in range(30)} == {"r0", "r1", "r2"}


def test_a_replica_not_serving_gets_no_calls_and_health_follows(servers: Servers) -> None:
    main = servers(0, [echo_descriptor(is_proxy=True)])
    backends = replicas(servers, main, 2)
    channel, stub = raw_echo(main.port)
    with channel:
        assert {stub.echo(EchoRequest(), timeout=10).text for _ in range(10)} == {"r0", "r1"}
        backends[0].health.set("", NOT_SERVING)  # e.g. draining: gRPC's health watch tells main's channel
        assert wait_until(lambda: endpoints(main)[0][2] is False, 10)
        assert {stub.echo(EchoRequest(), timeout=10).text for _ in range(10)} == {"r1"}
        assert main_health(main) == SERVING  # one endpoint still serves
        backends[1].health.set("", NOT_SERVING)
        assert wait_until(lambda: main_health(main) == NOT_SERVING, 10)  # none serves
        assert [s for _, _, s in endpoints(main)] == [False, False]
        backends[0].health.set("", SERVING)
        assert wait_until(lambda: main_health(main) == SERVING, 10)
        assert {stub.echo(EchoRequest(), timeout=10).text for _ in range(10)} == {"r0"}


def test_a_replica_shutting_down_forgets_only_itself(servers: Servers) -> None:
    """RpcProxiedManager's own forget, at shutdown, names its endpoint: the other replicas stay."""
    main = servers(0, [echo_descriptor(is_proxy=True)])
    config = {"rpc-main-host": "127.0.0.1", "rpc-main-port": str(main.port)}
    one = servers(0, [echo.descriptor()], cli_config=config)  # the sample: registers itself on main
    two = servers(0, [echo.descriptor()], cli_config=config)
    assert sorted(p for _, p, _ in endpoints(main)) == sorted([one.port, two.port])
    one.shutdown()
    assert one.wait_shutdown(30)
    assert [p for _, p, _ in endpoints(main)] == [two.port]


def test_stale_endpoints_are_forgotten_but_never_the_last(servers: Servers, refused_port: int) -> None:
    main = servers(0, [echo_descriptor(is_proxy=True)])
    register(main, refused_port, host="127.0.0.1")  # a replica that died without forgetting itself
    (live,) = replicas(servers, main, 1)
    RpcStaticConfig.PROXY_STALE_TIMEOUT.update("0.5")  # static items are process-wide: once all servers started
    assert wait_until(lambda: [p for _, p, _ in endpoints(main)] == [live.port], 10)
    live.shutdown()
    assert live.wait_shutdown(30)
    # Alone and down: kept (it may come back at the same address, as with 2.x), shown not serving
    assert wait_until(lambda: endpoints(main) == [("127.0.0.1", live.port, False)], 10)
    # A duration, not a synchronisation: twice the stale timeout later, it is still registered
    time.sleep(1)
    assert endpoints(main) == [("127.0.0.1", live.port, False)]


def test_config_reaches_every_replica(servers: Servers, tmp_path: Path) -> None:
    """Through main, set/reset reach every replica; get reports a conflict only when they disagree."""
    main = servers(0, [echo_descriptor(is_proxy=True)])
    backends = [
        servers(
            0,
            [echo_descriptor()],
            folders=Folders(workspace=tmp_path / f"r{i}"),
            user_items=[Config("replica-limit", "A limit", "5", validator=ConfigValidator.CONFIG_VALID_POS_INT)],
        )  # an item of its own per server (a Config holds its value)
        for i in range(2)
    ]
    for backend in backends:
        register(main, backend.port, host="127.0.0.1")

    def values() -> list[str]:
        return [b.client.config.get(Filter(names=["replica-limit"])).items[0].value for b in backends]

    main.client.config.set(ConfigUpdate(items=[ConfigItemUpdate(name="replica-limit", value="7")]))
    assert values() == ["7", "7"]
    assert [i.value for i in main.client.config.get(Filter(names=["replica-limit"])).items] == ["7"]
    backends[1].client.config.set(ConfigUpdate(items=[ConfigItemUpdate(name="replica-limit", value="9")]))
    with pytest.raises(RpcException) as exc:  # replicas disagree: said so, not one of them picked
        main.client.config.get(Filter(names=["replica-limit"]))
    assert exc.value.rc == ResultCode.ERROR_ITEM_CONFLICT
    main.client.config.reset(Filter(names=["replica-limit"]))
    assert values() == ["5", "5"]


# --- failover: 3 replicas in processes of their own, one killed with kill -9 under load ---


def test_failover_after_kill9_loses_only_calls_in_flight(servers: Servers, tmp_path: Path) -> None:
    main = servers(0, [echo_descriptor(is_proxy=True)])
    processes = [start_echo(main.port, tmp_path / f"echo{i}") for i in range(3)]
    try:
        assert wait_until(lambda: sum(s for _, _, s in endpoints(main)) == 3, 60)
        concurrency, stop = 4, threading.Event()
        outcomes: list[tuple[float, float, bool]] = []  # (sent, answered, ok)
        lock = threading.Lock()

        def load() -> None:
            channel, stub = raw_echo(main.port)
            with channel:
                while not stop.is_set():
                    sent = time.monotonic()
                    r = stub.echo(EchoRequest(text="x"), timeout=10)
                    with lock:
                        outcomes.append((sent, time.monotonic(), r.r.code == ResultCode.OK))

        threads = [threading.Thread(target=load) for _ in range(concurrency)]
        for t in threads:
            t.start()
        assert wait_until(lambda: len(outcomes) > 200, 30)  # steady load on the three
        killed = processes[0]
        killed.send_signal(signal.SIGKILL)
        kill_time = time.monotonic()
        assert wait_until(lambda: len([o for o in outcomes if o[0] > kill_time + 1.5]) > 200, 30)
        stop.set()
        for t in threads:
            t.join(30)
        failed = [o for o in outcomes if not o[2]]
        # At most the calls in flight on the killed replica fail (each load thread has one call at a time)
        assert len(failed) <= concurrency, failed
        # ... sent before main's channel saw the replica gone (a call written to its dead connection may have
        # reached it: never resent), so none issued 1 s after the kill
        assert all(sent <= kill_time + 1 for sent, _, _ in failed), (kill_time, failed)
        late = [o for o in outcomes if o[0] > kill_time + 1]
        assert late
        assert all(ok for _, _, ok in late)  # every call issued 1 s after the kill succeeds
        assert wait_until(lambda: sum(s for _, _, s in endpoints(main)) == 2, 10)
        assert main_health(main) == SERVING
    finally:
        for process in processes:
            if process.poll() is None:
                process.terminate()
        for process in processes:
            process.wait(30)


def test_the_registered_host_can_be_given(servers: Servers) -> None:
    """`rpc-proxy-host` (e.g. a pod IP from Kubernetes' downward API) is what a proxied server registers."""
    main = servers(0, [echo_descriptor(is_proxy=True)])
    config = {"rpc-main-host": "127.0.0.1", "rpc-main-port": str(main.port), "rpc-proxy-host": "127.0.0.2"}
    backend = servers(0, [echo.descriptor()], cli_config=config)
    assert endpoints(main) == [("127.0.0.2", backend.port, True)]
    channel, stub = raw_echo(main.port)
    with channel:
        assert stub.echo(EchoRequest(text="via .2"), timeout=10).text == "via .2"


# --- item 8: a backend's own default services, through main ---


def routed(main: RpcServer, service: str, endpoint: str = "") -> RpcClient:
    """A client of main's default services whose calls carry the routing keys."""
    stubs: dict[str, Any] = {
        "srv": (RpcServerServiceStub, ServerApiVersion.SERVER_API_CURRENT),
        "config": (ConfigServiceStub, ConfigApiVersion.CONFIG_API_CURRENT),
    }
    metadata = RpcMetadata(client="routing-test", route_service=service, route_endpoint=endpoint)
    return RpcClient("127.0.0.1", main.port, stubs, timeout=10, name=metadata)


def test_default_services_of_a_backend_through_main(servers: Servers, capsys: pytest.CaptureFixture[str]) -> None:
    main = servers(0, [echo_descriptor(is_proxy=True)])
    backends = [
        servers(0, [echo_descriptor()], user_items=[Config("replica-limit", "A limit", str(5 + i))]) for i in range(2)
    ]
    for backend in backends:
        register(main, backend.port, host="127.0.0.1")
    # Without the key: main itself (echo is proxied there)
    assert main.client.srv.info(Filter(names=["echo"])).items[0].is_proxy
    with routed(main, "echo") as client:  # any replica: its own srv, where echo is served, not proxied
        assert client.srv.info(Filter(names=["echo"])).items[0].is_proxy is False
    for i, backend in enumerate(backends):  # one replica, named by its endpoint
        with routed(main, "echo", f"127.0.0.1:{backend.port}") as client:
            assert client.config.get(Filter(names=["replica-limit"])).items[0].value == str(5 + i)
            client.config.set(ConfigUpdate(items=[ConfigItemUpdate(name="replica-limit", value=str(20 + i))]))
    assert [b.client.config.get(Filter(names=["replica-limit"])).items[0].value for b in backends] == ["20", "21"]
    # The CLI: --service / --endpoint
    from grpc_helper import ctl

    endpoint = f"127.0.0.1:{backends[1].port}"
    argv = ["--port", str(main.port), "--service", "echo", "--endpoint", endpoint, "--json", "config", "get"]
    assert ctl.main([*argv, "replica-limit"]) == 0
    assert json.loads(capsys.readouterr().out)["items"][0]["value"] == "21"
    assert ctl.main(["--port", str(main.port), "--endpoint", endpoint, "info"]) == 2  # --endpoint needs --service
    # Bad routes: clear errors, nothing forwarded
    for service, endpoint, code in (
        ("nope", "", ResultCode.ERROR_ITEM_UNKNOWN),
        ("srv", "", ResultCode.ERROR_ITEM_UNKNOWN),  # not a proxied service
        ("echo", "127.0.0.1", ResultCode.ERROR_PARAM_INVALID),
        ("echo", "127.0.0.1:1", ResultCode.ERROR_ITEM_UNKNOWN),  # not one of its endpoints
    ):
        with routed(main, service, endpoint) as client, pytest.raises(RpcException) as exc:
            client.srv.info(Filter())
        assert exc.value.rc == code, (service, endpoint, exc.value)


def test_routed_log_set_changes_the_backend_not_main(servers: Servers, tmp_path: Path) -> None:
    """`grpc-helper --service echo log set ...` (the issue's example): the echo process's logger changes
    (persisted in its workspace), main's does not."""
    from grpc_helper import ctl

    main = servers(0, [echo_descriptor(is_proxy=True)], folders=Folders(workspace=tmp_path / "main"))
    process = start_echo(main.port, tmp_path / "echo")
    try:
        assert wait_until(lambda: sum(s for _, _, s in endpoints(main)) == 1, 60)
        assert ctl.main(["--port", str(main.port), "--service", "echo", "log", "set", "EchoManager", "DEBUG"]) == 0
        saved = json.loads((tmp_path / "echo" / "loggers.json").read_text())
        assert saved == {"EchoManager": "DEBUG"}
        assert not (tmp_path / "main" / "loggers.json").exists()
    finally:
        process.terminate()
        process.wait(30)


# --- item 9: direct mode, past the proxy ---


def direct_client(main: RpcServer) -> RpcClient:
    stubs: dict[str, Any] = {"echo": (EchoServiceStub, EchoApiVersion.ECHO_API_CURRENT)}
    return RpcClient("127.0.0.1", main.port, stubs, timeout=10, name="direct-test", direct=True)


def test_direct_mode_calls_the_replicas_past_main(servers: Servers) -> None:
    main = servers(0, [echo_descriptor(is_proxy=True)])
    backends = replicas(servers, main, 2)
    with direct_client(main) as client:
        assert {client.echo.echo(EchoRequest()).text for _ in range(10)} == {"r0", "r1"}  # balanced by gRPC
        main.shutdown()  # main gone: the calls never went through it
        assert main.wait_shutdown(30)
        assert {client.echo.echo(EchoRequest()).text for _ in range(10)} == {"r0", "r1"}
        assert [m.index for m in client.echo.repeat(EchoRequest(count=3))] == [0, 1, 2]  # streams too
        # A replica going away: the other one answers (gRPC's health checking), nothing fails
        backends[0].shutdown()
        assert backends[0].wait_shutdown(30)
        assert {client.echo.echo(EchoRequest()).text for _ in range(10)} == {"r1"}


def test_direct_mode_goes_through_main_without_reachable_replicas_and_follows_them(servers: Servers) -> None:
    main = servers(0, [echo_descriptor(is_proxy=True)])
    with direct_client(main) as client:  # nothing registered yet: through main
        (first,) = replicas(servers, main, 1)
        assert client.echo.echo(EchoRequest()).text == "r0"  # forwarded by main
        client.refresh_routes()
        assert client.echo.echo(EchoRequest()).text == "r0"  # direct now
        # Its only replica goes away and another registers: the UNAVAILABLE call reads the routes again
        first.shutdown()
        assert first.wait_shutdown(30)
        second = servers(0, [echo_descriptor(Tagged("next"))])
        register(main, second.port, host="127.0.0.1")
        assert wait_until(lambda: ("127.0.0.1", second.port, True) in endpoints(main), 10)
        assert client.echo.echo(EchoRequest()).text == "next"


def test_routes_follow_main_s_registration_events(servers: Servers) -> None:
    """`RoutesFollower`: with main's events service on, a new replica is in a direct client's routes
    as soon as it registers, and one forgetting itself leaves them, with no call failing first."""
    main = servers(0, [echo_descriptor(is_proxy=True)], with_events=True)
    (first,) = replicas(servers, main, 1)
    stubs: dict[str, Any] = {
        "echo": (EchoServiceStub, EchoApiVersion.ECHO_API_CURRENT),
        "events": (EventServiceStub, EventApiVersion.EVENT_API_CURRENT),
    }
    with RpcClient("127.0.0.1", main.port, stubs, timeout=10, direct=True) as client:
        follower = RoutesFollower(client)
        try:
            assert follower.ready.wait(10)
            assert client.routes == {"echo": (("127.0.0.1", first.port),)}
            second = servers(0, [echo_descriptor(Tagged("second"))])
            register(main, second.port, host="127.0.0.1")
            expected = {"echo": (("127.0.0.1", first.port), ("127.0.0.1", second.port))}
            assert wait_until(lambda: client.routes == expected, 10)
            forget = Filter(names=["echo"], endpoint=Endpoint(host="127.0.0.1", port=first.port))
            main.client.srv.proxy_forget(forget)
            assert wait_until(lambda: client.routes == {"echo": (("127.0.0.1", second.port),)}, 10)
            assert {client.echo.echo(EchoRequest()).text for _ in range(4)} == {"second"}
        finally:
            follower.interrupt()


def test_the_auto_client_goes_direct_when_configured(servers: Servers, tmp_path: Path) -> None:
    """`rpc-client-direct`: the auto-client of a main restarted on its workspace calls the restored
    replicas directly."""
    folders = Folders(workspace=tmp_path)
    main = servers(0, [echo_descriptor(is_proxy=True)], folders=folders)
    (backend,) = replicas(servers, main, 1)
    main.shutdown()
    assert main.wait_shutdown(30)
    direct = servers(0, [echo_descriptor(is_proxy=True)], folders=folders, cli_config={"rpc-client-direct": "true"})
    assert direct.client.routes == {"echo": (("127.0.0.1", backend.port),)}
    assert direct.client.echo.echo(EchoRequest()).text == "r0"


def test_a_replica_leaves_main_before_it_stops_taking_calls(servers: Servers) -> None:
    """Shutdown's first phase (`_withdraw`): the replica forgets its endpoint on main while it still serves,
    so that main never sends it a call it would refuse (a rolling update once lost one that way)."""
    main = servers(0, [echo_descriptor(is_proxy=True)])
    seen: list[tuple[list[int], str]] = []

    class Leaving(echo.EchoManager):
        def _withdraw(self) -> None:
            super()._withdraw()
            assert self.server is not None
            port = self.server.port
            channel, stub = raw_echo(port)
            with channel:  # still taking calls, and no longer registered on main
                seen.append(([p for _, p, _ in endpoints(main)], stub.echo(EchoRequest(text="still"), timeout=5).text))

    config = {"rpc-main-host": "127.0.0.1", "rpc-main-port": str(main.port)}
    descriptor = echo.descriptor()
    descriptor.manager = Leaving()
    replica = servers(0, [descriptor], cli_config=config)
    assert [p for _, p, _ in endpoints(main)] == [replica.port]
    replica.shutdown()
    assert replica.wait_shutdown(30)
    assert seen == [([], "still")]
