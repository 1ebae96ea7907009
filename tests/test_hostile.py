"""Hostile callers (issue 17): the reference topology with mTLS and the policy on, attacked by callers that
try, identified by their certificate and by their token, directly and routed through main.

The stack is real processes (the sample main and echo, as `stack.sh up --local` runs them) with a private
CA; each test's caller is one identity of the policy, in each identity form (`FORMS`): its own client
certificate, or a bearer token over a TLS connection whose certificate no identity has.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import grpc
import pytest
from test_security import TokenRecorder, write_token

from grpc_helper import Config, Folders, RpcClient, RpcException, RpcServer
from grpc_helper.api import (
    ConfigApiVersion,
    ConfigItemUpdate,
    ConfigUpdate,
    Empty,
    EventApiVersion,
    EventFilter,
    EventInterrupt,
    Filter,
    LoggerApiVersion,
    LoggerConfig,
    LoggerLevel,
    LoggerUpdate,
    ProxyRegisterRequest,
    ResultCode,
    ServerApiVersion,
    ShutdownRequest,
)
from grpc_helper.api.config_pb2_grpc import ConfigServiceStub
from grpc_helper.api.events_pb2_grpc import EventServiceStub
from grpc_helper.api.logger_pb2_grpc import LoggerServiceStub
from grpc_helper.api.server_pb2_grpc import RpcServerServiceStub
from grpc_helper.auth import token_hash
from grpc_helper.errors import RpcTransportError
from grpc_helper.metadata import KEY_CALLER, RpcMetadata
from grpc_helper.pki import CertificateAuthority
from grpc_helper.tls import ClientSecurity
from grpc_helper_samples import notes
from grpc_helper_samples.api import EchoApiVersion, EchoRequest
from grpc_helper_samples.api.echo_pb2_grpc import EchoServiceStub

from helpers import WAIT, BlockingEcho, EchoManager, Program, Servers, echo_descriptor, wait_until

FORMS = ("certificate", "token")
# Identities of the policy: role, and whether they forward calls for others (main)
ROLES = {
    "operator": "admin",
    "chief": "admin",
    "app": "user",
    "app2": "user",
    "svc": "service",
    "svc2": "service",
    "main": "admin",
    "echo": "service",
}
STUBS = {
    "srv": (RpcServerServiceStub, ServerApiVersion.SERVER_API_CURRENT),
    "config": (ConfigServiceStub, ConfigApiVersion.CONFIG_API_CURRENT),
    "log": (LoggerServiceStub, LoggerApiVersion.LOGGER_API_CURRENT),
    "events": (EventServiceStub, EventApiVersion.EVENT_API_CURRENT),
    "echo": (EchoServiceStub, EchoApiVersion.ECHO_API_CURRENT),
}


def token_of(name: str) -> str:
    return f"t-{name}-0123456789abcdef"


@dataclass
class Pki:
    """A private CA, the servers' certificates and key files, and a certificate per caller identity."""

    folder: Path
    ca: CertificateAuthority

    @classmethod
    def create(cls, folder: Path) -> Pki:
        folder.mkdir(parents=True, exist_ok=True)
        pki = cls(folder, CertificateAuthority.create("hostile test CA"))
        (folder / "ca.crt").write_bytes(pki.ca.cert_pem)
        for server in ("main", "echo"):
            pki.ca.issue(server, "localhost", "127.0.0.1").write(folder, server)
        return pki

    def tls_items(self, server: str, policy: Path, **extra: str) -> dict[str, str]:
        """A server's static items: mTLS with its certificate, the policy on."""
        return {
            "rpc-tls-cert": str(self.folder / f"{server}.crt"),
            "rpc-tls-key": str(self.folder / f"{server}.key"),
            "rpc-tls-ca": str(self.folder / "ca.crt"),
            "rpc-tls-client-auth": "required",
            "rpc-auth-policy": str(policy),
            **extra,
        }

    def security(self, name: str, form: str) -> ClientSecurity:
        """`name`'s credentials in `form`: its certificate, or its token over a certificate no identity has."""
        issued = self.ca.issue(name if form == "certificate" else "stranger")
        token = token_of(name) if form == "token" else None
        return ClientSecurity(ca=self.ca.cert_pem, cert=issued.cert, key=issued.key, token=token)


def write_policy(path: Path, **extra: dict[str, Any]) -> Path:
    """The test policy: every identity of `ROLES` by certificate and token, main forwarding for others; `extra`
    entries update or add identities."""
    identities: dict[str, dict[str, Any]] = {
        name: {"role": role, "certificate": name, "token_sha256": token_hash(token_of(name))}
        for name, role in ROLES.items()
    }
    identities["main"]["proxy"] = True
    # Proxied service names belong to identities: echo's to echo, notes' to svc (svc2 is granted none)
    identities["echo"]["services"] = ["echo"]
    identities["svc"]["services"] = ["notes"]
    for name, entry in extra.items():
        identities[name] = {**identities.get(name, {}), **entry}
    path.write_text(json.dumps({"identities": identities}))
    return path


def items_args(items: dict[str, str]) -> list[str]:
    return [a for k, v in items.items() for a in ("-c", f"{k}={v}")]


class SecureStack:
    """The sample main and echo as processes, mTLS and the policy on, as `stack.sh up --local` runs them."""

    def __init__(self, root: Path, **main_items: str) -> None:
        self.root = root
        self.pki = Pki.create(root / "pki")
        self.policy = write_policy(root / "policy.json")
        self.programs: list[Program] = []
        self.clients: list[RpcClient] = []
        common = {"rpc-main-host": "127.0.0.1", "rpc-client-timeout": "10", "rpc-shutdown-grace": "2"}
        self.main = self._start("main", {**common, **main_items})

    def _start(self, name: str, items: dict[str, str]) -> Program:
        program = Program(name, self.root, *items_args(self.pki.tls_items(name, self.policy, **items)))
        self.programs.append(program)
        program.wait_port()
        return program

    def start_echo(self) -> Program:
        items = {"rpc-main-host": "127.0.0.1", "rpc-main-port": str(self.main.port), "rpc-shutdown-grace": "2"}
        return self._start("echo", items)

    def client(self, name: str, form: str, *, port: int | None = None, route: str = "") -> RpcClient:
        """A client of main (or `port`) as identity `name` in `form`, routed to `route`'s server if given."""
        client = RpcClient(
            "127.0.0.1",
            port or self.main.port,
            STUBS,
            timeout=WAIT,
            name=RpcMetadata(client=f"hostile-{name}", route_service=route),
            security=self.pki.security(name, form),
        )
        self.clients.append(client)
        return client

    def wait_echo_registered(self) -> None:
        operator = self.client("operator", "certificate")
        assert operator.echo.echo(EchoRequest(text="ready"), timeout=WAIT).text == "ready"

    def close(self) -> None:
        for client in self.clients:
            client.close()
        for program in reversed(self.programs):
            program.terminate()
        for program in reversed(self.programs):
            program.stop()


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SecureStack]:
    """main + echo, registered and answering through main."""
    s = SecureStack(tmp_path_factory.mktemp("hostile"))
    try:
        s.start_echo()
        s.wait_echo_registered()
        yield s
    finally:
        s.close()


def refusal(call: Callable[[], Any]) -> grpc.StatusCode | int | None:
    """How `call()` was refused: a gRPC status, a `Result` code (int), or None if it was answered."""
    try:
        call()
    except RpcTransportError as exc:
        return exc.status
    except RpcException as exc:
        return exc.rc
    return None


def refused_as(code: grpc.StatusCode, call: Callable[[], Any]) -> bool:
    """Whether `call()` was refused with `code`: by main (a gRPC status), or by the backend behind it (passed
    on by main: a status, or a 2.x-shaped `Result` error quoting it)."""
    try:
        call()
    except RpcTransportError as exc:
        return exc.status == code
    except RpcException as exc:
        return code.name in str(exc)
    except grpc.RpcError as exc:  # a raw stub's
        return exc.code() == code  # type: ignore[no-any-return]
    return False


def denied(call: Callable[[], Any]) -> bool:
    """Whether `call()` was refused PERMISSION_DENIED (see `refused_as`)."""
    return refused_as(grpc.StatusCode.PERMISSION_DENIED, call)


# --- defect 1: one call's authorization never decides another's ---


@pytest.mark.parametrize("form", FORMS)
class TestAuthorizationPerCall:
    def test_a_routed_call_does_not_answer_mains_own(self, stack: SecureStack, form: str) -> None:
        routed = stack.client("app", form, route="echo").srv.info(Filter())
        assert [i.name for i in routed.items if i.name == "echo" and not i.is_proxy] == ["echo"]  # echo's own
        own = stack.client("operator", form).srv.info(Filter())  # main's, not the route's
        assert [i.name for i in own.items if i.name == "echo" and i.is_proxy] == ["echo"]
        routed_again = stack.client("operator", form, route="echo").srv.info(Filter())
        assert not next(i for i in routed_again.items if i.name == "echo").is_proxy

    def test_a_routed_log_change_changes_the_backend_only(self, stack: SecureStack, form: str) -> None:
        name = f"hostile.{form}"

        def level(client: RpcClient) -> int:
            return int(client.log.get(Filter(names=[name])).items[0].level)

        main, routed = stack.client("operator", form), stack.client("operator", form, route="echo")
        main.log.set(LoggerUpdate(items=[LoggerConfig(name=name, enabled=True, level=LoggerLevel.LVL_WARNING)]))
        routed.log.set(LoggerUpdate(items=[LoggerConfig(name=name, enabled=True, level=LoggerLevel.LVL_DEBUG)]))
        assert level(main) == LoggerLevel.LVL_WARNING
        assert level(routed) == LoggerLevel.LVL_DEBUG


def limited_server(servers: Servers, tmp_path: Path) -> tuple[RpcServer, Pki, BlockingEcho]:
    """An echo server with mTLS, the policy and room for 2 calls only (rpc-max-calls=2)."""
    pki = Pki.create(tmp_path / "pki")
    policy = write_policy(tmp_path / "policy.json")
    manager = BlockingEcho()
    items = pki.tls_items("main", policy, **{"rpc-max-calls": "2"})
    srv = servers(0, [echo_descriptor(manager)], Folders(workspace=tmp_path / "wks"), items)
    return srv, pki, manager


@pytest.mark.parametrize("form", FORMS)
class TestCallLimitPerCall:
    def test_over_the_limit_every_caller_is_refused_at_once_and_served_after(
        self, servers: Servers, tmp_path: Path, form: str
    ) -> None:
        srv, pki, manager = limited_server(servers, tmp_path)
        greedy = RpcClient("127.0.0.1", srv.port, STUBS, timeout=None, security=pki.security("app", form))
        # 6 calls of one caller: 2 held by the server, 4 refused
        blocked = [
            threading.Thread(target=refusal, args=(lambda: greedy.echo.echo(EchoRequest()),), daemon=True)
            for _ in range(6)
        ]
        try:
            for thread in blocked:
                thread.start()
            assert wait_until(lambda: srv._workers.pending >= 2, WAIT)  # the 2 calls the server has room for
            for name, caller_form in (("app2", "token"), ("app2", "certificate"), ("operator", form)):
                other = RpcClient("127.0.0.1", srv.port, STUBS, timeout=None, security=pki.security(name, caller_form))
                with other:
                    # The first call of this path by a certificate arrives over the limit: refused at once...
                    code = refusal(lambda: other.echo.echo(EchoRequest(text="over"), timeout=WAIT))  # noqa: B023
                    assert code == grpc.StatusCode.RESOURCE_EXHAUSTED
        finally:
            manager.release.set()
            for thread in blocked:
                thread.join(WAIT)
            greedy.close()
        # ... which decides nothing for the calls after it, on an idle server
        for name, caller_form in (("app2", "certificate"), ("app2", "token")):
            with RpcClient("127.0.0.1", srv.port, STUBS, timeout=WAIT, security=pki.security(name, caller_form)) as c:
                assert c.echo.echo(EchoRequest(text="idle")).text == "done"  # released: answers at once


@pytest.mark.parametrize("form", FORMS)
def test_a_routed_registration_never_stops_the_real_backend(tmp_path: Path, form: str) -> None:
    """A service identity's routed `proxy_register` just after main starts (before echo registered) is
    answered, and decides nothing for echo's own registration: echo registers and serves."""
    stack = SecureStack(tmp_path, **{"rpc-client-timeout": "1"})
    try:
        routed = stack.client("svc", form, route="echo")
        request = ProxyRegisterRequest(names=["echo"], version="1", host="127.0.0.1", port=1)
        assert refusal(lambda: routed.srv.proxy_register(request, timeout=WAIT)) == ResultCode.ERROR_PROXY_UNREGISTERED
        echo = stack.start_echo()
        stack.wait_echo_registered()
        assert echo.proc.poll() is None
    finally:
        stack.close()


@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("held_by", FORMS)
def test_over_the_backends_limit_through_main_decides_no_later_call(
    servers: Servers, tmp_path: Path, held_by: str, form: str
) -> None:
    """Defect 1 through main, which reaches its backend by its certificate: the backend's room for 2 calls is
    held by callers in `held_by` form, so main's call (the first certificate call of the path there, when they
    are tokens) is refused RESOURCE_EXHAUSTED at once, and decides nothing for main's calls once it is idle."""
    pki = Pki.create(tmp_path / "pki")
    policy = write_policy(tmp_path / "policy.json")
    busy = BlockingEcho()
    backend_items = pki.tls_items("echo", policy, **{"rpc-max-calls": "2"})
    backend = servers(0, [echo_descriptor(busy)], Folders(workspace=tmp_path / "backend"), backend_items)
    main = servers(
        0, [echo_descriptor(is_proxy=True)], Folders(workspace=tmp_path / "main"), pki.tls_items("main", policy)
    )
    main.client.srv.proxy_register(
        ProxyRegisterRequest(names=["echo"], version="1", host="127.0.0.1", port=backend.port)
    )
    holder = RpcClient("127.0.0.1", backend.port, STUBS, timeout=None, security=pki.security("app", held_by))
    held = [threading.Thread(target=refusal, args=(lambda: holder.echo.echo(EchoRequest()),)) for _ in range(2)]
    caller = RpcClient("127.0.0.1", main.port, STUBS, timeout=None, security=pki.security("app2", form))
    try:
        for thread in held:
            thread.start()
        assert wait_until(lambda: backend._workers.pending >= 2, WAIT)
        over = lambda: caller.echo.echo(EchoRequest(text="over"), timeout=WAIT)  # noqa: E731
        assert refused_as(grpc.StatusCode.RESOURCE_EXHAUSTED, over)
    finally:
        busy.release.set()
        for thread in held:
            thread.join(WAIT)
        holder.close()
    for other in FORMS:  # released, idle: answered at once
        with RpcClient("127.0.0.1", main.port, STUBS, timeout=WAIT, security=pki.security("app2", other)) as client:
            assert client.echo.echo(EchoRequest(text="idle")).text == "done"
    caller.close()


# --- defect 2: a route never lends main's rights ---


LIMIT = "hostile-limit"  # the backend's user config item


@dataclass
class Routed:
    """main, and behind it a backend serving echo and events, proxying notes, with a user config item (`LIMIT`)
    and a policy of its own where the operator is only a user (chief is admin on both)."""

    main: RpcServer
    backend: RpcServer
    pki: Pki

    def client(self, name: str, form: str, *, route: str = "echo", direct: bool = False) -> RpcClient:
        port = self.backend.port if direct else self.main.port
        metadata = RpcMetadata(client=f"hostile-{name}", route_service="" if direct else route)
        return RpcClient("127.0.0.1", port, STUBS, timeout=WAIT, name=metadata, security=self.pki.security(name, form))

    def limit(self) -> str:
        """The backend's `LIMIT`, as it tells it."""
        with self.client("chief", "token", direct=True) as chief:
            return str(chief.config.get(Filter(names=[LIMIT])).items[0].value)

    def raw(self, client: RpcClient, stub: type[Any], method: str, request: Any, **metadata: str) -> Any:
        """`method` called on `client`'s channel with its own metadata plus `metadata` (as a forger would)."""
        md = [*client.metadata.as_metadata(), *client.security.metadata(), *metadata.items()]
        return getattr(stub(client.channel), method)(request, metadata=md, timeout=WAIT)


@pytest.fixture
def routed(servers: Servers, tmp_path: Path) -> Routed:
    pki = Pki.create(tmp_path / "pki")
    main_policy = write_policy(tmp_path / "main-policy.json")
    backend_policy = write_policy(tmp_path / "backend-policy.json", operator={"role": "user"})
    backend = servers(
        0,
        [echo_descriptor(EchoManager()), notes.descriptor(proxy=True)],
        Folders(workspace=tmp_path / "backend"),
        pki.tls_items("echo", backend_policy),
        user_items=[Config(LIMIT, "A user item of the backend", "5")],
        with_events=True,
    )
    main = servers(
        0,
        [echo_descriptor(is_proxy=True)],
        Folders(workspace=tmp_path / "main"),
        pki.tls_items("main", main_policy),
        with_events=True,
    )
    registration = ProxyRegisterRequest(names=["echo"], version="1", host="127.0.0.1", port=backend.port)
    main.client.srv.proxy_register(registration)
    return Routed(main, backend, pki)


@pytest.mark.parametrize("form", FORMS)
class TestRoutedCallsKeepTheirCaller:
    def test_another_callers_queue_cant_be_hijacked_through_main(self, routed: Routed, form: str) -> None:
        owner, other = routed.client("app", form), routed.client("app2", form)
        stream = owner.events.listen(EventFilter(names=["E"]))
        client_id = next(stream).client_id
        try:
            assert client_id in owner.events.inspect(Empty()).client_ids  # created on the backend, as app's
            assert client_id not in other.events.inspect(Empty()).client_ids
            assert denied(lambda: other.events.interrupt(EventInterrupt(client_id=client_id)))
            assert denied(lambda: next(other.events.listen(EventFilter(client_id=client_id))))
            # Directly to the backend, the same answers
            direct = routed.client("app2", form, direct=True)
            assert denied(lambda: direct.events.interrupt(EventInterrupt(client_id=client_id)))
            owner.events.interrupt(EventInterrupt(client_id=client_id))  # its owner may
        finally:
            stream.cancel()

    def test_routed_registrations_belong_to_the_caller(self, routed: Routed, form: str) -> None:
        request = ProxyRegisterRequest(names=["notes"], version="1", host="127.0.0.1", port=1234)
        routed.client("svc", form).srv.proxy_register(request)
        assert routed.backend.proxies.target("notes").registrant == "svc"  # not main
        other = routed.client("svc2", form)
        assert denied(lambda: other.srv.proxy_forget(Filter(names=["notes"])))
        hijack = ProxyRegisterRequest(names=["notes"], version="1", host="127.0.0.1", port=6666)
        assert denied(lambda: other.srv.proxy_register(hijack))
        assert denied(lambda: routed.client("operator", form).srv.proxy_register(hijack))  # admin on main only
        assert routed.backend.proxies.target("notes").port == 1234
        assert denied(lambda: routed.client("app", form).srv.proxy_register(request))  # a user: refused by main

    def test_the_backends_policy_applies_to_routed_callers(self, routed: Routed, form: str) -> None:
        """The operator is admin on main, a user on the backend: routed, it may change nothing there."""
        operator = routed.client("operator", form)
        level = LoggerUpdate(items=[LoggerConfig(name="hostile.routed", enabled=True, level=LoggerLevel.LVL_DEBUG)])
        assert denied(lambda: operator.log.set(level))
        assert denied(lambda: operator.config.set(ConfigUpdate(items=[])))
        assert denied(lambda: operator.srv.shutdown(ShutdownRequest(timeout=-1)))
        assert operator.log.get(Filter(names=["root"])).items  # what a user may do, it may
        assert routed.backend.is_running
        with routed.client("operator", form, route="") as on_main:  # and on main, it is admin
            on_main.log.set(level)

    def test_routed_config_and_log_changes_by_every_role(self, routed: Routed, form: str) -> None:
        """Routed, each role is what the backend's policy says: only an admin there changes its levels and items
        (the operator, admin on main, is a user there; a user or a service is refused by main already)."""
        for name, admin_there in (("app", False), ("svc", False), ("operator", False), ("chief", True)):
            client = routed.client(name, form)
            logger = f"hostile.{name}.{form}"
            level = LoggerUpdate(items=[LoggerConfig(name=logger, enabled=True, level=LoggerLevel.LVL_DEBUG)])
            item = ConfigUpdate(items=[ConfigItemUpdate(name=LIMIT, value="7")])
            if admin_there:
                client.log.set(level)
                assert client.log.get(Filter(names=[logger])).items[0].level == LoggerLevel.LVL_DEBUG
                client.config.set(item)
                assert routed.limit() == "7"
                client.config.reset(Filter(names=[LIMIT]))
                assert routed.limit() == "5"
            else:
                assert denied(lambda: client.log.set(level)), name  # noqa: B023
                assert denied(lambda: client.log.reset(Filter(names=[logger]))), name  # noqa: B023
                assert denied(lambda: client.config.set(item)), name  # noqa: B023
                assert denied(lambda: client.config.reset(Filter(names=[LIMIT]))), name  # noqa: B023
                assert routed.limit() == "5"

    def test_mains_merged_config_changes_are_the_callers(self, routed: Routed, form: str) -> None:
        """main's own config service sets and resets its backends' items too, unrouted: on each backend as the
        caller, under that backend's policy, never with main's rights there."""
        item = ConfigUpdate(items=[ConfigItemUpdate(name=LIMIT, value="7")])
        for name in ("app", "svc", "operator"):  # refused by main (a user, a service) or by the backend
            on_main = routed.client(name, form, route="")
            assert denied(lambda: on_main.config.set(item)), name  # noqa: B023
            assert denied(lambda: on_main.config.reset(Filter(names=[LIMIT]))), name  # noqa: B023
            assert routed.limit() == "5"
        operator = routed.client("operator", form, route="")
        assert [i.value for i in operator.config.get(Filter(names=[LIMIT])).items] == ["5"]  # a user may read it
        chief = routed.client("chief", form, route="")
        chief.config.set(item)
        assert routed.limit() == "7"
        chief.config.reset(Filter(names=[LIMIT]))
        assert routed.limit() == "5"

    def test_a_forged_caller_is_refused_or_replaced(self, routed: Routed, form: str) -> None:
        operator = routed.client("operator", form)
        stream = operator.events.listen(EventFilter(names=["E"]))
        client_id = next(stream).client_id
        try:
            # Straight to the backend, naming another caller: refused, whoever asks
            direct = routed.client("app", form, direct=True)
            assert denied(lambda: routed.raw(direct, EventServiceStub, "inspect", Empty(), **{KEY_CALLER: "operator"}))
            # Through main too: only a forwarder may name a caller
            app = routed.client("app", form)
            assert denied(lambda: routed.raw(app, EventServiceStub, "inspect", Empty(), **{KEY_CALLER: "operator"}))
            assert client_id not in app.events.inspect(Empty()).client_ids
        finally:
            stream.cancel()


@pytest.mark.parametrize("form", FORMS)
def test_mains_own_token_never_leaves_it(servers: Servers, tmp_path: Path, form: str) -> None:
    """Main's auto-client calls main as `self`, an admin, with a token only main knows. In direct mode
    (`rpc-client-direct`) it calls a proxied service's replicas itself: as main, the way main forwards calls (its
    certificate, or in token form its `rpc-auth-token-file` token), never with that token (a replica given it
    could call main as its admin)."""
    pki = Pki.create(tmp_path / "pki")
    policy = write_policy(tmp_path / "policy.json")
    replica = TokenRecorder()
    backend = servers(
        0, [echo_descriptor(replica)], Folders(workspace=tmp_path / "backend"), pki.tls_items("echo", policy)
    )
    items = {"rpc-client-direct": "true"}
    if form == "token":
        items["rpc-auth-token-file"] = write_token(tmp_path / "main.token", token_of("main"))
    main = servers(
        0,
        [echo_descriptor(is_proxy=True)],
        Folders(workspace=tmp_path / "main"),
        pki.tls_items("main", policy, **items),
    )
    main.client.srv.proxy_register(
        ProxyRegisterRequest(names=["echo"], version="1", host="127.0.0.1", port=backend.port)
    )
    main.client.refresh_routes()
    assert main.client.routes == {"echo": (("127.0.0.1", backend.port),)}
    assert main.client.echo.echo(EchoRequest(text="direct")).text == "direct"
    assert replica.callers == ["main"]
    assert replica.received == [None if form == "certificate" else f"Bearer {token_of('main')}"]
    assert main.authorizer is not None
    assert main.authorizer.own_token not in str(replica.received)
    stolen = replace(pki.security("stranger", "token"), token=main.authorizer.own_token)
    with RpcClient("127.0.0.1", main.port, STUBS, timeout=WAIT, security=stolen) as thief:  # what it would give
        thief.log.set(
            LoggerUpdate(items=[LoggerConfig(name="hostile.thief", enabled=True, level=LoggerLevel.LVL_DEBUG)])
        )


# --- defect 5: service names belong to identities ---


@pytest.mark.parametrize("form", FORMS)
class TestServiceNames:
    def test_a_name_is_registered_by_its_grantees_only(self, stack: SecureStack, form: str) -> None:
        def register(name: str, who: str) -> Any:
            request = ProxyRegisterRequest(names=[name], version="1", host="127.0.0.1", port=1)
            return stack.client(who, form).srv.proxy_register(request)

        for who, name in (("svc2", "echo"), ("svc2", "notes"), ("svc", "echo"), ("echo", "notes")):
            assert denied(lambda: register(name, who)), (who, name)  # noqa: B023
        register("notes", "svc")
        svc = stack.client("svc", form)
        svc.srv.proxy_forget(Filter(names=["notes"]))  # a graceful forget: nobody registers it now...
        assert denied(lambda: register("notes", "svc2"))  # ... but it is still svc's to register
        assert denied(lambda: register("notes", "echo"))
        register("notes", "svc")
        svc.srv.proxy_forget(Filter(names=["notes"]))
        # The real echo is still the one registered, and answering
        assert stack.client("app", form).echo.echo(EchoRequest(text="still echo")).text == "still echo"

    def test_a_rogue_registration_before_the_owner_starts_or_after_it_stopped_is_refused(
        self, tmp_path: Path, form: str
    ) -> None:
        stack = SecureStack(tmp_path)
        try:
            request = ProxyRegisterRequest(names=["echo"], version="1", host="127.0.0.1", port=1)
            assert denied(lambda: stack.client("svc2", form).srv.proxy_register(request))
            echo = stack.start_echo()
            stack.wait_echo_registered()  # the real one registers, and serves
            assert echo.proc.poll() is None
            # Its graceful shutdown forgets its registration: the name stays echo's
            assert echo.stop() == 0
            assert not stack.client("operator", form).srv.info(Filter(names=["echo"])).items[0].endpoints
            assert denied(lambda: stack.client("svc2", form).srv.proxy_register(request))
            assert denied(lambda: stack.client("svc", form).srv.proxy_register(request))
            stack.start_echo()
            stack.wait_echo_registered()
        finally:
            stack.close()


# --- defect 8: the policy reloads without a restart ---


def rewrite(path: Path, text: str) -> None:
    """Replace `path` with `text` atomically, as an operator's tooling would."""
    temp = path.with_suffix(".tmp")
    temp.write_text(text)
    temp.replace(path)


@pytest.mark.parametrize("form", FORMS)
class TestPolicyReload:
    @pytest.fixture
    def guarded(self, servers: Servers, tmp_path: Path) -> tuple[RpcServer, Pki, Path]:
        pki = Pki.create(tmp_path / "pki")
        policy = write_policy(tmp_path / "policy.json")
        srv = servers(0, [echo_descriptor()], Folders(workspace=tmp_path / "wks"), pki.tls_items("main", policy))
        return srv, pki, policy

    @staticmethod
    def answered(srv: RpcServer, pki: Pki, name: str, form: str) -> grpc.StatusCode | None:
        with RpcClient("127.0.0.1", srv.port, STUBS, timeout=None, security=pki.security(name, form)) as client:
            code = refusal(lambda: client.log.get(Filter(names=["root"]), timeout=WAIT))
            return code if code is None else grpc.StatusCode(code)

    def test_a_removed_identity_loses_its_rights(self, guarded: tuple[RpcServer, Pki, Path], form: str) -> None:
        srv, pki, policy = guarded
        assert self.answered(srv, pki, "app", form) is None
        data = json.loads(policy.read_text())
        del data["identities"]["app"]
        rewrite(policy, json.dumps(data))
        assert wait_until(lambda: self.answered(srv, pki, "app", form) == grpc.StatusCode.UNAUTHENTICATED, WAIT)
        assert self.answered(srv, pki, "app2", form) is None  # the others keep theirs

    def test_a_new_identity_is_let_in(self, guarded: tuple[RpcServer, Pki, Path], form: str) -> None:
        srv, pki, policy = guarded
        assert self.answered(srv, pki, "newcomer", form) == grpc.StatusCode.UNAUTHENTICATED
        data = json.loads(policy.read_text())
        newcomer = {"role": "admin", "certificate": "newcomer", "token_sha256": token_hash(token_of("newcomer"))}
        data["identities"]["newcomer"] = newcomer
        rewrite(policy, json.dumps(data))
        assert wait_until(lambda: self.answered(srv, pki, "newcomer", form) is None, WAIT)

    def test_a_malformed_policy_keeps_the_previous_one(
        self, guarded: tuple[RpcServer, Pki, Path], form: str, caplog: pytest.LogCaptureFixture
    ) -> None:
        srv, pki, policy = guarded
        with caplog.at_level(logging.WARNING):
            rewrite(policy, '{"identities": {"app": {"role": "emperor"')  # truncated, and no such role

            def told() -> bool:
                return any("Keeping the previous authorization policy" in r.getMessage() for r in caplog.records)

            assert wait_until(told, WAIT)
            errors = [r for r in caplog.records if r.levelno == logging.ERROR]
            assert errors
            assert str(policy) in errors[0].getMessage()
            assert self.answered(srv, pki, "app", form) is None  # still the previous policy
            rewrite(policy, json.dumps({"identities": {"app": {"role": "emperor", "certificate": "app"}}}))
            assert wait_until(lambda: len([r for r in caplog.records if r.levelno == logging.ERROR]) == 2, WAIT)
            assert "a role among user, service, admin is needed" in caplog.records[-1].getMessage()
            assert self.answered(srv, pki, "app", form) is None


@pytest.mark.parametrize("mode", [0o666, 0o620, 0o600, 0o644])
def test_a_policy_writable_by_others_is_warned_of(
    servers: Servers, tmp_path: Path, caplog: pytest.LogCaptureFixture, mode: int
) -> None:
    """The policy is re-read when it changes: whoever may write it may make themselves admin. A server warns
    when its group or others may (its path and mode, nothing of its content)."""
    policy = write_policy(tmp_path / "policy.json")
    policy.chmod(mode)
    with caplog.at_level(logging.WARNING):
        servers(0, [echo_descriptor()], Folders(workspace=tmp_path / "wks"), {"rpc-auth-policy": str(policy)})
    warnings = [r.getMessage() for r in caplog.records if "writable by others" in r.getMessage()]
    if mode & 0o022:
        assert len(warnings) == 1, warnings
        assert f"{policy} is writable by others (mode {mode:o})" in warnings[0]
    else:
        assert warnings == []


@pytest.mark.parametrize("form", FORMS)
def test_a_merged_config_change_refused_somewhere_changes_nothing(servers: Servers, tmp_path: Path, form: str) -> None:
    """main and two replicas of echo all hold `LIMIT`; the operator is admin on main and on the first replica, a
    user on the second, which refuses its change. A merged `set` or `reset` through main then changes nothing anywhere
    (it once left main's own value changed): main puts back what it had changed before the refusal."""
    pki = Pki.create(tmp_path / "pki")
    policy = write_policy(tmp_path / "policy.json")
    strict = write_policy(tmp_path / "strict-policy.json", operator={"role": "user"})
    limit = [Config(LIMIT, "A user item of every server here", "5")]
    backends = [
        servers(0, [echo_descriptor(EchoManager())], Folders(workspace=tmp_path / name), items, user_items=limit)
        for name, items in (("lenient", pki.tls_items("echo", policy)), ("strict", pki.tls_items("echo", strict)))
    ]
    main_items = pki.tls_items("main", policy)
    main = servers(
        0,
        [echo_descriptor(is_proxy=True)],
        Folders(workspace=tmp_path / "main"),
        main_items,
        user_items=limit,
    )
    for backend in backends:
        main.client.srv.proxy_register(
            ProxyRegisterRequest(names=["echo"], version="1", host="127.0.0.1", port=backend.port)
        )

    def values() -> list[str]:
        return [srv.config.get_user([LIMIT])[0].value for srv in (main, *backends)]

    operator = RpcClient("127.0.0.1", main.port, STUBS, timeout=WAIT, security=pki.security("operator", form))
    chief = RpcClient("127.0.0.1", main.port, STUBS, timeout=WAIT, security=pki.security("chief", form))
    with operator, chief:
        assert denied(lambda: operator.config.set(ConfigUpdate(items=[ConfigItemUpdate(name=LIMIT, value="7")])))
        assert values() == ["5", "5", "5"]
        chief.config.set(ConfigUpdate(items=[ConfigItemUpdate(name=LIMIT, value="9")]))  # admin everywhere
        assert values() == ["9", "9", "9"]
        assert denied(lambda: operator.config.reset(Filter(names=[LIMIT])))
        assert values() == ["9", "9", "9"]
