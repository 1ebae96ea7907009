"""TLS, mTLS, certificate rotation and the authorization policy (issue 12), with real certificates on
real servers (loopback only)."""

from __future__ import annotations

import contextlib
import ipaddress
import json
import logging
import os
import re
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from grpc_helper import Folders, RpcClient, RpcException, RpcServer, RpcStaticConfig, current_call, current_identity
from grpc_helper.api import (
    ConfigUpdate,
    Empty,
    EventFilter,
    EventInterrupt,
    Filter,
    LoggerUpdate,
    ProxyRegisterRequest,
    ResultCode,
    ShutdownRequest,
    StatRequest,
)
from grpc_helper.auth import token_hash
from grpc_helper.client import balanced_channel
from grpc_helper.errors import PlaintextTokenError, RpcTransportError
from grpc_helper.limits import LOG_LINES_PER_SECOND
from grpc_helper.pki import CertificateAuthority, Issued, write_private
from grpc_helper.proxy.registry import PROXY_FILE
from grpc_helper.tls import _SETTLE_NS, ClientSecurity, ServerTls, loopback_target
from grpc_helper_samples.api import EchoApiVersion, EchoRequest, EchoResponse
from grpc_helper_samples.api.echo_pb2_grpc import EchoServiceStub

from helpers import EchoManager, Servers, echo_descriptor, event, start_echo, wait_until

ECHO_STUBS = {"echo": (EchoServiceStub, EchoApiVersion.ECHO_API_CURRENT)}
MAIN_NAMES = ("localhost", "127.0.0.1", "main")  # what the `pki` fixture's main certificate names
TOKENS = {"operator": "t-admin-0123456789", "app": "t-user-0123456789", "svc": "t-service-0123456789"}


@dataclass
class Pki:
    folder: Path
    ca: CertificateAuthority
    ca_path: Path

    def issue(self, name: str, *names: str, expired: bool = False, future: bool = False) -> tuple[Path, Path]:
        return self.ca.issue(*names, expired=expired, future=future).write(self.folder, name)

    def client(
        self, name: str | None = None, *, token: str | None = None, server_name: str | None = None
    ) -> ClientSecurity:
        """Trusting this CA; with a client certificate for `name` if given."""
        issued: Issued | None = self.ca.issue(name) if name else None
        return ClientSecurity(
            ca=self.ca.cert_pem,
            cert=issued.cert if issued else None,
            key=issued.key if issued else None,
            server_name=server_name,
            token=token,
        )


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    folder = tmp_path / "pki"
    folder.mkdir()
    ca = CertificateAuthority.create("test CA")
    ca_path = folder / "ca.crt"
    ca_path.write_bytes(ca.cert_pem)
    pki = Pki(folder, ca, ca_path)
    pki.issue("main", *MAIN_NAMES)
    return pki


def tls_config(pki: Pki, name: str = "main", client_auth: str = "none", **extra: str) -> dict[str, str]:
    return {
        "rpc-tls-cert": str(pki.folder / f"{name}.crt"),
        "rpc-tls-key": str(pki.folder / f"{name}.key"),
        "rpc-tls-ca": str(pki.ca_path),
        "rpc-tls-client-auth": client_auth,
        **extra,
    }


def transport_status(call: Callable[[], Any]) -> grpc.StatusCode:
    with pytest.raises(RpcTransportError) as info:
        call()
    return info.value.status


def outcome(call: Callable[[], Any]) -> RpcException | None:
    """What `call()` raised (an `RpcException`), None if it returned."""
    try:
        call()
    except RpcException as exc:
        return exc
    return None


def four_kinds(client: RpcClient) -> None:
    """The four call kinds of the echo service answer through `client`."""
    assert client.echo.echo(EchoRequest(text="unary")).text == "unary"
    assert [r.index for r in client.echo.repeat(EchoRequest(text="s", count=3))] == [0, 1, 2]
    assert client.echo.collect(iter([EchoRequest(text="a"), EchoRequest(text="b")])).text == "ab"
    assert [r.text for r in client.echo.chat(iter([EchoRequest(text="x"), EchoRequest(text="y")]))] == ["X", "Y"]


def settled(*paths: Path) -> None:
    """Date files written by a test back past the settle time, so that a server takes them at its next
    handshake (or its next own client) instead of waiting for them to stay unchanged."""
    past = time.time_ns() - 10 * _SETTLE_NS
    for path in paths:
        os.utime(path, ns=(past, past))


@contextmanager
def bare_tls_server(issued: Issued) -> Iterator[int]:
    """A bare gRPC server (no service) with this certificate, unchecked: an RpcServer refuses to start with
    a bad one, a client must refuse it too. Its port, on localhost."""
    server = grpc.server(ThreadPoolExecutor(1))
    port = server.add_secure_port("localhost:0", grpc.ssl_server_credentials([(issued.key, issued.cert)]))
    server.start()
    try:
        yield port
    finally:
        server.stop(None)


class TestTransport:
    def test_tls_direct_all_call_kinds(self, servers: Servers, pki: Pki) -> None:
        srv = servers(0, [echo_descriptor()], cli_config=tls_config(pki))
        with RpcClient("localhost", srv.port, ECHO_STUBS, timeout=5, security=pki.client()) as client:
            four_kinds(client)
        assert srv.client.srv.info(Filter()).items  # the auto-client speaks TLS too

    def test_mtls_direct_all_call_kinds(self, servers: Servers, pki: Pki) -> None:
        srv = servers(0, [echo_descriptor()], cli_config=tls_config(pki, client_auth="required"))
        with RpcClient("localhost", srv.port, ECHO_STUBS, timeout=5, security=pki.client("operator")) as client:
            four_kinds(client)
        # Without a client certificate, the handshake fails
        with RpcClient("localhost", srv.port, ECHO_STUBS, timeout=1, security=pki.client()) as client:
            assert transport_status(lambda: client.echo.echo(EchoRequest())) == grpc.StatusCode.UNAVAILABLE

    def test_plaintext_client_refused_by_a_tls_server(self, servers: Servers, pki: Pki) -> None:
        srv = servers(0, [echo_descriptor()], cli_config=tls_config(pki))
        with RpcClient("localhost", srv.port, ECHO_STUBS, timeout=1) as client:
            assert transport_status(lambda: client.echo.echo(EchoRequest())) == grpc.StatusCode.UNAVAILABLE

    def test_server_from_another_ca_refused(self, servers: Servers, pki: Pki) -> None:
        srv = servers(0, [echo_descriptor()], cli_config=tls_config(pki))
        other = ClientSecurity(ca=CertificateAuthority.create("another CA").cert_pem)
        with RpcClient("localhost", srv.port, ECHO_STUBS, timeout=1, security=other) as client:
            assert transport_status(lambda: client.echo.echo(EchoRequest())) == grpc.StatusCode.UNAVAILABLE

    def test_expired_server_certificate_refused(self, pki: Pki) -> None:
        with (
            bare_tls_server(pki.ca.issue("localhost", "127.0.0.1", expired=True)) as port,
            RpcClient("localhost", port, ECHO_STUBS, timeout=1, security=pki.client()) as client,
        ):
            assert transport_status(lambda: client.echo.echo(EchoRequest())) == grpc.StatusCode.UNAVAILABLE

    def test_server_certificate_for_another_name_refused(self, servers: Servers, pki: Pki) -> None:
        srv = servers(0, [echo_descriptor()], cli_config=tls_config(pki))
        with RpcClient("localhost", srv.port, ECHO_STUBS, timeout=1, security=pki.client(server_name="bank")) as c:
            assert transport_status(lambda: c.echo.echo(EchoRequest())) == grpc.StatusCode.UNAVAILABLE
        # ... and accepted under a name it carries
        with RpcClient("127.0.0.1", srv.port, ECHO_STUBS, timeout=5, security=pki.client(server_name="main")) as c:
            assert c.echo.echo(EchoRequest(text="ok")).text == "ok"

    def test_expired_client_certificate_refused(self, servers: Servers, pki: Pki) -> None:
        srv = servers(0, [echo_descriptor()], cli_config=tls_config(pki, client_auth="required"))
        old = pki.ca.issue("operator", expired=True)
        security = ClientSecurity(ca=pki.ca.cert_pem, cert=old.cert, key=old.key)
        with RpcClient("localhost", srv.port, ECHO_STUBS, timeout=1, security=security) as client:
            assert transport_status(lambda: client.echo.echo(EchoRequest())) == grpc.StatusCode.UNAVAILABLE

    def test_rotation_is_picked_up_without_restart(self, servers: Servers, pki: Pki) -> None:
        """A renewed certificate (here from a new CA, which clients of the old one refuse) serves new
        connections once it is on disk; a connection made before keeps working."""
        srv = servers(0, [echo_descriptor()], cli_config=tls_config(pki))
        before = RpcClient("localhost", srv.port, ECHO_STUBS, timeout=5, security=pki.client())
        assert before.echo.echo(EchoRequest(text="1")).text == "1"
        renewed = CertificateAuthority.create("renewed CA")
        files = renewed.issue(*MAIN_NAMES).write(pki.folder, "main")  # atomic replace, as the stack's script does
        pki.ca_path.write_bytes(pki.ca.cert_pem + renewed.cert_pem)
        settled(*files, pki.ca_path)
        trusting_new = ClientSecurity(ca=renewed.cert_pem)
        with RpcClient("localhost", srv.port, ECHO_STUBS, timeout=5, security=trusting_new) as after:
            assert after.echo.echo(EchoRequest(text="2")).text == "2"
        with RpcClient("localhost", srv.port, ECHO_STUBS, timeout=1, security=pki.client()) as old_trust:
            assert transport_status(lambda: old_trust.echo.echo(EchoRequest())) == grpc.StatusCode.UNAVAILABLE
        assert before.echo.echo(EchoRequest(text="3")).text == "3"  # its connection predates the renewal
        before.close()

    def test_bind_address_loopback(self, servers: Servers) -> None:
        srv = servers(0, [echo_descriptor()], cli_config={"rpc-bind-address": "127.0.0.1"})
        with RpcClient("127.0.0.1", srv.port, ECHO_STUBS, timeout=5) as client:
            assert client.echo.echo(EchoRequest(text="v4")).text == "v4"
        with RpcClient("::1", srv.port, ECHO_STUBS, timeout=1) as client:  # not bound on IPv6 loopback
            assert transport_status(lambda: client.echo.echo(EchoRequest())) == grpc.StatusCode.UNAVAILABLE

    def test_token_needs_tls_off_loopback(self) -> None:
        with pytest.raises(ValueError, match="plaintext"):
            RpcClient("10.1.2.3", 1, ECHO_STUBS, security=ClientSecurity(tls=False, token="x"))

    def test_optional_client_certificates_are_refused_with_the_reason(self) -> None:
        # grpcio can only require client certificates or not ask for them: "optional" is told so, not
        # silently served as "none" (callers would think their certificate identifies them)
        with pytest.raises(RpcException, match="grpcio can only require client certificates") as info:
            RpcStaticConfig.TLS_CLIENT_AUTH.validate("rpc-tls-client-auth", "optional")
        assert info.value.rc == ResultCode.ERROR_PARAM_INVALID
        RpcStaticConfig.TLS_CLIENT_AUTH.validate("rpc-tls-client-auth", "Required")  # the valid ones still are

    def test_repr_shows_no_secret(self, pki: Pki) -> None:
        text = repr(pki.client("operator", token="s3cr3t"))
        assert "s3cr3t" not in text
        assert "PRIVATE" not in text


def proxied_echo(servers: Servers, backend_config: dict[str, str], main_config: dict[str, str]) -> RpcServer:
    """An echo backend and a main proxying it, the backend registered at 127.0.0.1; main."""
    backend = servers(0, [echo_descriptor(EchoManager())], cli_config=backend_config)
    main = servers(0, [echo_descriptor(is_proxy=True)], cli_config=main_config)
    main.client.srv.proxy_register(
        ProxyRegisterRequest(names=["echo"], version="1", host="127.0.0.1", port=backend.port)
    )
    return main


def policy_file(path: Path, identities: dict[str, dict[str, Any]]) -> Path:
    """An authorization policy at `path` with these identities."""
    path.write_text(json.dumps({"identities": identities}))
    return path


def write_token(path: Path, token: str) -> str:
    write_private(path, token.encode() + b"\n")
    return str(path)


class TestServerTokens:
    """TLS without client certificates: servers known to each other by their `rpc-auth-token-file` tokens."""

    def test_a_backend_registers_and_main_forwards_with_their_own_tokens(
        self, servers: Servers, pki: Pki, tmp_path: Path
    ) -> None:
        pki.issue("echo", "echo", "localhost", "127.0.0.1")
        tokens = {"main": "t-main-0123456789", "echo": "t-echo-0123456789", "app": TOKENS["app"]}
        main_policy = policy_file(tmp_path / "main-policy.json", {
            "echo": {"role": "service", "token_sha256": token_hash(tokens["echo"])},
            "app": {"role": "user", "token_sha256": token_hash(tokens["app"])}})  # fmt: skip
        # The echo server knows main, which forwards calls for others, and the app main forwards for
        echo_policy = policy_file(tmp_path / "echo-policy.json", {
            "main": {"role": "admin", "token_sha256": token_hash(tokens["main"]), "proxy": True},
            "app": {"role": "user", "token_sha256": token_hash(tokens["app"])}})  # fmt: skip
        main_token = write_token(tmp_path / "main.token", tokens["main"])
        main_items = {"rpc-auth-policy": str(main_policy), "rpc-auth-token-file": main_token}
        workspace = tmp_path / "main"
        workspace.mkdir()
        config, folders = tls_config(pki, **main_items), Folders(workspace=workspace)
        main = servers(0, [echo_descriptor(is_proxy=True)], cli_config=config, folders=folders)
        echo_items = {
            **tls_config(pki, "echo"),
            "rpc-auth-policy": str(echo_policy),
            "rpc-auth-token-file": write_token(tmp_path / "echo.token", tokens["echo"]),
        }
        process = start_echo(main.port, tmp_path / "echo", **echo_items)
        try:

            def serving() -> bool:
                items = main.client.srv.info(Filter(names=["echo"])).items
                return any(e.serving for e in items[0].endpoints)

            def registrant() -> str | None:
                path = workspace / PROXY_FILE
                return json.loads(path.read_text()).get("echo", {}).get("registrant") if path.exists() else None

            assert wait_until(serving, 60)  # registered by its token: a `service` on main
            # ... and persisted as the registration of that identity (written once registered: main may
            # already show it serving meanwhile)
            assert wait_until(lambda: registrant() == "echo", 30), registrant()
            app = pki.client(token=tokens["app"])
            with RpcClient("localhost", main.port, ECHO_STUBS, timeout=10, security=app) as client:
                # main -> echo with main's token (never the app's), naming the app as its caller
                assert client.echo.echo(EchoRequest(text="hop")).text == "hop"
        finally:
            process.terminate()
            process.wait(30)

    def test_a_backend_without_its_token_is_refused(self, servers: Servers, pki: Pki, tmp_path: Path) -> None:
        pki.issue("echo", "echo", "localhost", "127.0.0.1")
        policy = policy_file(tmp_path / "policy.json", {
            "echo": {"role": "service", "token_sha256": token_hash("t-echo-0123456789")}})  # fmt: skip
        config = tls_config(pki, **{"rpc-auth-policy": str(policy)})
        main = servers(0, [echo_descriptor(is_proxy=True)], cli_config=config)
        items = {**tls_config(pki, "echo"), "rpc-client-timeout": "2"}
        process = start_echo(main.port, tmp_path / "echo", stderr=subprocess.PIPE, **items)
        try:
            _, err = process.communicate(timeout=60)
        finally:
            process.kill()
            process.wait(30)
        assert process.returncode != 0  # its start failed: its registration was refused, and said why
        assert "UNAUTHENTICATED" in err, err
        assert not main.client.srv.info(Filter(names=["echo"])).items[0].endpoints

    def test_a_token_file_readable_by_others_is_told(
        self, servers: Servers, pki: Pki, tmp_path: Path, caplog: pytest.LogCaptureFixture
    ) -> None:
        token = write_token(tmp_path / "t.token", "t-shared-0123456789")
        Path(token).chmod(0o644)
        with caplog.at_level(logging.WARNING, logger="grpc_helper.tls"):
            servers(0, [], cli_config=tls_config(pki, **{"rpc-auth-token-file": token}))
        warned = [r.getMessage() for r in caplog.records if "rpc-auth-token-file" in r.getMessage()]
        expected = f"The token file {token} (rpc-auth-token-file) is readable by others (mode 644): make it 0600"
        assert warned == [expected]
        assert "t-shared-0123456789" not in caplog.text  # the path is told, never the token

    def test_a_token_is_never_sent_in_plaintext(self, tmp_path: Path) -> None:
        config = {"rpc-auth-token-file": write_token(tmp_path / "t.token", "t-0123456789")}
        with pytest.raises(RpcException, match="needs TLS") as info:
            RpcServer(0, [], cli_config=config, folders=Folders(workspace=tmp_path), with_debug_signal=False)
        assert info.value.rc == ResultCode.ERROR_PARAM_MISSING


class TestProxyTls:
    """main -> backend over mTLS, the backend verified against the name of the service it registered."""

    def test_mtls_through_the_proxy_all_call_kinds(self, servers: Servers, pki: Pki) -> None:
        pki.issue("echo", "echo", "localhost")
        main = proxied_echo(servers, tls_config(pki, "echo", "required"), tls_config(pki, client_auth="required"))
        with RpcClient("localhost", main.port, ECHO_STUBS, timeout=10, security=pki.client("operator")) as client:
            four_kinds(client)

    def test_backend_with_a_certificate_for_another_service_refused(self, servers: Servers, pki: Pki) -> None:
        pki.issue("notes", "notes", "localhost")
        main = proxied_echo(servers, tls_config(pki, "notes"), tls_config(pki, **{"rpc-client-timeout": "1"}))
        with RpcClient("localhost", main.port, ECHO_STUBS, timeout=5, security=pki.client()) as client:
            failure = outcome(lambda: client.echo.echo(EchoRequest(text="x")))
        # Answered by main (r.code=ERROR_RPC: its backend can't be reached), not a failure to reach main
        assert failure is not None
        assert failure.rc == ResultCode.ERROR_RPC
        assert not isinstance(failure, RpcTransportError)

    def test_replicas_over_mtls(self, servers: Servers, pki: Pki) -> None:
        """Two echo replicas registered at their IP, with certificates naming only the service (as on a
        swarm: the task's address is in none): main's balanced channel checks each against "echo" (it once
        sent the first address as the call's authority, which TLS refused: "call host does not match")."""
        pki.issue("echo", "echo", "localhost")
        config = tls_config(pki, "echo", "required")
        main = proxied_echo(servers, config, tls_config(pki, client_auth="required"))
        second = servers(0, [echo_descriptor(EchoManager())], cli_config=config)
        main.client.srv.proxy_register(
            ProxyRegisterRequest(names=["echo"], version="1", host="127.0.0.1", port=second.port)
        )
        with RpcClient("localhost", main.port, ECHO_STUBS, timeout=10, security=pki.client("operator")) as client:
            assert [client.echo.echo(EchoRequest(text=f"{i}")).text for i in range(4)] == ["0", "1", "2", "3"]

    def test_backend_name_override(self, servers: Servers, pki: Pki) -> None:
        pki.issue("echo", "echo.backends.internal")
        config = tls_config(pki, **{"rpc-tls-backend-name": "{service}.backends.internal"})
        main = proxied_echo(servers, tls_config(pki, "echo"), config)
        with RpcClient("localhost", main.port, ECHO_STUBS, timeout=10, security=pki.client()) as client:
            assert client.echo.echo(EchoRequest(text="named")).text == "named"


# --- renewals checked before they are used (issue 17) ---


@dataclass
class TlsStack:
    """A main with TLS (its own CA bundle file, `main-ca.crt`) and an echo backend (mTLS, knowing main by
    its certificate only), not yet registered: channels main creates to it come after a renewal."""

    pki: Pki
    main: RpcServer
    backend: RpcServer
    ca_path: Path  # main's CA bundle

    @property
    def tls(self) -> ServerTls:
        assert self.main.tls is not None
        return self.main.tls

    @property
    def files(self) -> tuple[Path, Path, Path]:
        return self.pki.folder / "main.crt", self.pki.folder / "main.key", self.ca_path

    def inbound(self, security: ClientSecurity) -> None:
        """A new connection to main, trusting `security`: it answers (so main served a certificate passing
        that trust, and asked its fetcher first: the renewal was judged)."""
        with RpcClient("localhost", self.main.port, self.main.client.stubs, timeout=5, security=security) as c:
            assert c.srv.info(Filter()).items

    def outbound(self, security: ClientSecurity | None = None) -> None:
        """Main calls its backend on a channel created now: the backend (mTLS, knowing main only by its
        certificate) answers only if main presents a valid certificate naming what the backend expects.
        `security`: the client's, registering the backend on main and calling through it (trusting the pki's
        CA by default; not main's auto-client, whose credentials are those main started with)."""
        security = security or self.pki.client()
        request = ProxyRegisterRequest(names=["echo"], version="1", host="127.0.0.1", port=self.backend.port)
        with RpcClient("localhost", self.main.port, self.main.client.stubs, timeout=5, security=security) as c:
            c.srv.proxy_register(request)
        with RpcClient("localhost", self.main.port, ECHO_STUBS, timeout=10, security=security) as client:
            assert client.echo.echo(EchoRequest(text="through main")).text == "through main"


@pytest.fixture
def tls_stack(servers: Servers, pki: Pki, tmp_path: Path) -> Callable[..., TlsStack]:
    """`tls_stack(identity="main", backend_ca=None)`: see `TlsStack`; the backend knows main by the
    certificate name `identity` and trusts the `backend_ca` bundle (PEM; None: the pki's CA)."""

    def start(identity: str = "main", backend_ca: bytes | None = None) -> TlsStack:
        pki.issue("echo", "echo", "localhost", "127.0.0.1")
        backend_ca_path = tmp_path / "backend-ca.crt"
        backend_ca_path.write_bytes(backend_ca or pki.ca.cert_pem)
        policy = policy_file(tmp_path / "backend-policy.json", {"main": {"role": "admin", "certificate": identity}})
        backend_config = {
            **tls_config(pki, "echo", "required"),
            "rpc-tls-ca": str(backend_ca_path),
            "rpc-auth-policy": str(policy),
        }
        backend = servers(0, [echo_descriptor(EchoManager())], cli_config=backend_config)
        ca_path = pki.folder / "main-ca.crt"
        ca_path.write_bytes(pki.ca.cert_pem)
        # A short client timeout, so that a broken identity fails a call through main quickly (static items
        # are process-wide: the server started last sets them, hence main last)
        main_config = tls_config(pki, **{"rpc-tls-ca": str(ca_path), "rpc-client-timeout": "3"})
        main = servers(0, [echo_descriptor(is_proxy=True)], cli_config=main_config)
        return TlsStack(pki, main, backend, ca_path)

    return start


def _key_of_another(pki: Pki) -> dict[str, bytes]:
    return {"main.key": pki.ca.issue(*MAIN_NAMES).key}


def _truncated(pki: Pki) -> dict[str, bytes]:
    return {"main.crt": (pki.folder / "main.crt").read_bytes()[:300]}


def _reissued(issued: Issued) -> dict[str, bytes]:
    return {"main.crt": issued.cert, "main.key": issued.key}


# (id, the files written over main's (names in the pki folder), the file the error names, the reason it gives)
BAD_RENEWALS: list[tuple[str, Callable[[Pki], dict[str, bytes]], str, str]] = [
    ("mismatched-key", _key_of_another, "main.key", "it is not the key of the certificate"),
    ("truncated", _truncated, "main.crt", "not a PEM certificate (Unable to load PEM file: MalformedFraming)"),
    ("garbage", lambda _: {"main.key": b"garbage\n"}, "main.key", "not a PEM private key"),
    ("empty", lambda _: {"main.crt": b""}, "main.crt", "not a PEM certificate (the file is empty)"),
    ("garbage-ca", lambda _: {"main-ca.crt": b"junk"}, "main-ca.crt", "not PEM certificates"),
    ("expired", lambda pki: _reissued(pki.ca.issue(*MAIN_NAMES, expired=True)), "main.crt", "it expired on"),
    (
        "not-yet-valid",
        lambda pki: _reissued(pki.ca.issue(*MAIN_NAMES, future=True)),
        "main.crt",
        "it is not valid before",
    ),
    (
        "another-ca",
        lambda _: _reissued(CertificateAuthority.create("another CA").issue(*MAIN_NAMES)),
        "main.crt",
        "its issuer CN=another CA is not in the CA bundle (rpc-tls-ca)",
    ),
    (
        "wrong-name",
        lambda pki: _reissued(pki.ca.issue("bank")),
        "main.crt",
        "it no longer names 127.0.0.1, localhost, main, which the certificate in use does",
    ),
]


def tls_errors(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "grpc_helper.tls" and r.levelno >= logging.ERROR]


class TestRenewalValidation:
    """TlsStack files are checked before main uses them, inbound and for its own (outgoing) clients: a bad
    renewal keeps the previous certificate, key and CA for both, with an ERROR saying which file and why."""

    @pytest.mark.parametrize(
        ("write", "file", "reason"), [c[1:] for c in BAD_RENEWALS], ids=[c[0] for c in BAD_RENEWALS]
    )
    def test_a_bad_renewal_keeps_the_previous_files_on_both_sides(
        self,
        tls_stack: Callable[..., TlsStack],
        caplog: pytest.LogCaptureFixture,
        write: Callable[[Pki], dict[str, bytes]],
        file: str,
        reason: str,
    ) -> None:
        stack = tls_stack()
        pki, tls = stack.pki, stack.tls
        before = tls.cert, tls.key, tls.ca
        for name, data in write(pki).items():
            write_private(pki.folder / name, data)
        settled(*stack.files)
        with caplog.at_level(logging.ERROR, logger="grpc_helper.tls"):
            # Inbound: a client trusting only the previous certificate (its CA, the name localhost) connects
            stack.inbound(pki.client())
            errors = tls_errors(caplog)
            assert len(errors) == 1, errors
            assert errors[0].startswith("Keeping the previous TLS certificate, key and CA: Refused "), errors[0]
            assert f"{pki.folder / file}: {reason}" in errors[0], errors[0]
            # Outbound: main's own clients still use the previous files (a new channel, to a backend needing them)
            assert (tls.cert, tls.key, tls.ca) == before
            stack.outbound()
            assert len(tls_errors(caplog)) == 1  # told once, not at every handshake

    def test_a_valid_renewal_is_used_on_both_sides(
        self, tls_stack: Callable[..., TlsStack], caplog: pytest.LogCaptureFixture
    ) -> None:
        """The renewal adds a name, the only one the backend knows main by: its calls work with the new pair only."""
        stack = tls_stack(identity="main-renewed")
        pki = stack.pki
        issued = pki.ca.issue(*MAIN_NAMES, "main-renewed")
        issued.write(pki.folder, "main")
        settled(*stack.files)
        # main's own clients take it when they are created, without waiting for a handshake to main
        assert stack.tls.client_security("echo").cert == issued.cert
        stack.inbound(pki.client(server_name="main-renewed"))  # a name only the new certificate carries
        stack.outbound()
        assert not tls_errors(caplog)

    def test_a_ca_rotation_checks_the_new_certificate_against_the_new_bundle(
        self, tls_stack: Callable[..., TlsStack], pki: Pki, caplog: pytest.LogCaptureFixture
    ) -> None:
        """The bundle gets the new CA (the peers' first, then main's), then main a certificate from it: each
        step is taken, the certificate checked against the bundle read with it."""
        new_ca = CertificateAuthority.create("new CA")
        bundle = pki.ca.cert_pem + new_ca.cert_pem
        stack = tls_stack(backend_ca=bundle)
        tls = stack.tls
        stack.ca_path.write_bytes(bundle)
        settled(*stack.files)
        stack.inbound(pki.client())  # the previous certificate, checked against the new bundle
        assert tls.ca == bundle
        issued = new_ca.issue(*MAIN_NAMES)
        issued.write(pki.folder, "main")
        settled(*stack.files)
        trusting_new = ClientSecurity(ca=new_ca.cert_pem)
        stack.inbound(trusting_new)  # trusting the new CA only
        assert tls.cert == issued.cert
        stack.outbound(trusting_new)  # main presents its new certificate; checks the backend's (the old CA's) with both
        assert not tls_errors(caplog)

    @pytest.mark.parametrize(
        ("write", "file", "reason"),
        [c[1:] for c in BAD_RENEWALS if c[0] != "wrong-name"],  # no previous certificate at start
        ids=[c[0] for c in BAD_RENEWALS if c[0] != "wrong-name"],
    )
    def test_bad_files_fail_the_start(
        self, pki: Pki, tmp_path: Path, write: Callable[[Pki], dict[str, bytes]], file: str, reason: str
    ) -> None:
        ca_path = pki.folder / "main-ca.crt"
        ca_path.write_bytes(pki.ca.cert_pem)
        for name, data in write(pki).items():
            write_private(pki.folder / name, data)
        config = tls_config(pki, **{"rpc-tls-ca": str(ca_path)})
        with pytest.raises(RpcException) as info:
            RpcServer(0, [], cli_config=config, folders=Folders(workspace=tmp_path), with_debug_signal=False)
        assert info.value.rc == ResultCode.ERROR_MODEL_INVALID
        assert str(info.value).startswith("Refused "), info.value
        assert f"{pki.folder / file}: {reason}" in str(info.value)


# --- authorization ---


def write_policy(folder: Path, *, certificate_service: str | None = None) -> Path:
    identities: dict[str, dict[str, str]] = {
        "operator": {"role": "admin", "token_sha256": token_hash(TOKENS["operator"])},
        "app": {"role": "user", "token_sha256": token_hash(TOKENS["app"])},
        "app2": {"role": "user", "token_sha256": token_hash("t-user2-0123456789")},
        "svc": {"role": "service", "token_sha256": token_hash(TOKENS["svc"])},
        "svc2": {"role": "service", "token_sha256": token_hash("t-service2-0123456789")},
    }
    if certificate_service:
        identities[certificate_service] = {"role": "service", "certificate": certificate_service}
    return policy_file(folder / "policy.json", identities)


def client_as(srv: RpcServer, token: str | None, timeout: float = 5) -> RpcClient:
    security = ClientSecurity(tls=False, token=token) if token else None
    return RpcClient("127.0.0.1", srv.port, srv.client.stubs, timeout=timeout, security=security)


# (stub, method, request, the least role allowed); each is called by nobody, a user, and an admin
CONTROL_METHODS: list[tuple[str, str, Callable[[], Any], str]] = [
    ("srv", "info", Filter, "user"),
    ("srv", "stat", StatRequest, "user"),
    (
        "srv",
        "proxy_register",
        lambda: ProxyRegisterRequest(names=["echo"], version="1", host="127.0.0.1", port=1),
        "service",
    ),
    ("srv", "proxy_forget", lambda: Filter(names=["echo"]), "service"),
    ("config", "get", Filter, "user"),
    ("config", "set", lambda: ConfigUpdate(items=[]), "admin"),
    ("config", "reset", lambda: Filter(names=["x"]), "admin"),
    ("log", "get", lambda: Filter(names=["root"]), "user"),
    ("log", "set", lambda: LoggerUpdate(items=[]), "admin"),
    ("log", "reset", lambda: Filter(names=["x"]), "admin"),
    ("events", "inspect", Empty, "user"),
    ("events", "interrupt", lambda: EventInterrupt(client_id=424242), "user"),
    ("events", "send", lambda: event("E"), "service"),
    ("srv", "shutdown", lambda: ShutdownRequest(timeout=-1), "admin"),  # last: it stops the server
]


class TestAuthorization:
    @pytest.fixture
    def guarded(self, servers: Servers, tmp_path: Path) -> RpcServer:
        policy = write_policy(tmp_path)
        return servers(
            0,
            [echo_descriptor(is_proxy=True)],
            Folders(workspace=tmp_path / "wks"),
            {"rpc-auth-policy": str(policy)},
            with_events=True,
        )

    @pytest.mark.parametrize(
        ("stub", "method", "request_", "least"), CONTROL_METHODS, ids=[f"{s}.{m}" for s, m, _, _ in CONTROL_METHODS]
    )
    def test_control_method(
        self, guarded: RpcServer, stub: str, method: str, request_: Callable[[], Any], least: str
    ) -> None:
        def call(token: str | None) -> Any:
            with client_as(guarded, token, timeout=None) as client:  # type: ignore[arg-type]
                return getattr(getattr(client, stub), method)(request_(), timeout=5)

        assert transport_status(lambda: call(None)) == grpc.StatusCode.UNAUTHENTICATED
        assert transport_status(lambda: call("not-a-known-token")) == grpc.StatusCode.UNAUTHENTICATED
        if least != "user":
            assert transport_status(lambda: call(TOKENS["app"])) == grpc.StatusCode.PERMISSION_DENIED
        if least == "admin":
            assert transport_status(lambda: call(TOKENS["svc"])) == grpc.StatusCode.PERMISSION_DENIED
        # Let through: answered by the service itself (a Result error, e.g. an unknown queue, is fine)
        assert not isinstance(outcome(lambda: call(TOKENS["operator"])), RpcTransportError)

    def test_health_stays_open_and_reflection_needs_user(self, guarded: RpcServer) -> None:
        from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

        def list_services(metadata: tuple[tuple[str, str], ...]) -> list[str]:
            stub = reflection_pb2_grpc.ServerReflectionStub(channel)
            request = reflection_pb2.ServerReflectionRequest(list_services="")
            answers = stub.ServerReflectionInfo(iter([request]), metadata=metadata, timeout=5)
            return [s.name for a in answers for s in a.list_services_response.service]

        with grpc.insecure_channel(f"127.0.0.1:{guarded.port}") as channel:
            answer = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
            assert answer.status == health_pb2.HealthCheckResponse.SERVING
            with pytest.raises(grpc.RpcError) as err:
                list_services(())
            assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
            assert "RpcServerService" in list_services((("authorization", f"Bearer {TOKENS['app']}"),))

    def test_application_services_need_user(self, servers: Servers, tmp_path: Path) -> None:
        policy = write_policy(tmp_path)
        srv = servers(0, [echo_descriptor()], cli_config={"rpc-auth-policy": str(policy)})
        with RpcClient("127.0.0.1", srv.port, ECHO_STUBS, timeout=5) as anonymous:
            assert transport_status(lambda: anonymous.echo.echo(EchoRequest())) == grpc.StatusCode.UNAUTHENTICATED
        user = ClientSecurity(tls=False, token=TOKENS["app"])
        with RpcClient("127.0.0.1", srv.port, ECHO_STUBS, timeout=5, security=user) as client:
            four_kinds(client)

    def test_refusals_are_logged_without_the_token(self, guarded: RpcServer, caplog: pytest.LogCaptureFixture) -> None:
        caplog.set_level(logging.INFO)
        with client_as(guarded, TOKENS["app"]) as client:
            transport_status(lambda: client.config.set(ConfigUpdate(items=[]), timeout=5))
        with client_as(guarded, "wrong-token-value") as client:
            transport_status(lambda: client.srv.info(Filter(), timeout=5))
        text = caplog.text
        assert "Refused /ConfigService/set to app (role user): PERMISSION_DENIED" in text
        assert "Refused /RpcServerService/info to an unidentified caller: UNAUTHENTICATED" in text
        assert TOKENS["app"] not in text
        assert "wrong-token-value" not in text

    def test_a_flood_of_refusals_is_not_a_flood_of_log_lines(
        self, guarded: RpcServer, caplog: pytest.LogCaptureFixture
    ) -> None:
        """300 refused calls as fast as one client makes them: at most `LOG_LINES_PER_SECOND` lines a second
        of the flood's duration, each refusal still counted."""
        caplog.set_level(logging.INFO)
        before = guarded.authorizer.refused
        started = time.monotonic()
        with client_as(guarded, "wrong-token-value") as client:
            for _ in range(300):
                transport_status(lambda: client.srv.info(Filter(), timeout=5))
        seconds = time.monotonic() - started
        lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("Refused /")]
        assert guarded.authorizer.refused - before == 300
        assert len(lines) <= LOG_LINES_PER_SECOND * (int(seconds) + 1), (len(lines), seconds)

    def test_certificate_identities(self, servers: Servers, pki: Pki, tmp_path: Path) -> None:
        policy = write_policy(tmp_path, certificate_service="echo")
        config = tls_config(pki, client_auth="required", **{"rpc-auth-policy": str(policy)})
        srv = servers(0, [echo_descriptor(is_proxy=True)], cli_config=config, with_events=True)
        stubs = srv.client.stubs
        with RpcClient("localhost", srv.port, stubs, timeout=5, security=pki.client("echo")) as as_service:
            as_service.events.send(event("E"))  # a service may send events
            assert (
                transport_status(lambda: as_service.config.set(ConfigUpdate(items=[])))
                == grpc.StatusCode.PERMISSION_DENIED
            )
        with RpcClient("localhost", srv.port, stubs, timeout=5, security=pki.client("stranger")) as stranger:
            assert transport_status(lambda: stranger.srv.info(Filter())) == grpc.StatusCode.UNAUTHENTICATED
        # A token wins over the certificate
        admin = pki.client("stranger", token=TOKENS["operator"])
        with RpcClient("localhost", srv.port, stubs, timeout=5, security=admin) as client:
            assert client.srv.info(Filter()).items

    def test_event_queues_belong_to_their_creator(self, guarded: RpcServer) -> None:
        with client_as(guarded, TOKENS["app"]) as owner, client_as(guarded, "t-user2-0123456789") as other:
            stream = owner.events.listen(EventFilter())
            client_id = next(stream).client_id
            assert (
                transport_status(lambda: next(other.events.listen(EventFilter(client_id=client_id))))
                == grpc.StatusCode.PERMISSION_DENIED
            )
            assert (
                transport_status(lambda: other.events.interrupt(EventInterrupt(client_id=client_id)))
                == grpc.StatusCode.PERMISSION_DENIED
            )
            assert client_id not in other.events.inspect(Empty()).client_ids
            assert client_id in owner.events.inspect(Empty()).client_ids
            owner.events.interrupt(EventInterrupt(client_id=client_id))
            resumed = owner.events.listen(EventFilter(client_id=client_id))
            assert next(resumed).client_id == client_id
            owner.events.interrupt(EventInterrupt(client_id=client_id))

    def test_registrations_belong_to_their_registrant(self, guarded: RpcServer) -> None:
        request = ProxyRegisterRequest(names=["echo"], version="1", host="127.0.0.1", port=1234)
        with client_as(guarded, TOKENS["svc"]) as svc, client_as(guarded, "t-service2-0123456789") as svc2:
            svc.srv.proxy_register(request)
            assert (
                transport_status(lambda: svc2.srv.proxy_forget(Filter(names=["echo"])))
                == grpc.StatusCode.PERMISSION_DENIED
            )
            hijack = ProxyRegisterRequest(names=["echo"], version="1", host="127.0.0.1", port=6666)
            assert transport_status(lambda: svc2.srv.proxy_register(hijack)) == grpc.StatusCode.PERMISSION_DENIED
            svc.srv.proxy_register(request)  # its own: fine
        with client_as(guarded, TOKENS["operator"]) as admin:
            admin.srv.proxy_register(ProxyRegisterRequest(names=["echo"], version="2", host="127.0.0.1", port=4321))
        entry = json.loads((guarded.folders.workspace / "proxy.json").read_text())["echo"]
        assert (entry["port"], entry["registrant"]) == (4321, "operator")


class TestCli:
    """The operator CLI with --tls-* / --token-file (or their environment variables), and errors saying
    what failed."""

    @staticmethod
    def run(capsys: pytest.CaptureFixture[str], port: int, *args: str) -> tuple[int, str, str]:
        from grpc_helper import ctl

        # A refused handshake is retried until --timeout: long enough for a first handshake on a loaded machine
        code = ctl.main(["--port", str(port), "--timeout", "4", *args])
        out, err = capsys.readouterr()
        return code, out, err

    def test_credentials_from_options_and_environment(
        self,
        servers: Servers,
        pki: Pki,
        tmp_path: Path,
        capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch,
    ) -> None:
        policy = write_policy(tmp_path)
        srv = servers(0, [], cli_config=tls_config(pki, client_auth="required", **{"rpc-auth-policy": str(policy)}))
        crt, key = pki.issue("operator-cert", "operator")
        token_file = tmp_path / "token"
        token_file.write_text(TOKENS["operator"] + "\n")
        options = ["--tls-ca", str(pki.ca_path), "--tls-cert", str(crt), "--tls-key", str(key)]
        code, out, _ = self.run(capsys, srv.port, *options, "--token-file", str(token_file), "config", "get")
        assert code == 0, out
        code, _, err = self.run(capsys, srv.port, *options, "config", "get")  # a certificate, no known identity
        assert code == 1
        assert "UNAUTHENTICATED" in err
        user_token = tmp_path / "user-token"
        user_token.write_text(TOKENS["app"])
        monkeypatch.setenv("GRPC_HELPER_TLS_CA", str(pki.ca_path))
        monkeypatch.setenv("GRPC_HELPER_TLS_CERT", str(crt))
        monkeypatch.setenv("GRPC_HELPER_TLS_KEY", str(key))
        monkeypatch.setenv("GRPC_HELPER_TOKEN_FILE", str(user_token))
        code, _, err = self.run(capsys, srv.port, "log", "set", "root", "DEBUG")
        assert code == 1
        assert "PERMISSION_DENIED" in err
        assert "needs role admin" in err
        code, out, _ = self.run(capsys, srv.port, "info")  # a user may
        assert code == 0, out

    def test_tls_failures_are_told_apart(self, servers: Servers, pki: Pki, capsys: pytest.CaptureFixture[str]) -> None:
        srv = servers(0, [], cli_config=tls_config(pki))
        plaintext = servers(0, [])
        other_ca = pki.folder / "other.crt"
        other_ca.write_bytes(CertificateAuthority.create("other").cert_pem)
        ca = ["--tls-ca", str(pki.ca_path)]
        with bare_tls_server(pki.ca.issue("localhost", "127.0.0.1", expired=True)) as expired_port:
            cases = [
                (srv.port, ["--tls-ca", str(other_ca)], "unknown CA"),
                (srv.port, [*ca, "--tls-server-name", "bank"], "does not name this host"),
                (expired_port, ca, "bad certificate: the server's certificate has expired"),
                (srv.port, [], "a TLS server refusing a plaintext client"),
                (plaintext.port, ca, "a TLS client against a plaintext server"),
            ]
            for port, options, told in cases:
                code, _, err = self.run(capsys, port, *options, "info")
                assert code == 1
                assert told in err, (options, err)


def test_policy_found_in_the_system_folder(servers: Servers, tmp_path: Path) -> None:
    """A relative rpc-auth-policy is looked up in the workspace, then the user folder, then the system folder."""
    system = tmp_path / "system"
    system.mkdir()
    write_policy(system)
    folders = Folders(system=system, user=tmp_path / "user", workspace=tmp_path / "wks")
    srv = servers(0, [echo_descriptor()], folders, {"rpc-auth-policy": "policy.json"})
    with RpcClient("127.0.0.1", srv.port, ECHO_STUBS, timeout=5) as anonymous:
        assert transport_status(lambda: anonymous.echo.echo(EchoRequest())) == grpc.StatusCode.UNAUTHENTICATED


# --- a bearer token never travels in plaintext off loopback (issue 17, item 7) ---


@pytest.fixture(scope="module")
def own_ip() -> str:
    """A non-loopback IPv4 address of this machine (its servers are reached there off loopback; nothing
    else is dialled): the test is skipped without one, and failed under CI=true, where it must run."""
    addresses: list[str] = []
    with contextlib.suppress(OSError, subprocess.TimeoutExpired):
        ip = subprocess.run(["ip", "-4", "-o", "addr", "show", "up"], capture_output=True, text=True, timeout=10)
        addresses = [line.split()[3].partition("/")[0] for line in ip.stdout.splitlines() if len(line.split()) > 3]
    if not addresses:  # no `ip` command: what the host name resolves to
        with contextlib.suppress(OSError):
            addresses = socket.gethostbyname_ex(socket.gethostname())[2]
    found = [a for a in addresses if not ipaddress.ip_address(a).is_loopback]
    if found:
        return found[0]
    if os.environ.get("CI") == "true":
        pytest.fail("CI=true but this machine has no non-loopback IPv4 address: the test must run", pytrace=False)
    pytest.skip("no non-loopback IPv4 address on this machine: nothing to reach off loopback")


class TokenRecorder(EchoManager):
    """An echo replica recording the `authorization` metadata each echo call brought it (None: none), and who it
    served it for (`current_identity()`'s name; None without a policy)."""

    def __init__(self) -> None:
        super().__init__()
        self.received: list[str | None] = []
        self.callers: list[str | None] = []

    def echo(self, request: EchoRequest) -> EchoResponse:
        call = current_call()
        assert call is not None
        self.received.append(next((str(v) for k, v in call.metadata if k == "authorization"), None))
        identity = current_identity()
        self.callers.append(identity.name if identity is not None else None)
        return super().echo(request)


def replica_at(
    servers: Servers, main: RpcServer, ip: str, config: dict[str, str] | None = None
) -> tuple[TokenRecorder, int]:
    """A `TokenRecorder` replica (listening on every interface) registered on `main` at `ip`, once main
    shows it serving; the recorder and the replica's port."""
    recorder = TokenRecorder()
    backend = servers(0, [echo_descriptor(recorder)], cli_config=config)
    main.client.srv.proxy_register(ProxyRegisterRequest(names=["echo"], version="1", host=ip, port=backend.port))

    def serving() -> bool:
        item = main.client.srv.info(Filter(names=["echo"])).items[0]
        return any((e.host, e.port, e.serving) == (ip, backend.port, True) for e in item.endpoints)

    assert wait_until(serving, 10)
    return recorder, backend.port


class TestTokenNeverInPlaintext:
    """Main on loopback, a replica at this machine's own non-loopback address (`own_ip`)."""

    @pytest.mark.parametrize(
        ("target", "loopback"),
        [
            ("127.0.0.1:1", True),
            ("localhost:1", True),
            ("[::1]:1", True),
            ("dns:///localhost:1", True),
            ("ipv4:127.0.0.1:1,127.0.0.2:2", True),
            ("ipv6:[::1]:1,[::ffff:127.0.0.1]:2", True),  # channel_target's mixed list
            ("192.0.2.1:1", False),
            ("example.com:1", False),
            ("dns://127.0.0.1/example.com:1", False),  # the DNS server's address is not the target's
            ("ipv4:127.0.0.1:1,192.0.2.1:2", False),  # one replica elsewhere is enough
            ("ipv6:[::1]:1,[::ffff:192.0.2.1]:2", False),
            ("unix:/tmp/socket", False),  # a form not known: refused, not guessed safe
        ],
    )
    def test_loopback_targets(self, target: str, loopback: bool) -> None:
        assert loopback_target(target) is loopback

    def test_direct_mode_keeps_a_plaintext_token_off_a_replica_elsewhere(
        self, servers: Servers, tmp_path: Path, own_ip: str, caplog: pytest.LogCaptureFixture
    ) -> None:
        """A plaintext client with a token, direct: no route to the replica (it used to get one, and the
        token with every call); its calls go through main, which never forwards a caller's token. Main's
        auto-client (`rpc-client-direct`), whose admin token is for main only, calls the replica directly
        the way main forwards calls: as main, here plaintext without any token (it once sent that one)."""
        config = {"rpc-auth-policy": str(write_policy(tmp_path)), "rpc-client-direct": "true"}
        main = servers(0, [echo_descriptor(is_proxy=True)], cli_config=config)
        replica, port = replica_at(servers, main, own_ip)
        # Reachable straight from here: only the token rule keeps direct routes away from it
        with grpc.insecure_channel(f"{own_ip}:{port}") as channel:
            assert EchoServiceStub(channel).echo(EchoRequest(text="reachable"), timeout=10).text == "reachable"
        replica.received.clear()

        caplog.set_level(logging.WARNING, logger="grpc_helper.client")
        user = ClientSecurity(tls=False, token=TOKENS["app"])
        with RpcClient("127.0.0.1", main.port, ECHO_STUBS, timeout=10, security=user, direct=True) as client:
            assert client.routes == {}
            assert client.echo.echo(EchoRequest(text="through main")).text == "through main"
            client.refresh_routes()  # read again (after an UNAVAILABLE call, or a registration event): the same
            assert client.routes == {}
            assert client.echo.echo(EchoRequest(text="again")).text == "again"
        main.client.refresh_routes()  # the auto-client
        assert main.client.routes == {"echo": ((own_ip, port),)}
        assert main.client.echo.echo(EchoRequest(text="auto")).text == "auto"

        assert replica.received == [None, None, None]  # all three served by the replica, none with a token
        told = [r.getMessage() for r in caplog.records if r.getMessage().startswith("Direct routes")]
        reason = "through main: not all on loopback, and a token needs TLS off it"
        assert told == [f"Direct routes: echo at (('{own_ip}', {port}),) {reason}"]  # once, for the user's client
        assert TOKENS["app"] not in caplog.text

    def test_a_tls_client_with_a_token_goes_direct_to_a_replica_elsewhere(
        self, servers: Servers, pki: Pki, own_ip: str
    ) -> None:
        pki.issue("echo", "echo")  # direct mode checks a replica against its service's name
        main = servers(0, [echo_descriptor(is_proxy=True)], cli_config=tls_config(pki))
        replica, port = replica_at(servers, main, own_ip, tls_config(pki, "echo"))
        security = pki.client(token=TOKENS["app"])
        with RpcClient("localhost", main.port, ECHO_STUBS, timeout=10, security=security, direct=True) as client:
            assert client.routes == {"echo": ((own_ip, port),)}
            assert client.echo.echo(EchoRequest(text="direct")).text == "direct"
        # Main never forwards a caller's token: the replica got it from the client itself, over TLS
        assert replica.received == [f"Bearer {TOKENS['app']}"]

    def test_a_plaintext_token_to_another_host_is_refused_with_the_reason(
        self, own_ip: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        from grpc_helper import ctl

        plaintext = ClientSecurity(tls=False, token=TOKENS["app"])
        reason = f"A token is sent in plaintext only on loopback, not to {own_ip}:1: give TLS credentials"
        with pytest.raises(PlaintextTokenError) as info:
            RpcClient(own_ip, 1, ECHO_STUBS, security=plaintext)
        assert (str(info.value), info.value.rc) == (reason, ResultCode.ERROR_PARAM_INVALID)
        assert isinstance(info.value, ValueError)  # what this refusal always raised
        # Any channel with those credentials: a balanced one (direct routes, main's to its backends) too
        with pytest.raises(PlaintextTokenError, match=f"not to ipv4:127.0.0.1:1,{re.escape(own_ip)}:1:"):
            balanced_channel(plaintext, [("127.0.0.1", 1), (own_ip, 1)])
        # Allowed: the same on loopback; TLS to another host (neither connects before a call)
        RpcClient("127.0.0.1", 1, ECHO_STUBS, security=plaintext).close()
        RpcClient(own_ip, 1, ECHO_STUBS, security=replace(plaintext, tls=True)).close()
        # The CLI: its error line, with the reason (it used to end in a ValueError's traceback)
        token_file = write_token(tmp_path / "t.token", TOKENS["app"])
        code = ctl.main(["--host", own_ip, "--port", "1", "--token-file", token_file, "info"])
        assert (code, capsys.readouterr().err) == (1, f"error: ERROR_PARAM_INVALID: {reason}\n")
