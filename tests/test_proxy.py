"""Proxied services: registration, forwarding of every call kind, persistence, failures, config merge."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterable

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

import grpc_helper_samples
from grpc_helper import (
    Config,
    RpcClient,
    RpcException,
    RpcProxiedManager,
    RpcServer,
    RpcServiceDescriptor,
    RpcStaticConfig,
    current_call,
)
from grpc_helper.api import (
    ConfigItemUpdate,
    ConfigUpdate,
    ConfigValidator,
    Endpoint,
    Filter,
    ProxyRegisterRequest,
    ResultCode,
)
from grpc_helper.testing import rc_of
from grpc_helper_samples.api import EchoApiVersion, EchoRequest, EchoResponse, NotesApiVersion
from grpc_helper_samples.api.echo_pb2_grpc import EchoServiceStub
from grpc_helper_samples.api.notes_pb2_grpc import (
    NotesServiceServicer,
    NotesServiceStub,
    add_NotesServiceServicer_to_server,
)

from helpers import EchoManager, Servers, connections_to, echo_descriptor, wait_until


def echo_client(port: int, version: int | None = EchoApiVersion.ECHO_API_CURRENT, **kwargs) -> RpcClient:
    kwargs.setdefault("timeout", 10)
    return RpcClient("127.0.0.1", port, {"echo": (EchoServiceStub, version)}, **kwargs)


def register(main: RpcServer, backend: RpcServer, names: Iterable[str] = ("echo",), version: str = "b-1.0") -> None:
    main.client.srv.proxy_register(
        ProxyRegisterRequest(names=list(names), version=version, host="127.0.0.1", port=backend.port)
    )


@pytest.fixture
def pair(servers: Servers, folders):
    """A main server proxying `echo`, and a backend serving it, registered."""
    main = servers(0, [echo_descriptor(is_proxy=True)], folders=folders)
    backend = servers(0, [echo_descriptor()])
    register(main, backend)
    return main, backend


class TestRegistration:
    def test_errors(self, servers: Servers) -> None:
        local = RpcServiceDescriptor(
            grpc_helper_samples, "local", NotesApiVersion, NotesServiceServicer(), add_NotesServiceServicer_to_server,
            NotesServiceStub,
        )  # fmt: skip
        main = servers(0, [echo_descriptor(is_proxy=True), local])
        srv = main.client.srv
        ok = {"names": ["echo"], "version": "1", "port": 1234}
        assert (
            rc_of(lambda: srv.proxy_register(ProxyRegisterRequest(**{**ok, "names": []})))
            == ResultCode.ERROR_PARAM_MISSING
        )
        assert (
            rc_of(lambda: srv.proxy_register(ProxyRegisterRequest(**{**ok, "version": ""})))
            == ResultCode.ERROR_PARAM_MISSING
        )
        assert (
            rc_of(lambda: srv.proxy_register(ProxyRegisterRequest(**{**ok, "port": 0})))
            == ResultCode.ERROR_PARAM_MISSING
        )
        assert (
            rc_of(lambda: srv.proxy_register(ProxyRegisterRequest(**{**ok, "names": ["x"]})))
            == ResultCode.ERROR_ITEM_UNKNOWN
        )
        assert (
            rc_of(lambda: srv.proxy_register(ProxyRegisterRequest(**{**ok, "names": ["local"]})))
            == ResultCode.ERROR_PARAM_INVALID
        )
        assert rc_of(lambda: srv.proxy_forget(Filter())) == ResultCode.ERROR_PARAM_MISSING
        assert rc_of(lambda: srv.proxy_forget(Filter(names=["x"]))) == ResultCode.ERROR_ITEM_UNKNOWN
        assert rc_of(lambda: srv.proxy_forget(Filter(names=["srv"]))) == ResultCode.ERROR_PARAM_INVALID

    def test_info_shows_registration(self, pair) -> None:
        main, backend = pair
        info = main.client.srv.info(Filter(names=["echo"])).items[0]
        assert info.is_proxy
        assert info.version == "b-1.0"
        assert (info.proxy_host, info.proxy_port) == ("127.0.0.1", backend.port)
        assert (info.supported_api_version, info.current_api_version) == (1, 2)
        main.client.srv.proxy_forget(Filter(names=["echo"]))
        info = main.client.srv.info(Filter(names=["echo"])).items[0]
        assert (info.version, info.proxy_host, info.proxy_port) == ("b-1.0", "", 0)  # last version kept

    def test_empty_host_means_main_host(self, servers: Servers) -> None:
        # static items are process-wide: both servers of this process get the same layers
        cli = {"rpc-main-host": "127.0.0.1"}
        main = servers(0, [echo_descriptor(is_proxy=True)], cli_config=cli)
        backend = servers(0, [echo_descriptor()], cli_config=cli)
        main.client.srv.proxy_register(ProxyRegisterRequest(names=["echo"], version="v", port=backend.port))
        assert main.client.srv.info(Filter(names=["echo"])).items[0].proxy_host == ""  # reported as given
        assert echo_client(main.port).echo.echo(EchoRequest(text="via main host")).text == "via main host"

    def test_persisted_and_restored(self, servers: Servers, folders) -> None:
        main = servers(0, [echo_descriptor(is_proxy=True)], folders=folders)
        backend = servers(0, [echo_descriptor()])
        register(main, backend)
        saved = json.loads((folders.workspace / "proxy.json").read_text())
        assert saved == {"echo": {"host": "127.0.0.1", "port": backend.port, "version": "b-1.0"}}
        main.shutdown()
        main2 = servers(0, [echo_descriptor(is_proxy=True)], folders=folders)
        assert echo_client(main2.port).echo.echo(EchoRequest(text="restored")).text == "restored"
        main2.client.srv.proxy_forget(Filter(names=["echo"]))
        assert json.loads((folders.workspace / "proxy.json").read_text()) == {}

    def test_a_forgotten_endpoint_is_not_renewed(self, servers: Servers, folders) -> None:
        """Issue 18, item 6: main remembers the endpoints forgotten on purpose, in its workspace, and refuses their
        renewals (a backend registering again what main lost) until a plain registration (a backend starting)."""
        main = servers(0, [echo_descriptor(is_proxy=True)], folders=folders)
        backend = servers(0, [echo_descriptor()])
        renew = ProxyRegisterRequest(names=["echo"], version="b-1.0", host="127.0.0.1", port=backend.port, renew=True)
        main.client.srv.proxy_register(renew)  # never forgotten: renewed
        assert main.client.srv.info(Filter(names=["echo"])).items[0].renewable
        main.client.srv.proxy_forget(Filter(names=["echo"], endpoint=Endpoint(host="127.0.0.1", port=backend.port)))
        assert rc_of(lambda: main.client.srv.proxy_register(renew)) == ResultCode.ERROR_PROXY_FORGOTTEN
        saved = json.loads((folders.workspace / "proxy-forgotten.json").read_text())["forgotten"]
        assert [(f["service"], f["host"], f["port"], f["by"]) for f in saved] == [
            ("echo", "127.0.0.1", backend.port, None)
        ]
        assert json.loads((folders.workspace / "proxy.json").read_text()) == {}  # 2.x's shape, untouched
        main.shutdown()
        main = servers(0, [echo_descriptor(is_proxy=True)], folders=folders)  # remembered across a restart
        assert rc_of(lambda: main.client.srv.proxy_register(renew)) == ResultCode.ERROR_PROXY_FORGOTTEN
        assert not main.proxies.is_registered("echo")
        register(main, backend)  # a plain registration: renewable again
        main.client.srv.proxy_register(renew)
        main.client.srv.proxy_forget(Filter(names=["echo"]))  # names only (2.x): every endpoint it had
        assert rc_of(lambda: main.client.srv.proxy_register(renew)) == ResultCode.ERROR_PROXY_FORGOTTEN

    def test_health_follows_registration(self, servers: Servers) -> None:
        main = servers(0, [echo_descriptor(is_proxy=True)])
        backend = servers(0, [echo_descriptor()])
        with grpc.insecure_channel(f"127.0.0.1:{main.port}") as channel:
            check = health_pb2_grpc.HealthStub(channel).Check

            def status(service: str) -> int:
                return check(health_pb2.HealthCheckRequest(service=service), timeout=5).status

            assert status("") == health_pb2.HealthCheckResponse.SERVING
            assert status("RpcServerService") == health_pb2.HealthCheckResponse.SERVING
            assert status("EchoService") == health_pb2.HealthCheckResponse.NOT_SERVING
            register(main, backend)
            assert status("EchoService") == health_pb2.HealthCheckResponse.SERVING
            main.client.srv.proxy_forget(Filter(names=["echo"]))
            assert status("EchoService") == health_pb2.HealthCheckResponse.NOT_SERVING


class TestForwarding:
    def test_four_call_kinds(self, pair) -> None:
        main, _ = pair
        c = echo_client(main.port)
        assert c.echo.echo(EchoRequest(text="x", payload=b"\xff" * 64)).payload == b"\xff" * 64
        assert [m.index for m in c.echo.repeat(EchoRequest(count=50))] == list(range(50))
        assert c.echo.collect(EchoRequest(text=t) for t in "proxy").text == "proxy"
        assert [m.text for m in c.echo.chat(EchoRequest(text=t) for t in "ab")] == ["A", "B"]

    def test_errors_from_backend_pass_through(self, pair) -> None:
        main, _ = pair
        assert (
            rc_of(lambda: echo_client(main.port).echo.echo(EchoRequest(text="fail:32"))) == ResultCode.ERROR_ITEM_BUSY
        )

    def test_metadata_and_deadline_reach_backend(self, servers: Servers) -> None:
        seen: dict = {}

        class Spy(EchoManager):
            def echo(self, _request: EchoRequest) -> EchoResponse:
                call = current_call()
                assert call is not None
                seen["md"] = dict(call.metadata)
                seen["left"] = call.context.time_remaining()
                return EchoResponse()

        main = servers(0, [echo_descriptor(is_proxy=True)])
        backend = servers(0, [echo_descriptor(Spy())])
        register(main, backend)
        with grpc.insecure_channel(f"127.0.0.1:{main.port}") as channel:
            EchoServiceStub(channel).echo(
                EchoRequest(),
                timeout=7,
                metadata=(("client", "c1"), ("user", "u1"), ("api_version", "2"), ("x-custom", "v")),
            )
        assert {k: seen["md"][k] for k in ("client", "user", "api_version", "x-custom")} == {
            "client": "c1(proxied)", "user": "u1", "api_version": "2", "x-custom": "v"
        }  # fmt: skip
        # The caller's 7 s, less the time spent on the way; gRPC encodes `grpc-timeout` with a few
        # significant digits, rounded up, so each hop may add a few milliseconds
        assert 6 < seen["left"] <= 7.1

    def test_version_check_at_the_proxy(self, servers: Servers) -> None:
        main = servers(0, [echo_descriptor(is_proxy=True)])  # nothing registered
        t0 = time.monotonic()
        assert (
            rc_of(lambda: echo_client(main.port, version=3).echo.echo(EchoRequest()))
            == ResultCode.ERROR_API_SERVER_TOO_OLD
        )
        assert (
            rc_of(lambda: echo_client(main.port, version=0).echo.echo(EchoRequest()))
            == ResultCode.ERROR_API_CLIENT_TOO_OLD
        )
        assert time.monotonic() - t0 < 5  # answered at once, no wait for a registration

    def test_one_channel_per_backend(self, pair) -> None:
        main, backend = pair
        c = echo_client(main.port)
        for _ in range(20):
            c.echo.echo(EchoRequest())
        assert connections_to(backend.port) == 1  # all 20 calls went over main's one connection to the backend


class TestFailures:
    def test_unregistered_times_out(self, servers: Servers) -> None:
        main = servers(0, [echo_descriptor(is_proxy=True)])
        RpcStaticConfig.CLIENT_TIMEOUT.update("1")
        t0 = time.monotonic()
        assert rc_of(lambda: echo_client(main.port).echo.echo(EchoRequest())) == ResultCode.ERROR_PROXY_UNREGISTERED
        assert 1.0 <= time.monotonic() - t0 < 10
        msgs = list(echo_client(main.port, exception=False).echo.repeat(EchoRequest(count=3)))
        assert [m.r.code for m in msgs] == [ResultCode.ERROR_PROXY_UNREGISTERED]

    def test_early_calls_wait_for_registration_without_starving(self, servers: Servers) -> None:
        main = servers(0, [echo_descriptor(is_proxy=True)], cli_config={"rpc-max-workers": "2"})
        backend = servers(0, [echo_descriptor()])
        results: list[str] = []
        lock = threading.Lock()

        def early(i: int) -> None:
            text = echo_client(main.port, timeout=30).echo.echo(EchoRequest(text=str(i)), timeout=30).text
            with lock:
                results.append(text)

        callers = [threading.Thread(target=early, args=(i,)) for i in range(10)]
        for t in callers:
            t.start()
        # 10 waiting calls, 2 workers: the server still answers its own services
        t0 = time.monotonic()
        for _ in range(5):
            assert main.client.srv.info(Filter(), timeout=5).items
        assert time.monotonic() - t0 < 5
        register(main, backend)
        for t in callers:
            t.join(30)
        assert sorted(results, key=int) == [str(i) for i in range(10)]

    def test_registered_backend_down(self, servers: Servers) -> None:
        main = servers(0, [echo_descriptor(is_proxy=True)])
        backend = servers(0, [echo_descriptor()])
        register(main, backend)
        backend.shutdown()
        RpcStaticConfig.CLIENT_TIMEOUT.update("1")
        t0 = time.monotonic()
        assert rc_of(lambda: echo_client(main.port, timeout=None).echo.echo(EchoRequest())) == ResultCode.ERROR_RPC
        assert time.monotonic() - t0 < 10

    def test_backend_dies_mid_stream(self, servers: Servers) -> None:
        sent, hold = threading.Event(), threading.Event()

        class Slow(EchoManager):
            def repeat(self, _request: EchoRequest) -> Iterable[EchoResponse]:
                yield EchoResponse(index=0)
                sent.set()
                hold.wait(30)
                yield EchoResponse(index=1)

        main = servers(0, [echo_descriptor(is_proxy=True)])
        backend = servers(0, [echo_descriptor(Slow())])
        register(main, backend)
        client = echo_client(main.port)
        other_stream = client.echo.repeat(EchoRequest(count=3))  # a concurrent call on the same backend channel
        stream = client.echo.repeat(EchoRequest(count=2))
        assert next(stream).index == 0
        assert sent.wait(10)
        RpcStaticConfig.SHUTDOWN_GRACE.update("0.2")
        backend.shutdown()  # cancels the stuck streams after the grace
        hold.set()
        with pytest.raises(RpcException) as exc:
            next(stream)
        assert exc.value.rc == ResultCode.ERROR_RPC
        with pytest.raises(RpcException):
            list(other_stream)
        # everything else keeps working: the main server, and calls once a live backend registers
        assert main.client.srv.info(Filter()).items
        register(main, servers(0, [echo_descriptor()]))
        assert client.echo.echo(EchoRequest(text="still")).text == "still"


class Proxied(EchoManager, RpcProxiedManager):
    def _proxied_services(self) -> list[str]:
        return ["echo"]

    def _proxied_version(self) -> str:
        return "proxied-2.0"


class TestProxiedManager:
    def test_registers_at_load_and_forgets_at_shutdown(self, servers: Servers) -> None:
        main = servers(0, [echo_descriptor(is_proxy=True)], with_events=False)
        manager = Proxied()
        backend = servers(0, [echo_descriptor(manager)], cli_config={"rpc-main-port": str(main.port)})
        info = main.client.srv.info(Filter(names=["echo"])).items[0]
        assert (info.version, info.proxy_port) == ("proxied-2.0", backend.port)
        assert echo_client(main.port).echo.echo(EchoRequest(text="registered")).text == "registered"
        assert hasattr(manager.proxy_client, "srv")
        assert hasattr(manager.proxy_client, "events")
        backend.shutdown()
        assert not main.proxies.is_registered("echo")

    def test_registers_again_on_a_new_main_not_after_a_forget(self, servers: Servers) -> None:
        """Issue 18, item 6: a main replaced by one that knows nothing (no workspace here) gets the registration
        again within seconds, without a restart; a deliberate forget is not undone."""
        main = servers(0, [echo_descriptor(is_proxy=True)])
        manager = Proxied()
        backend = servers(0, [echo_descriptor(manager)], cli_config={"rpc-main-port": str(main.port)})
        endpoint = (manager._endpoint.host, manager._endpoint.port)
        port = main.port
        main.shutdown()
        main = servers(port, [echo_descriptor(is_proxy=True)])
        assert wait_until(lambda: main.proxies.has_endpoint("echo", endpoint), 10)
        main.client.srv.proxy_forget(Filter(names=["echo"], endpoint=manager._endpoint))
        assert wait_until(lambda: manager._forgotten, 10)
        assert not main.proxies.is_registered("echo")
        backend.shutdown()  # while main is up: its forget is answered at once
        assert manager._renewer is not None
        assert not manager._renewer.is_alive()

    def test_retries_while_main_is_not_up(self, servers: Servers, refused_port: int) -> None:
        main_port = refused_port
        created: list[RpcServer] = []
        starter = threading.Thread(
            target=lambda: created.append(
                servers(0, [echo_descriptor(Proxied())], cli_config={"rpc-main-port": str(main_port)})
            )
        )
        starter.start()
        starter.join(0.5)
        assert not created, "the proxied server waits for the main server"
        main = servers(main_port, [echo_descriptor(is_proxy=True)])
        starter.join(60)
        assert created
        assert echo_client(main.port).echo.echo(EchoRequest(text="late main")).text == "late main"


class TestConfigMerge:
    def test_merged_get_set_reset_and_conflicts(self, servers: Servers) -> None:
        main_item = Config("shared-item", default_value="1", validator=ConfigValidator.CONFIG_VALID_INT)
        backend_item = Config("shared-item", default_value="2", validator=ConfigValidator.CONFIG_VALID_INT)
        only_backend = Config("backend-only", default_value="5", validator=ConfigValidator.CONFIG_VALID_POS_INT)
        main = servers(0, [echo_descriptor(is_proxy=True)], user_items=[main_item])
        backend = servers(0, [echo_descriptor()], user_items=[backend_item, only_backend])
        c = main.client.config
        assert [i.name for i in c.get(Filter()).items] == ["shared-item"]  # nothing registered yet
        register(main, backend)
        assert rc_of(lambda: c.get(Filter())) == ResultCode.ERROR_ITEM_CONFLICT
        assert c.get(Filter(names=["backend-only"])).items[0].value == "5"
        # invalid anywhere: nothing applied
        bad = ConfigUpdate(
            items=[ConfigItemUpdate(name="shared-item", value="3"), ConfigItemUpdate(name="backend-only", value="0")]
        )
        assert rc_of(lambda: c.set(bad)) == ResultCode.ERROR_PARAM_INVALID
        assert (main_item.str_val, backend_item.str_val) == ("1", "2")
        good = ConfigUpdate(
            items=[ConfigItemUpdate(name="shared-item", value="3"), ConfigItemUpdate(name="backend-only", value="9")]
        )
        out = {i.name: i.value for i in c.set(good).items}
        assert out == {"shared-item": "3", "backend-only": "9"}
        assert (main_item.str_val, backend_item.str_val, only_backend.str_val) == ("3", "3", "9")
        assert {i.name: i.value for i in c.get(Filter()).items} == {"shared-item": "3", "backend-only": "9"}
        assert (
            rc_of(lambda: c.set(ConfigUpdate(items=[ConfigItemUpdate(name="nope", value="1")])))
            == ResultCode.ERROR_ITEM_UNKNOWN
        )
        out = {i.name: i.value for i in c.reset(Filter(names=["shared-item", "backend-only"])).items}
        assert out["backend-only"] == "5"
        assert (main_item.str_val, backend_item.str_val) == ("1", "2")
        assert rc_of(lambda: c.reset(Filter(names=["nope"]))) == ResultCode.ERROR_ITEM_UNKNOWN


def test_register_and_forget_send_events(servers: Servers) -> None:
    from grpc_helper.api import EventFilter, EventInterrupt

    main = servers(0, [echo_descriptor(is_proxy=True)], with_events=True)
    backend = servers(0, [echo_descriptor()])
    stream = main.client.events.listen(EventFilter(names=["RPC_PROXY_REGISTER", "RPC_PROXY_FORGET"]))
    client_id = next(stream).client_id

    def next_event():
        for status in stream:
            if status.event.name:  # skip keep-alives
                return status.event
        raise AssertionError("stream ended")

    try:
        register(main, backend, version="v9")
        event = next_event()
        assert event.name == "RPC_PROXY_REGISTER"
        props = {p.name: p.value for p in event.properties}
        assert props == {"names": "echo", "version": "v9", "port": str(backend.port), "host": "127.0.0.1"}
        main.client.srv.proxy_forget(Filter(names=["echo"]))
        event = next_event()
        assert event.name == "RPC_PROXY_FORGET"
        assert {p.name: p.value for p in event.properties} == {"names": "echo"}
    finally:
        main.client.events.interrupt(EventInterrupt(client_id=client_id))


def test_config_merge_names_an_unreachable_server(servers: Servers) -> None:
    main = servers(0, [echo_descriptor(is_proxy=True)])
    backend = servers(0, [echo_descriptor()])
    register(main, backend)
    backend.shutdown()
    assert main.client.config.get(Filter()).items == []  # what the reachable servers have (none here)
    with pytest.raises(RpcException) as exc:
        main.client.config.reset(Filter(names=["x"]))
    assert exc.value.rc == ResultCode.ERROR_RPC
    assert f"127.0.0.1:{backend.port}" in str(exc.value)
