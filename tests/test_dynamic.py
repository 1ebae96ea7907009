"""Issue 21, items 1 and 2: main forwards services it has no descriptor of (registered by their gRPC names in
`ProxyRegisterRequest.grpc_services`), and answers reflection about them with their backends' descriptors.

The backend is a plain grpcio server of a `greeter.Greeter` service whose descriptors live in a pool of its own
(never in this process's default pool, which main reads its own descriptors from): main knows nothing of it.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from google.protobuf.message import Message
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase
from test_hostile import Pki, token_of, write_policy

from grpc_helper import Folders, RpcClient, RpcException, RpcProxiedManager, RpcServer, ctl
from grpc_helper.api import Filter, ProxyRegisterRequest, ResultCode, ServerApiVersion
from grpc_helper.api.server_pb2_grpc import RpcServerServiceStub
from grpc_helper.auth import token_hash
from grpc_helper.errors import RpcTransportError
from grpc_helper.metadata import RpcMetadata
from grpc_helper_samples.api import EchoApiVersion, EchoRequest
from grpc_helper_samples.api.echo_pb2_grpc import EchoServiceStub

from helpers import EchoManager, Servers, echo_descriptor, wait_until, with_metadata

GREETER = "greeter.Greeter"
SAY_HELLO = f"/{GREETER}/SayHello"
SAY_HELLOS = f"/{GREETER}/SayHellos"
SRV = {"srv": (RpcServerServiceStub, ServerApiVersion.SERVER_API_CURRENT)}
FORMS = ("certificate", "token")


def greeter_pool() -> descriptor_pool.DescriptorPool:
    """greeter/greeter.proto, built by hand in a pool of its own: HelloRequest{name}, HelloReply{message},
    Greeter.SayHello (unary) and SayHellos (server streaming)."""
    f = descriptor_pb2.FileDescriptorProto(name="greeter/greeter.proto", package="greeter", syntax="proto3")
    for message, field in (("HelloRequest", "name"), ("HelloReply", "message")):
        m = f.message_type.add(name=message)
        m.field.add(name=field, number=1, type=descriptor_pb2.FieldDescriptorProto.TYPE_STRING,
                    label=descriptor_pb2.FieldDescriptorProto.LABEL_OPTIONAL)  # fmt: skip
    service = f.service.add(name="Greeter")
    service.method.add(name="SayHello", input_type=".greeter.HelloRequest", output_type=".greeter.HelloReply")
    service.method.add(
        name="SayHellos", input_type=".greeter.HelloRequest", output_type=".greeter.HelloReply", server_streaming=True
    )
    pool = descriptor_pool.DescriptorPool()
    pool.Add(f)
    return pool


def classes(pool: Any) -> tuple[type[Message], type[Message]]:
    """(HelloRequest, HelloReply) of `pool` (the backend's, or one a reflection client filled)."""
    return tuple(  # type: ignore[return-value]
        message_factory.GetMessageClass(pool.FindMessageTypeByName(f"greeter.{n}"))
        for n in ("HelloRequest", "HelloReply")
    )


@dataclass
class Greeter:
    """A plain grpcio server of greeter.Greeter (+ health, reflection from its own pool)."""

    server: grpc.Server
    port: int
    seen: list[tuple[tuple[str, Any], ...]]  # each call's metadata

    @classmethod
    def start(cls, credentials: grpc.ServerCredentials | None = None) -> Greeter:
        pool = greeter_pool()
        request_cls, reply_cls = classes(pool)
        seen: list[tuple[tuple[str, Any], ...]] = []

        def say_hello(request: Any, context: grpc.ServicerContext) -> Any:
            seen.append(tuple(context.invocation_metadata()))
            if request.name == "nobody":
                context.abort(grpc.StatusCode.INVALID_ARGUMENT, "nobody to greet")
            return reply_cls(message=f"hello {request.name}")

        def say_hellos(request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
            seen.append(tuple(context.invocation_metadata()))
            for i in range(3):
                yield reply_cls(message=f"hello {request.name} #{i}")

        handlers = {
            "SayHello": grpc.unary_unary_rpc_method_handler(
                say_hello, request_cls.FromString, reply_cls.SerializeToString
            ),
            "SayHellos": grpc.unary_stream_rpc_method_handler(
                say_hellos, request_cls.FromString, reply_cls.SerializeToString
            ),
        }
        server = grpc.server(ThreadPoolExecutor(8))
        server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(GREETER, handlers),))
        health_pb2_grpc.add_HealthServicer_to_server(health.HealthServicer(), server)
        reflection.enable_server_reflection([GREETER, reflection.SERVICE_NAME], server, pool=pool)
        address = "127.0.0.1:0"
        port = server.add_secure_port(address, credentials) if credentials else server.add_insecure_port(address)
        server.start()
        return cls(server, port, seen)


@pytest.fixture
def greeter() -> Iterator[Greeter]:
    g = Greeter.start()
    yield g
    g.server.stop(0)


def register(client: RpcClient, port: int, **fields: Any) -> None:
    fields.setdefault("grpc_services", [GREETER])
    client.srv.proxy_register(ProxyRegisterRequest(version="greeter-1.0", host="127.0.0.1", port=port, **fields))


def say_hello(channel: grpc.Channel, name: str, pool: Any = None, **kwargs: Any) -> str:
    """SayHello through `channel` with message classes of `pool` (the backend's own by default)."""
    request_cls, reply_cls = classes(pool or greeter_pool())
    call = channel.unary_unary(SAY_HELLO, request_cls.SerializeToString, reply_cls.FromString)
    return str(call(request_cls(name=name), timeout=10, **kwargs).message)


def say_hellos(channel: grpc.Channel, name: str) -> list[str]:
    request_cls, reply_cls = classes(greeter_pool())
    call = channel.unary_stream(SAY_HELLOS, request_cls.SerializeToString, reply_cls.FromString)
    return [r.message for r in call(request_cls(name=name), timeout=10)]


def health_of(channel: grpc.Channel, service: str) -> int:
    return int(
        health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=service), timeout=5).status
    )


def discovered(channel: grpc.Channel) -> tuple[list[str], descriptor_pool.DescriptorPool]:
    """What grpcio-reflection's own client finds through `channel`: the services listed, and a pool that
    describes greeter.Greeter (its file fetched by symbol, then its dependencies by file name)."""
    database = ProtoReflectionDescriptorDatabase(channel)
    pool = descriptor_pool.DescriptorPool(database)
    services = list(database.get_services())
    method = pool.FindServiceByName(GREETER).methods_by_name["SayHellos"]
    assert method.server_streaming
    assert method.output_type.full_name == "greeter.HelloReply"
    return services, pool


def test_forwarded_described_persisted(servers: Servers, greeter: Greeter, tmp_path: Path) -> None:
    """A main with no declared service forwards greeter.Greeter once registered by its gRPC name: unary and
    streamed calls, the backend's status and metadata, info, health, config get, reflection; the registration
    is persisted (2.x's shape plus a marker) and restored; forgotten by its gRPC name."""
    folders = Folders(workspace=tmp_path / "wks")
    main = servers(0, [], folders)
    channel = grpc.insecure_channel(f"127.0.0.1:{main.port}")
    with pytest.raises(grpc.RpcError) as unknown:  # nothing registered: an unknown service, as ever
        say_hello(channel, "early")
    assert unknown.value.code() == grpc.StatusCode.UNIMPLEMENTED

    register(main.client, greeter.port)
    assert say_hello(channel, "world", metadata=(("x-trace", "t1"),)) == "hello world"
    assert ("x-trace", "t1") in greeter.seen[-1]
    assert not any(k == "api_version" for k, _ in greeter.seen[-1])  # main has no version of it: adds none
    assert say_hellos(channel, "you") == [f"hello you #{i}" for i in range(3)]
    with pytest.raises(grpc.RpcError) as bad:  # the backend's own status crosses the hop
        say_hello(channel, "nobody")
    assert (bad.value.code(), bad.value.details()) == (grpc.StatusCode.INVALID_ARGUMENT, "nobody to greet")

    info = main.client.srv.info(Filter(names=[GREETER])).items[0]
    assert (info.name, info.is_proxy, info.version, info.current_api_version) == (GREETER, True, "greeter-1.0", 0)
    assert [(e.host, e.port, e.serving) for e in info.endpoints] == [("127.0.0.1", greeter.port, True)]
    assert GREETER in [i.name for i in main.client.srv.info(Filter()).items]  # all: the dynamic ones too
    assert health_of(channel, GREETER) == health_pb2.HealthCheckResponse.SERVING
    main.client.config.get(Filter())  # a backend without a config service is left out of merged config calls

    services, pool = discovered(channel)
    assert {GREETER, "RpcServerService"} <= set(services)  # the registered one and main's own
    assert say_hello(channel, "reflected", pool) == "hello reflected"  # built from the backend's descriptors

    entry = json.loads((folders.workspace / "proxy.json").read_text())[GREETER]
    assert entry == {"host": "127.0.0.1", "port": greeter.port, "version": "greeter-1.0", "grpc_service": True}
    main.shutdown()
    main2 = servers(0, [], folders)  # restored from proxy.json before the port opens
    channel2 = grpc.insecure_channel(f"127.0.0.1:{main2.port}")
    assert say_hello(channel2, "again") == "hello again"

    main2.client.srv.proxy_forget(Filter(names=[GREETER]))
    assert health_of(channel2, GREETER) == health_pb2.HealthCheckResponse.NOT_SERVING
    assert GREETER not in discovered_names(channel2)
    assert GREETER not in json.loads((folders.workspace / "proxy.json").read_text())


def discovered_names(channel: grpc.Channel) -> list[str]:
    return list(ProtoReflectionDescriptorDatabase(channel).get_services())


def test_registration_checks(servers: Servers, greeter: Greeter) -> None:
    """A 2.x registration of an unknown name is refused as in 2.x; a dynamic name main serves itself, or an
    invalid one, is refused."""
    main = servers(0, [])
    with pytest.raises(RpcException) as unknown:
        register(main.client, greeter.port, names=[GREETER], grpc_services=[])
    assert unknown.value.rc == ResultCode.ERROR_ITEM_UNKNOWN
    for name in ("RpcServerService", "grpc.health.v1.Health", "greeter Greeter", "srv"):
        with pytest.raises(RpcException) as refused:
            register(main.client, greeter.port, grpc_services=[name])
        assert refused.value.rc == ResultCode.ERROR_PARAM_INVALID, name
    assert main.client.srv.info(Filter(names=[GREETER], ignore_unknown=True)).items == []


class GreeterStub:
    """A stub of greeter.Greeter as protoc would generate it (an RpcClient takes generated stub classes)."""

    def __init__(self, channel: grpc.Channel) -> None:
        request_cls, reply_cls = classes(greeter_pool())
        self.SayHello = channel.unary_unary(SAY_HELLO, request_cls.SerializeToString, reply_cls.FromString)


def test_direct_mode(servers: Servers, greeter: Greeter) -> None:
    """A direct-mode client reads a dynamic service's endpoints from main and calls the backend itself."""
    main = servers(0, [])
    register(main.client, greeter.port)
    client = RpcClient("127.0.0.1", main.port, {GREETER: (GreeterStub, None)}, timeout=10, direct=True)
    try:
        assert client.routes == {GREETER: (("127.0.0.1", greeter.port),)}
        request_cls, _ = classes(greeter_pool())
        assert client.stub(GREETER, GreeterStub).SayHello(request_cls(name="direct")).message == "hello direct"
        assert not any(k == "client" and "(proxied)" in str(v) for k, v in greeter.seen[-1])  # not through main
    finally:
        client.close()


@pytest.fixture
def secure(servers: Servers, tmp_path: Path) -> Iterator[tuple[RpcServer, Pki, Greeter]]:
    """mTLS main with the policy on (no declared service), checking its backends as `greeter`; a greeter backend
    serving TLS as `greeter`. Identities: greeter and greeter2 granted greeter.Greeter, svc2 granted nothing."""
    pki = Pki.create(tmp_path / "pki")
    grant = {"role": "service", "services": [GREETER]}
    policy = write_policy(
        tmp_path / "policy.json",
        greeter={**grant, "certificate": "greeter", "token_sha256": _hash("greeter")},
        greeter2={**grant, "certificate": "greeter2", "token_sha256": _hash("greeter2")},
    )
    items = pki.tls_items("main", policy, **{"rpc-tls-backend-name": "greeter"})
    main = servers(0, [], Folders(workspace=tmp_path / "wks"), items)
    issued = pki.ca.issue("greeter", "localhost", "127.0.0.1")
    g = Greeter.start(grpc.ssl_server_credentials([(issued.key, issued.cert)]))
    yield main, pki, g
    g.server.stop(0)


def _hash(name: str) -> str:
    return token_hash(token_of(name))


@pytest.mark.parametrize("form", FORMS)
def test_secure(
    secure: tuple[RpcServer, Pki, Greeter], form: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """With the policy on, in both identity forms: registering a gRPC service name takes its grant (`services`
    names the gRPC service name), its endpoints belong to their registrant (another identity granted the name
    can't replace them, an admin can); a user calls it and discovers it through main by reflection."""
    main, pki, greeter = secure

    def client(name: str) -> RpcClient:
        return RpcClient("localhost", main.port, SRV, timeout=10, security=pki.security(name, form))

    with pytest.raises(RpcTransportError) as ungranted:  # svc2: a service, not granted the name
        register(client("svc2"), greeter.port)
    assert ungranted.value.status == grpc.StatusCode.PERMISSION_DENIED
    register(client("greeter"), greeter.port)
    with pytest.raises(RpcTransportError) as owned:  # granted too, but the registration is greeter's
        register(client("greeter2"), greeter.port)
    assert owned.value.status == grpc.StatusCode.PERMISSION_DENIED

    app = pki.security("app", form)
    # Its token (if any) on every call, the reflection client's too
    channel = with_metadata(app.channel(f"localhost:{main.port}", []), tuple((k, str(v)) for k, v in app.metadata()))
    assert say_hello(channel, "app") == "hello app"
    assert ("rpc-caller", "app") in greeter.seen[-1]  # the caller main authenticated, for the backend's policy
    assert not any(k == "authorization" for k, _ in greeter.seen[-1])  # never the caller's credentials
    services, pool = discovered(channel)
    assert GREETER in services
    assert say_hello(channel, "reflected", pool) == "hello reflected"
    assert health_of(channel, GREETER) == health_pb2.HealthCheckResponse.SERVING

    # The call command, as app in this form: its certificate, or its token (over a certificate no one has)
    files = tmp_path / f"app-{form}"
    files.mkdir()
    for name, data in (("ca.crt", app.ca), ("app.crt", app.cert), ("app.key", app.key), ("token", app.token)):
        (files / name).write_bytes(data if isinstance(data, bytes) else (data or "").encode())
    options = (
        "--tls-ca",
        str(files / "ca.crt"),
        "--tls-cert",
        str(files / "app.crt"),
        "--tls-key",
        str(files / "app.key"),
    )
    options += ("--token-file", str(files / "token")) if app.token else ()
    assert cli(capsys, main.port, "--json", "call", f"{GREETER}/SayHello", '{"name": "cli"}', options=options) == (
        0,
        '{"message": "hello cli"}\n',
    )

    register(client("operator"), greeter.port)  # an admin may replace it


def test_grpc_helper_backend(servers: Servers) -> None:
    """A grpc-helper server registered dynamically (EchoService by its gRPC name, main declaring no echo): its
    calls go through main with the backend checking the API version, and `route-service` reaches its own
    default services."""
    main = servers(0, [])
    backend = servers(0, [echo_descriptor()])
    register(main.client, backend.port, grpc_services=["EchoService"])
    echo = RpcClient("127.0.0.1", main.port, {"echo": (EchoServiceStub, EchoApiVersion.ECHO_API_CURRENT)}, timeout=10)
    newer = RpcClient("127.0.0.1", main.port, {"echo": (EchoServiceStub, EchoApiVersion.ECHO_API_CURRENT + 1)})
    routed = RpcClient("127.0.0.1", main.port, SRV, timeout=10, name=RpcMetadata(route_service="EchoService"))
    try:
        assert echo.echo.echo(EchoRequest(text="hi")).text == "hi"
        with pytest.raises(RpcException) as too_new:  # checked by the backend, answered in 2.x's shape
            newer.echo.echo(EchoRequest(text="hi"))
        assert too_new.value.rc == ResultCode.ERROR_API_SERVER_TOO_OLD
        assert [i.name for i in routed.srv.info(Filter()).items] == ["srv", "config", "log", "echo"]  # the backend's
    finally:
        for client in (echo, newer, routed):
            client.close()


def cli(capsys: pytest.CaptureFixture[str], port: int, *args: str, options: tuple[str, ...] = ()) -> tuple[int, str]:
    """`grpc-helper --port PORT [options] ARGS...` in process: (exit code, stdout)."""
    code = ctl.main(["--host", "localhost", "--port", str(port), "--timeout", "10", *options, *args])
    return code, capsys.readouterr().out


def test_call_command(servers: Servers, greeter: Greeter, capsys: pytest.CaptureFixture[str]) -> None:
    """`grpc-helper call` through main: a dynamic service's unary and server-streaming methods (types by
    reflection), main's own methods, and what it refuses."""
    main = servers(0, [])
    registration = ("proxy", "register", "--grpc-service", GREETER, "--version", "g-2", "--port", str(greeter.port))
    assert cli(capsys, main.port, *registration, "--host", "127.0.0.1")[0] == 0
    assert cli(capsys, main.port, "call", f"{GREETER}/SayHello", '{"name": "cli"}') == (
        0,
        '{\n  "message": "hello cli"\n}\n',
    )
    code, out = cli(capsys, main.port, "--json", "call", f"{GREETER}.SayHellos", '{"name": "s"}')
    assert (code, out.splitlines()) == (0, [json.dumps({"message": f"hello s #{i}"}) for i in range(3)])
    code, out = cli(capsys, main.port, "--json", "call", "RpcServerService/info", '{"names": ["srv"]}')
    assert code == 0
    assert json.loads(out)["items"][0]["name"] == "srv"
    for args in ((f"{GREETER}/Nope",), ("nowhere.Svc/M",), (f"{GREETER}/SayHello", '{"nope": 1}'), ("x",)):
        assert cli(capsys, main.port, "call", *args)[0] == 1, args


class DynamicEcho(EchoManager, RpcProxiedManager):
    """The echo service registered by its gRPC name only (`_proxied_grpc_services`): main declares no echo."""

    def _proxied_grpc_services(self) -> list[str]:
        return ["EchoService"]

    def _proxied_version(self) -> str:
        return "dynamic-echo:1"


class Unnamed(EchoManager, RpcProxiedManager):
    def _proxied_version(self) -> str:
        return "unnamed:1"


def test_proxied_manager_registers_dynamic_services(servers: Servers) -> None:
    """An `RpcProxiedManager` naming gRPC services registers them on a main that declares nothing, serves through
    it, registers them again on a main that lost them (a new main, no workspace), and forgets its endpoint at
    shutdown; one naming no service at all fails its load."""
    main = servers(0, [])
    manager = DynamicEcho()
    backend = servers(0, [echo_descriptor(manager)], cli_config={"rpc-main-port": str(main.port)})
    endpoint = manager._endpoint
    (info,) = main.client.srv.info(Filter(names=["EchoService"])).items
    assert (info.version, [(e.host, e.port) for e in info.endpoints]) == (
        "dynamic-echo:1",
        [(endpoint.host, backend.port)],
    )
    stubs = {"echo": (EchoServiceStub, EchoApiVersion.ECHO_API_CURRENT)}
    with RpcClient("127.0.0.1", main.port, stubs, timeout=10) as echo:
        assert echo.echo.echo(EchoRequest(text="dynamic")).text == "dynamic"
    port = main.port
    main.shutdown()
    main = servers(port, [])  # knows nothing of it: the manager's renewal registers it again
    assert wait_until(lambda: main.proxies.has_endpoint("EchoService", (endpoint.host, endpoint.port)), 10)
    with RpcClient("127.0.0.1", main.port, stubs, timeout=10) as echo:
        assert echo.echo.echo(EchoRequest(text="again")).text == "again"
    backend.shutdown()
    assert not main.proxies.is_registered("EchoService")  # its own endpoint forgotten on the way out
    with pytest.raises(RpcException) as unnamed:
        servers(0, [echo_descriptor(Unnamed())], cli_config={"rpc-main-port": str(main.port)})
    assert unnamed.value.rc == ResultCode.ERROR_MODEL_INVALID
