"""Issue 19, item 7: a gRPC peer that is not grpcio. The tonic peer (tests/peers/tonic-echo, Rust: tonic, prost,
rustls) as a backend registered on main and as a caller through main, plain and with mTLS; two tonic replicas
balanced by main; main's view of a tonic backend (srv.info, health); and the peer's own features, checked
peer to peer, that later tests of main's forwarder rely on.

Issue 19 through main with a foreign peer at both ends: metadata both ways, the backend's own status and
rich details for a caller that is not a grpc-helper client (2.x's shape for ours), cancellation and
deadlines crossing the hop, errors raised at main, and a gzip answer over the size limit bounded by the
caller's deadline.
"""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from grpc_helper import RpcClient, RpcException, RpcServer, RpcStaticConfig
from grpc_helper.api import Filter, ProxyRegisterRequest, ResultCode
from grpc_helper.auth import token_hash
from grpc_helper.pki import CertificateAuthority
from grpc_helper.proxy import forward
from grpc_helper.tls import ClientSecurity
from grpc_helper_samples.api import EchoApiVersion, EchoRequest
from grpc_helper_samples.api.echo_pb2_grpc import EchoServiceStub

from helpers import EchoManager, Servers, echo_descriptor, refusing_port, wait_until
from tonic_peer import Event, PeerServer, peer_binary, peer_call, peer_server

ECHO_STUBS = {"echo": (EchoServiceStub, EchoApiVersion.ECHO_API_CURRENT)}
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
OK, CANCELLED, INVALID_ARGUMENT, DEADLINE_EXCEEDED, NOT_FOUND = 0, 1, 3, 4, 5
OUT_OF_RANGE, UNIMPLEMENTED, UNAVAILABLE = 11, 12, 14
PEER_HEADERS = {"x-peer-header": "h1", "x-peer-header-bin": base64.b64encode(b"\x01\x02\xff").decode()}
PEER_TRAILERS = {"x-peer-trailer": "t1", "x-peer-trailer-bin": base64.b64encode(b"\xfe\x00").decode()}


@pytest.fixture(scope="module", autouse=True)
def tonic_echo() -> Path:
    """The peer's binary, built once (skips without cargo, fails under CI=true)."""
    return peer_binary()


# --- certificates ---


@dataclass
class Pki:
    """A CA; main's certificate (localhost, 127.0.0.1, main), the backends' (echo: the name main checks a
    backend of `echo` against; localhost, 127.0.0.1 for direct calls) and a caller's (app)."""

    folder: Path

    def __post_init__(self) -> None:
        self.ca = CertificateAuthority.create("tonic peer test CA")
        self.ca_path = self.folder / "ca.crt"
        self.ca_path.write_bytes(self.ca.cert_pem)
        for name, names in {"main": ("localhost", "127.0.0.1", "main"), "echo": ("echo", "localhost", "127.0.0.1"),
                            "app": ("app",)}.items():  # fmt: skip
            self.ca.issue(*names).write(self.folder, name)

    def path(self, name: str, kind: str) -> str:
        return str(self.folder / f"{name}.{kind}")

    def server_config(self, name: str) -> dict[str, str]:
        """An RpcServer's mTLS items."""
        return {"rpc-tls-cert": self.path(name, "crt"), "rpc-tls-key": self.path(name, "key"),
                "rpc-tls-ca": str(self.ca_path), "rpc-tls-client-auth": "required"}  # fmt: skip

    def peer_server_args(self) -> tuple[str, ...]:
        """tonic-echo server: serves mTLS as `echo`, registers on main with its certificate."""
        return ("--tls-cert", self.path("echo", "crt"), "--tls-key", self.path("echo", "key"),
                "--tls-ca", str(self.ca_path), "--main-tls-ca", str(self.ca_path),
                "--main-cert", self.path("echo", "crt"), "--main-key", self.path("echo", "key"),
                "--main-server-name", "localhost")  # fmt: skip

    def peer_client_args(self, name: str = "app", server_name: str = "localhost") -> tuple[str, ...]:
        return ("--tls-ca", str(self.ca_path), "--tls-cert", self.path(name, "crt"),
                "--tls-key", self.path(name, "key"), "--server-name", server_name)  # fmt: skip

    def client(self, name: str = "app") -> ClientSecurity:
        return ClientSecurity.from_files(self.ca_path, self.path(name, "crt"), self.path(name, "key"))


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    folder = tmp_path / "pki"
    folder.mkdir()
    return Pki(folder)


# --- helpers ---


def proxy_main(servers: Servers, config: dict[str, str] | None = None, port: int = 0) -> RpcServer:
    """A grpc-helper main, in process, proxying `echo` (no authorization policy)."""
    return servers(port, [echo_descriptor(is_proxy=True)], cli_config=config)


def endpoints(main: RpcServer) -> list[tuple[str, int, str, bool]]:
    """Main's endpoints of `echo`: (host, port, version, serving)."""
    items = main.client.srv.info(Filter(names=["echo"])).items
    return [(e.host, e.port, e.version, e.serving) for e in items[0].endpoints]


def serving_ports(main: RpcServer) -> set[int]:
    return {port for _, port, _, serving in endpoints(main) if serving}


def main_health(main: RpcServer, service: str = "EchoService") -> int:
    with grpc.insecure_channel(f"127.0.0.1:{main.port}") as channel:
        request = health_pb2.HealthCheckRequest(service=service)
        return int(health_pb2_grpc.HealthStub(channel).Check(request, timeout=5).status)


def four_kinds_on_tonic(client: RpcClient) -> None:
    """The four call kinds, answered by a tonic backend (which echoes texts as they are)."""
    answer = client.echo.echo(EchoRequest(text="unary", payload=b"\x00\x01"))
    assert (answer.text, answer.payload, answer.index) == ("unary", b"\x00\x01", 0)
    assert [(r.text, r.index) for r in client.echo.repeat(EchoRequest(text="s", count=3))] == [
        ("s", 0), ("s", 1), ("s", 2)]  # fmt: skip
    collected = client.echo.collect(iter([EchoRequest(text="a", payload=b"1"), EchoRequest(text="b", payload=b"2")]))
    assert (collected.text, collected.payload, collected.index) == ("ab", b"12", 2)
    chat = client.echo.chat(iter([EchoRequest(text="x"), EchoRequest(text="y")]))
    assert [(r.text, r.index) for r in chat] == [("x", 0), ("y", 1)]


def refused(result: Event) -> bool:
    """The call failed before any answer. A TLS 1.3 server refuses a client's certificate after the client's
    side of the handshake ended, so tonic's client reports that failed request as it saw it: UNKNOWN "transport
    error", CANCELLED "operation was canceled" or UNAVAILABLE, depending on the timing."""
    return bool(result["status"] != OK and result["responses"] == [])


def texts(result: Event) -> list[tuple[str, int]]:
    return [(r["text"], r["index"]) for r in result["responses"]]


def ok(result: Event) -> Event:
    assert result["status"] == OK, result
    return result


def four_kinds_from_tonic(target: str, *args: str) -> None:
    """The four call kinds made by the tonic client, answered by the Python EchoManager (chat upper-cases)."""
    assert texts(ok(peer_call(target, "echo", "unary", *args))) == [("unary", 0)]
    assert texts(ok(peer_call(target, "repeat", "s", "--count", "3", *args))) == [("s", 0), ("s", 1), ("s", 2)]
    assert texts(ok(peer_call(target, "collect", "ab", "--messages", "3", *args))) == [("ababab", 3)]
    assert texts(ok(peer_call(target, "chat", "x", "--messages", "2", *args))) == [("X", 0), ("X", 1)]


def rpc_status(code: int, message: str) -> bytes:
    """google.rpc.Status{code, message} as protobuf bytes (what grpc-status-details-bin carries)."""
    text = message.encode()
    return b"\x08" + bytes([code]) + (b"\x12" + bytes([len(text)]) + text if text else b"")


# --- (a) a tonic backend registered on main, called by a Python RpcClient through main ---


class TestTonicBackend:
    def test_registers_and_serves_the_four_kinds_through_main(self, servers: Servers, tmp_path: Path) -> None:
        main = proxy_main(servers)
        with peer_server(tmp_path, register=main.port) as backend:
            assert wait_until(lambda: serving_ports(main) == {backend.port}, 10), endpoints(main)
            with RpcClient("127.0.0.1", main.port, ECHO_STUBS, timeout=10) as client:
                four_kinds_on_tonic(client)

    def test_with_mtls_everywhere(self, servers: Servers, pki: Pki, tmp_path: Path) -> None:
        # main requires client certificates, the tonic backend too (main's own when it forwards), and main
        # checks the backend's certificate against the service name `echo`
        main = proxy_main(servers, pki.server_config("main"))
        with peer_server(tmp_path, *pki.peer_server_args(), register=main.port) as backend:
            assert wait_until(lambda: serving_ports(main) == {backend.port}, 10), endpoints(main)
            with RpcClient("localhost", main.port, ECHO_STUBS, timeout=10, security=pki.client()) as client:
                four_kinds_on_tonic(client)
            # The backend itself refuses a caller without a certificate
            no_certificate = peer_call(f"127.0.0.1:{backend.port}", "echo", "hi", "--tls-ca", str(pki.ca_path))
            assert refused(no_certificate), no_certificate

    def test_registers_with_its_token(self, servers: Servers, pki: Pki, tmp_path: Path) -> None:
        # TLS without client certificates: main knows the backend by its bearer token (a `service`)
        token = "t-tonic-0123456789"
        policy = tmp_path / "policy.json"
        policy.write_text(json.dumps({"identities": {"echo": {"role": "service", "token_sha256": token_hash(token)}}}))
        config = {**pki.server_config("main"), "rpc-tls-client-auth": "none", "rpc-auth-policy": str(policy)}
        main = proxy_main(servers, config)
        tls = ("--tls-cert", pki.path("echo", "crt"), "--tls-key", pki.path("echo", "key"),
               "--main-tls-ca", str(pki.ca_path), "--main-server-name", "localhost")  # fmt: skip
        (tmp_path / "good.token").write_text(token + "\n")
        (tmp_path / "bad.token").write_text("t-nobody-0123456789\n")
        with peer_server(tmp_path, *tls, "--token-file", str(tmp_path / "good.token"), register=main.port) as backend:
            assert wait_until(lambda: serving_ports(main) == {backend.port}, 10), endpoints(main)
        unknown = PeerServer(peer_binary(), tmp_path, *tls, "--token-file", str(tmp_path / "bad.token"),
                             "--register", f"127.0.0.1:{main.port}")  # fmt: skip
        try:
            assert unknown.wait() == 1
            assert "proxy_register failed: Unauthenticated (code 16): " in unknown.stderr, unknown.stderr
        finally:
            unknown.kill()

    def test_registration_waits_for_main(self, servers: Servers, tmp_path: Path) -> None:
        with refusing_port() as port:
            backend = PeerServer(peer_binary(), tmp_path, "--register", f"127.0.0.1:{port}", "--host", "127.0.0.1")
            try:
                assert wait_until(lambda: "main unavailable" in backend.stderr, 10), backend.stderr
                main = proxy_main(servers, port=port)  # main comes up: the retries reach it
                backend.wait_registered()
                assert wait_until(lambda: serving_ports(main) == {backend.port}, 10), endpoints(main)
            finally:
                backend.kill()

    def test_registration_without_main_certificate_fails(self, servers: Servers, pki: Pki, tmp_path: Path) -> None:
        main = proxy_main(servers, pki.server_config("main"))
        args = ("--main-tls-ca", str(pki.ca_path), "--main-server-name", "localhost")  # no client certificate
        register = ("--register", f"127.0.0.1:{main.port}", "--register-timeout-ms", "1000")
        backend = PeerServer(peer_binary(), tmp_path, *args, *register)
        try:
            assert backend.wait() == 1  # the handshake failed (not UNAVAILABLE: no retry), said why on stderr
            assert "proxy_register failed" in backend.stderr, backend.stderr
        finally:
            backend.kill()
        assert endpoints(main) == []


# --- (b) the tonic client calling through main to a Python backend ---


class TestTonicCaller:
    def test_four_kinds_through_main(self, servers: Servers) -> None:
        backend = servers(0, [echo_descriptor(EchoManager())])
        main = proxy_main(servers)
        main.client.srv.proxy_register(ProxyRegisterRequest(names=["echo"], version="1", host="127.0.0.1",
                                                            port=backend.port))  # fmt: skip
        four_kinds_from_tonic(f"127.0.0.1:{main.port}")

    def test_four_kinds_through_main_with_mtls(self, servers: Servers, pki: Pki) -> None:
        # Static items are process-wide: the server started last sets them, hence main last
        backend = servers(0, [echo_descriptor(EchoManager())], cli_config=pki.server_config("echo"))
        main = proxy_main(servers, pki.server_config("main"))
        main.client.srv.proxy_register(ProxyRegisterRequest(names=["echo"], version="1", host="127.0.0.1",
                                                            port=backend.port))  # fmt: skip
        four_kinds_from_tonic(f"127.0.0.1:{main.port}", *pki.peer_client_args())
        # Main refuses a tonic caller without a certificate (the handshake fails)
        no_certificate = peer_call(f"127.0.0.1:{main.port}", "echo", "hi", "--tls-ca", str(pki.ca_path))
        assert refused(no_certificate), no_certificate


# --- (c) replicas ---


def test_two_tonic_replicas_are_balanced_by_main(servers: Servers, tmp_path: Path) -> None:
    main = proxy_main(servers)
    with (
        peer_server(tmp_path, "--log-calls", register=main.port) as one,
        peer_server(tmp_path, "--log-calls", register=main.port) as two,
    ):
        assert wait_until(lambda: serving_ports(main) == {one.port, two.port}, 10), endpoints(main)
        calls = 0
        with RpcClient("127.0.0.1", main.port, ECHO_STUBS, timeout=10) as client:

            def both_called() -> bool:
                nonlocal calls
                calls += 1
                assert client.echo.echo(EchoRequest(text=f"call {calls}")).text == f"call {calls}"
                return one.calls("echo") > 0 and two.calls("echo") > 0

            assert wait_until(both_called, 10), (one.calls("echo"), two.calls("echo"))
            # every call reached one of them, once
            assert wait_until(lambda: one.calls("echo") + two.calls("echo") == calls, 10)


# --- (d) main's view of a tonic backend ---


class TestMainSeesTheTonicBackend:
    def test_info_and_health_serving_then_not_once_killed(self, servers: Servers, tmp_path: Path) -> None:
        main = proxy_main(servers)
        assert main_health(main) == NOT_SERVING  # not registered yet
        with peer_server(tmp_path, "--version", "tonic-echo:7", register=main.port) as backend:
            assert wait_until(lambda: endpoints(main) == [("127.0.0.1", backend.port, "tonic-echo:7", True)], 10)
            assert main.client.srv.info(Filter(names=["echo"])).items[0].version == "tonic-echo:7"
            assert wait_until(lambda: main_health(main) == SERVING, 10)
            backend.kill()  # no forget: main notices the backend is gone by itself
            assert wait_until(lambda: endpoints(main) == [("127.0.0.1", backend.port, "tonic-echo:7", False)], 10)
            assert wait_until(lambda: main_health(main) == NOT_SERVING, 10)

    def test_sigterm_forgets_its_endpoint(self, servers: Servers, tmp_path: Path) -> None:
        main = proxy_main(servers)
        with peer_server(tmp_path, register=main.port) as backend:
            assert wait_until(lambda: serving_ports(main) == {backend.port}, 10)
            assert backend.stop() == 0
            assert backend.found(lambda e: e.get("event") == "forgotten")
            assert endpoints(main) == []  # forgotten before it exited
            assert main_health(main) == NOT_SERVING


# --- the peer's own features, peer to peer (what later tests of main's forwarder rely on) ---


@pytest.fixture
def peer(tmp_path: Path) -> Iterator[PeerServer]:
    """A tonic-echo server, plain, on its own."""
    with peer_server(tmp_path) as server:
        yield server


class TestPeerToPeer:
    def test_four_kinds_with_headers_and_trailers(self, peer: PeerServer) -> None:
        target = f"127.0.0.1:{peer.port}"
        results = {
            "echo": peer_call(target, "echo", "hi", "--payload-bytes", "5"),
            "repeat": peer_call(target, "repeat", "r", "--count", "2"),
            "collect": peer_call(target, "collect", "c", "--messages", "3", "--payload-bytes", "2"),
            "chat": peer_call(target, "chat", "t", "--messages", "2"),
        }
        for result in results.values():
            assert ok(result)["headers"].items() >= PEER_HEADERS.items(), result
            assert result["trailers"].items() >= {**PEER_TRAILERS, "grpc-status": "0"}.items(), result
            assert result["details_b64"] is None
        echo = results["echo"]["responses"]
        assert [(r["text"], r["payload_len"], r["index"]) for r in echo] == [("hi", 5, 0)]
        assert texts(results["repeat"]) == [("r", 0), ("r", 1)]
        assert [(r["text"], r["payload_len"], r["index"]) for r in results["collect"]["responses"]] == [("ccc", 6, 3)]
        assert texts(results["chat"]) == [("t", 0), ("t", 1)]
        assert peer.found(lambda e: e.get("event") == "collect_end") == [
            {"event": "collect_end", "count": 3, "how": "eof"}]  # fmt: skip

    @pytest.mark.parametrize("method", ["echo", "repeat", "collect", "chat"])
    def test_status_with_details_and_the_same_metadata(self, peer: PeerServer, method: str) -> None:
        result = peer_call(f"127.0.0.1:{peer.port}", method, "status:5:no such thing")
        assert (result["status"], result["message"]) == (NOT_FOUND, "no such thing"), result
        assert base64.b64decode(result["details_b64"]) == rpc_status(NOT_FOUND, "no such thing")
        assert result["headers"].items() >= PEER_HEADERS.items(), result
        assert result["trailers"].items() >= PEER_TRAILERS.items(), result
        assert result["responses"] == []

    def test_a_grpcio_client_reads_the_same(self, peer: PeerServer) -> None:
        with grpc.insecure_channel(f"127.0.0.1:{peer.port}") as channel:
            stub = EchoServiceStub(channel)
            answer, call = stub.echo.with_call(EchoRequest(text="hi"), timeout=10)
            assert answer.text == "hi"
            assert {("x-peer-header", "h1"), ("x-peer-header-bin", b"\x01\x02\xff")} <= set(call.initial_metadata())
            assert {("x-peer-trailer", "t1"), ("x-peer-trailer-bin", b"\xfe\x00")} <= set(call.trailing_metadata())
            with pytest.raises(grpc.RpcError) as failed:
                stub.echo(EchoRequest(text="status:3:bad"), timeout=10)
        error = failed.value
        assert isinstance(error, grpc.Call)
        assert (error.code(), error.details()) == (grpc.StatusCode.INVALID_ARGUMENT, "bad")
        trailers = {key: value for key, value in error.trailing_metadata()}
        assert trailers["grpc-status-details-bin"] == rpc_status(INVALID_ARGUMENT, "bad")
        assert trailers["x-peer-trailer-bin"] == b"\xfe\x00"

    def test_cancelled_echo_is_seen_by_the_server(self, peer: PeerServer) -> None:
        result = peer_call(f"127.0.0.1:{peer.port}", "echo", "sleep:20000", "--cancel-after-ms", "1000")
        assert (result["status"], result["responses"]) == (CANCELLED, []), result
        peer.wait_event(lambda e: e == {"event": "cancelled", "method": "echo"}, "cancelled event", 10)

    def test_cancelled_collect_is_never_an_end_of_input(self, peer: PeerServer) -> None:
        # one message every 100 ms, input held open: the cancellation comes mid-input (1 s: the call surely
        # reached the server by then, even on a loaded machine)
        result = peer_call(f"127.0.0.1:{peer.port}", "collect", "a", "--messages", "50", "--cancel-after-ms", "1000")
        assert result["status"] == CANCELLED, result
        end = peer.wait_event(lambda e: e.get("event") == "collect_end", "collect_end", 10)
        assert end["how"] in ("error", "cancelled"), end
        assert 1 <= end["count"] <= 11, end
        assert end.get("code", CANCELLED) == CANCELLED, end

    def test_deadline(self, peer: PeerServer) -> None:
        result = peer_call(f"127.0.0.1:{peer.port}", "echo", "sleep:20000", "--timeout-ms", "1000")
        # tonic's server answers an expired grpc-timeout CANCELLED "Timeout expired", its channel fails the
        # call by itself at the same time: either way the handler was dropped
        assert result["status"] in (CANCELLED, DEADLINE_EXCEEDED), result
        peer.wait_event(lambda e: e == {"event": "cancelled", "method": "echo"}, "cancelled event", 10)

    def test_big_answers_and_message_limits(self, peer: PeerServer) -> None:
        target = f"127.0.0.1:{peer.port}"
        size = 5 * 1024 * 1024
        assert ok(peer_call(target, "echo", "big:1000"))["responses"][0]["payload_len"] == 1000
        too_big = peer_call(target, "echo", f"big:{size}")  # over gRPC's usual 4 MiB receive limit
        assert too_big["status"] == OUT_OF_RANGE, too_big  # tonic says OUT_OF_RANGE (gRPC: RESOURCE_EXHAUSTED)
        raised = peer_call(target, "echo", f"big:{size}", "--max-message-bytes", str(2 * size))
        assert ok(raised)["responses"][0]["payload_len"] == size

    def test_gzip(self, tmp_path: Path, peer: PeerServer) -> None:
        refused = peer_call(f"127.0.0.1:{peer.port}", "echo", "hi", "--gzip")
        assert refused["status"] == UNIMPLEMENTED, refused  # a server without --gzip takes no gzip request
        with peer_server(tmp_path, "--gzip") as gzip:
            result = ok(peer_call(f"127.0.0.1:{gzip.port}", "repeat", "big:100000", "--gzip", "--count", "2"))
            assert result["headers"]["grpc-encoding"] == "gzip", result
            assert [r["payload_len"] for r in result["responses"]] == [100000, 100000]

    def test_health_and_mtls(self, tmp_path: Path, pki: Pki) -> None:
        args = ("--tls-cert", pki.path("echo", "crt"), "--tls-key", pki.path("echo", "key"),
                "--tls-ca", str(pki.ca_path))  # fmt: skip
        with peer_server(tmp_path, *args) as server:
            target = f"127.0.0.1:{server.port}"
            assert texts(ok(peer_call(target, "echo", "hi", *pki.peer_client_args()))) == [("hi", 0)]
            assert refused(peer_call(target, "echo", "hi", "--tls-ca", str(pki.ca_path)))
            credentials = grpc.ssl_channel_credentials(
                pki.ca.cert_pem, Path(pki.path("app", "key")).read_bytes(), Path(pki.path("app", "crt")).read_bytes()
            )
            with grpc.secure_channel(f"localhost:{server.port}", credentials) as channel:
                check = health_pb2_grpc.HealthStub(channel).Check
                for service in ("", "EchoService"):
                    assert check(health_pb2.HealthCheckRequest(service=service), timeout=10).status == SERVING

    def test_unreachable_target_is_a_status(self) -> None:
        with refusing_port() as port:
            assert peer_call(f"127.0.0.1:{port}", "echo", "hi")["status"] == UNAVAILABLE


# --- issue 19 through main, both ways: metadata, statuses, cancellation, bounds ---


def peer_event(server: PeerServer, event: str, timeout: float = 10) -> Event:
    return server.wait_event(lambda e: e.get("event") == event, event, timeout)


@pytest.fixture(params=["plain", "mtls"])
def tonic_behind_main(
    request: pytest.FixtureRequest, servers: Servers, pki: Pki, tmp_path: Path
) -> Iterator[tuple[RpcServer, PeerServer, tuple[str, ...], Pki | None]]:
    """A tonic backend registered on main; the tonic client's arguments to call main; plain or mTLS."""
    mtls = request.param == "mtls"
    main = proxy_main(servers, pki.server_config("main") if mtls else None)
    with peer_server(tmp_path, *(pki.peer_server_args() if mtls else ()), register=main.port) as backend:
        assert wait_until(lambda: serving_ports(main) == {backend.port}, 10), endpoints(main)
        yield main, backend, pki.peer_client_args() if mtls else (), pki if mtls else None


class TestTonicBothEnds:
    """tonic client -> main -> tonic backend: main is a transparent hop for a caller that is not ours."""

    def test_metadata_both_ways(self, tonic_behind_main: tuple[RpcServer, PeerServer, tuple[str, ...], Any]) -> None:
        main, _, args, _ = tonic_behind_main
        for method in ("echo", "repeat", "collect", "chat"):
            result = ok(peer_call(f"127.0.0.1:{main.port}", method, "hi", *args))
            assert PEER_HEADERS.items() <= result["headers"].items(), (method, result)
            assert PEER_TRAILERS.items() <= result["trailers"].items(), (method, result)
            assert not [k for k in (*result["headers"], *result["trailers"]) if k.startswith("rpc-")]

    def test_the_backends_own_status_details_and_trailers(
        self, tonic_behind_main: tuple[RpcServer, PeerServer, tuple[str, ...], Any]
    ) -> None:
        main, backend, args, _ = tonic_behind_main
        through = peer_call(f"127.0.0.1:{main.port}", "echo", "status:5:nope", *args)
        if not args:  # plain: the very same answer as the backend gives directly
            direct = peer_call(f"127.0.0.1:{backend.port}", "echo", "status:5:nope")
            assert (through["status"], through["message"], through["details_b64"]) == (
                direct["status"], direct["message"], direct["details_b64"])  # fmt: skip
        assert (through["status"], through["message"]) == (NOT_FOUND, "nope")
        assert base64.b64decode(through["details_b64"]) == rpc_status(NOT_FOUND, "nope")
        assert PEER_TRAILERS.items() <= through["trailers"].items()

    def test_a_cancelled_client_stream_is_a_cancellation_at_the_backend(
        self, tonic_behind_main: tuple[RpcServer, PeerServer, tuple[str, ...], Any]
    ) -> None:
        main, backend, args, _ = tonic_behind_main
        slow = ("--messages", "50", "--interval-ms", "100", "--cancel-after-ms", "400")
        peer_call(f"127.0.0.1:{main.port}", "collect", "part", *slow, *args)
        end = peer_event(backend, "collect_end")
        assert end["how"] != "eof", end  # never taken for a complete input
        assert 0 < end["count"] < 50

    def test_a_passed_deadline_cancels_the_backend_call(
        self, tonic_behind_main: tuple[RpcServer, PeerServer, tuple[str, ...], Any]
    ) -> None:
        main, backend, args, _ = tonic_behind_main
        result = peer_call(f"127.0.0.1:{main.port}", "echo", "sleep:5000", "--timeout-ms", "500", *args)
        assert result["status"] == DEADLINE_EXCEEDED, result
        peer_event(backend, "cancelled")  # the backend was told at once, not after its 5 s

    def test_a_grpc_helper_client_keeps_2x_shape(
        self, tonic_behind_main: tuple[RpcServer, PeerServer, tuple[str, ...], Any]
    ) -> None:
        main, _, _, pki = tonic_behind_main
        security = pki.client() if pki is not None else None
        host = "localhost" if pki is not None else "127.0.0.1"
        client = RpcClient(host, main.port, ECHO_STUBS, timeout=10, security=security)
        with client, pytest.raises(RpcException) as info:
            client.echo.echo(EchoRequest(text="status:5:nope"))
        assert info.value.rc == ResultCode.ERROR_RPC
        assert "NOT_FOUND" in str(info.value)


def test_a_tonic_caller_gets_plain_statuses_for_mains_own_errors(servers: Servers) -> None:
    main = proxy_main(servers)
    RpcStaticConfig.CLIENT_TIMEOUT.update("0.5")  # after the start, which sets every item; restored by conftest
    result = peer_call(f"127.0.0.1:{main.port}", "echo", "hi")
    assert result["status"] == UNAVAILABLE, result  # nothing registered
    assert result["message"].startswith("ERROR_PROXY_UNREGISTERED")


def test_a_gzip_answer_over_the_limit_never_outlives_the_deadline(servers: Servers, tmp_path: Path) -> None:
    """A backend answering gzip-compressed messages over main's size limit: main answers its caller by the
    caller's deadline, and its forwarding thread is free (grpcio's own receive path can hang past it)."""
    main = proxy_main(servers)
    with peer_server(tmp_path, "--gzip", register=main.port) as backend:
        assert wait_until(lambda: serving_ports(main) == {backend.port}, 10), endpoints(main)
        with grpc.insecure_channel(f"127.0.0.1:{main.port}") as channel:
            stub = EchoServiceStub(channel)
            request = EchoRequest(text=f"big:{6 << 20}", count=1)
            calls = {
                "echo": lambda: stub.echo(request, timeout=3),
                "repeat": lambda: list(stub.repeat(request, timeout=3)),
            }
            for method, call in calls.items():
                started = time.monotonic()
                with pytest.raises(grpc.RpcError) as info:
                    call()
                assert info.value.code() in (grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.DEADLINE_EXCEEDED)
                assert time.monotonic() - started < 5, method
            assert wait_until(lambda: not forward.IN_FLIGHT, 5)  # no forwarding thread left behind
            assert stub.echo(EchoRequest(text="after"), timeout=10).text == "after"
