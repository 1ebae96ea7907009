"""Proxy behaviours of grpc-helper 2.x (issue 9, items 19 to 25), on real servers."""

from __future__ import annotations

import itertools
import json
import logging
import socket
import threading
import time
from collections.abc import Iterator

import grpc
import pytest

import grpc_helper_samples
from grpc_helper import Config, RpcManager, RpcServer, RpcServiceDescriptor, RpcStaticConfig, current_call
from grpc_helper.api import ConfigValidator, Endpoint, Filter, ProxyRegisterRequest, ResultCode
from grpc_helper.testing import rc_of
from grpc_helper_samples.api import EchoRequest, EchoResponse, NotesApiVersion
from grpc_helper_samples.api.echo_pb2_grpc import EchoServiceStub
from grpc_helper_samples.api.notes_pb2_grpc import (
    NotesServiceServicer,
    NotesServiceStub,
    add_NotesServiceServicer_to_server,
)

from helpers import BlockingEcho, EchoManager, Servers, connections_to, echo_descriptor, wait_until, with_metadata

MAIN_HOST = {"rpc-main-host": "127.0.0.1"}


def notes_descriptor(is_proxy: bool = True, name: str = "notes") -> RpcServiceDescriptor:
    return RpcServiceDescriptor(
        grpc_helper_samples, name, NotesApiVersion, NotesServiceServicer(), add_NotesServiceServicer_to_server,
        NotesServiceStub, is_proxy,
    )  # fmt: skip


def register(
    main: RpcServer, port: int, names: list[str] | None = None, version: str = "b-1.0", host: str = ""
) -> None:
    main.client.srv.proxy_register(ProxyRegisterRequest(names=names or ["echo"], version=version, host=host, port=port))


def raw_echo(port: int) -> tuple[grpc.Channel, EchoServiceStub]:
    """A 2.x client's calls without its retries or Result checks: a plain gRPC stub sending the `user` key,
    as 2.x's client does (main answers such callers in 2.x's shape); shows exactly what the proxy answers."""
    channel = with_metadata(grpc.insecure_channel(f"127.0.0.1:{port}"), (("user", "compat-2x"),))
    return channel, EchoServiceStub(channel)


def info(main: RpcServer, name: str = "echo"):
    return main.client.srv.info(Filter(names=[name])).items[0]


@pytest.fixture
def silent_port() -> Iterator[int]:
    """A port that accepts TCP connections and never says a word: gRPC can't establish a connection."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(16)  # never accepted: the kernel completes handshakes, nobody speaks HTTP/2
        yield sock.getsockname()[1]


class Spy(EchoManager):
    """Echo manager recording each `echo` call's metadata."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[dict[str, str]] = []

    def echo(self, request: EchoRequest) -> EchoResponse:
        call = current_call()
        assert call is not None
        self.calls.append(dict(call.metadata))
        return super().echo(request)


# --- 19: check order ---


def test_register_and_forget_check_names_before_anything_else(servers: Servers) -> None:
    main = servers(0, [echo_descriptor(is_proxy=True), notes_descriptor(is_proxy=False, name="local")])
    srv = main.client.srv

    def reg(names: list[str], version: str = "", port: int = 0) -> int:
        return rc_of(lambda: srv.proxy_register(ProxyRegisterRequest(names=names, version=version, port=port)))

    # Every request below also lacks version and port: the name checks come first
    assert reg([]) == ResultCode.ERROR_PARAM_MISSING
    assert reg(["echo", ""]) == ResultCode.ERROR_PARAM_MISSING
    assert reg(["", "nope"]) == ResultCode.ERROR_PARAM_MISSING  # empty before unknown
    assert reg(["nope"]) == ResultCode.ERROR_ITEM_UNKNOWN
    assert reg(["local", "nope"]) == ResultCode.ERROR_ITEM_UNKNOWN  # unknown before not proxied
    assert reg(["local"]) == ResultCode.ERROR_PARAM_INVALID
    assert reg(["echo", "srv"]) == ResultCode.ERROR_PARAM_INVALID
    # Only then the version and the port
    assert reg(["echo"], port=1234) == ResultCode.ERROR_PARAM_MISSING
    assert reg(["echo"], version="v") == ResultCode.ERROR_PARAM_MISSING
    assert not main.proxies.is_registered("echo")

    def forget(names: list[str]) -> int:
        return rc_of(lambda: srv.proxy_forget(Filter(names=names)))

    assert forget([]) == ResultCode.ERROR_PARAM_MISSING
    assert forget(["", "nope"]) == ResultCode.ERROR_PARAM_MISSING
    assert forget(["local", "nope"]) == ResultCode.ERROR_ITEM_UNKNOWN
    assert forget(["echo", "local"]) == ResultCode.ERROR_PARAM_INVALID


# --- 20: empty host ---


def test_empty_host_is_kept_as_given_and_forwards_to_main_host(servers: Servers, folders) -> None:
    main = servers(0, [echo_descriptor(is_proxy=True)], folders=folders, cli_config=MAIN_HOST)
    backend = servers(0, [echo_descriptor()])
    register(main, backend.port, host="")
    item = info(main)
    assert (item.proxy_host, item.proxy_port) == ("", backend.port)
    saved = json.loads((folders.workspace / "proxy.json").read_text())
    assert saved == {"echo": {"host": "", "port": backend.port, "version": "b-1.0"}}
    channel, stub = raw_echo(main.port)
    with channel:
        assert stub.echo(EchoRequest(text="empty host"), timeout=10).text == "empty host"


def test_restored_empty_host_serves_calls_and_merged_config(servers: Servers, folders) -> None:
    item = Config("backend-item", default_value="7", validator=ConfigValidator.CONFIG_VALID_INT)
    backend = servers(0, [echo_descriptor()], user_items=[item])
    # As the original's proxied managers leave it: registered with an empty host
    folders.workspace.mkdir(parents=True, exist_ok=True)
    (folders.workspace / "proxy.json").write_text(
        json.dumps({"echo": {"host": "", "port": backend.port, "version": "orig-2.3"}})
    )
    main = servers(0, [echo_descriptor(is_proxy=True)], folders=folders, cli_config=MAIN_HOST)
    restored = info(main)
    assert (restored.version, restored.proxy_host, restored.proxy_port) == ("orig-2.3", "", backend.port)
    channel, stub = raw_echo(main.port)
    with channel:
        assert stub.echo(EchoRequest(text="restored"), timeout=10).text == "restored"
    assert [(i.name, i.value) for i in main.client.config.get(Filter(names=["backend-item"])).items] == [
        ("backend-item", "7")
    ]


# --- 21: versions in srv.info ---


def test_info_version_before_register_and_after_forget(servers: Servers, folders) -> None:
    main = servers(0, [echo_descriptor(is_proxy=True)], folders=folders)
    descriptor_version = f"{grpc_helper_samples.__title__}:{grpc_helper_samples.__version__}"
    before = info(main)
    assert (before.version, before.proxy_host, before.proxy_port) == (descriptor_version, "", 0)
    register(main, 1111, version="v1", host="127.0.0.1")
    register(main, 2222, version="v2", host="127.0.0.1")
    registered = info(main)
    assert (registered.version, registered.proxy_host, registered.proxy_port) == ("v2", "127.0.0.1", 2222)
    main.client.srv.proxy_forget(Filter(names=["echo"]))
    forgotten = info(main)
    assert (forgotten.version, forgotten.proxy_host, forgotten.proxy_port) == ("v2", "", 0)
    assert json.loads((folders.workspace / "proxy.json").read_text()) == {}


# --- 22: a backend that does not answer; re-registration ---


def test_silent_backend_gives_an_error_answer_after_client_timeout(servers: Servers, silent_port: int) -> None:
    main = servers(0, [echo_descriptor(is_proxy=True)])
    register(main, silent_port, host="127.0.0.1")
    RpcStaticConfig.CLIENT_TIMEOUT.update("1")
    channel, stub = raw_echo(main.port)
    with channel:
        t0 = time.monotonic()
        response = stub.echo(EchoRequest(text="anyone?"), timeout=30)  # gRPC OK: no RpcError
        elapsed = time.monotonic() - t0
        assert response.r.code == ResultCode.ERROR_RPC
        assert f"127.0.0.1:{silent_port}" in response.r.msg
        assert 1.0 <= elapsed < 5
        # Streams: the error is the one and only message
        t0 = time.monotonic()
        messages = list(stub.repeat(EchoRequest(count=3), timeout=30))
        assert [m.r.code for m in messages] == [ResultCode.ERROR_RPC]
        assert time.monotonic() - t0 < 5
        # The caller's own deadline, when shorter, bounds the wait as well: the caller sees it expire,
        # or the proxy's error answer if that arrives first (both sides count the same second)
        RpcStaticConfig.CLIENT_TIMEOUT.update("60")
        t0 = time.monotonic()
        try:
            outcome: object = stub.echo(EchoRequest(), timeout=1).r.code
        except grpc.RpcError as exc:
            outcome = exc.code()
        assert outcome in (ResultCode.ERROR_RPC, grpc.StatusCode.DEADLINE_EXCEEDED)
        assert time.monotonic() - t0 < 5


def test_refused_backend_gives_an_error_answer_after_client_timeout(servers: Servers, refused_port: int) -> None:
    main = servers(0, [echo_descriptor(is_proxy=True)])
    register(main, refused_port, host="127.0.0.1")
    RpcStaticConfig.CLIENT_TIMEOUT.update("1")
    channel, stub = raw_echo(main.port)
    with channel:
        t0 = time.monotonic()
        assert stub.echo(EchoRequest(), timeout=30).r.code == ResultCode.ERROR_RPC
        assert 1.0 <= time.monotonic() - t0 < 5


def test_waiting_call_goes_to_the_new_registration(servers: Servers, refused_port: int) -> None:
    main = servers(0, [echo_descriptor(is_proxy=True)])
    register(main, refused_port, host="127.0.0.1")  # nobody there
    RpcStaticConfig.CLIENT_TIMEOUT.update("30")
    spy = Spy()
    backend = servers(0, [echo_descriptor(spy)])
    channel, stub = raw_echo(main.port)
    answers: list[EchoResponse] = []
    with channel:
        caller = threading.Thread(target=lambda: answers.append(stub.echo(EchoRequest(text="late"), timeout=30)))
        caller.start()
        caller.join(0.5)
        assert caller.is_alive(), "the call waits for its backend"
        register(main, backend.port, host="127.0.0.1")
        caller.join(10)
    assert [(a.r.code, a.text) for a in answers] == [(ResultCode.OK, "late")]
    assert len(spy.calls) == 1


def test_reregistration_does_not_disturb_a_call_in_progress(servers: Servers) -> None:
    main = servers(0, [echo_descriptor(is_proxy=True)])
    slow = BlockingEcho()
    old = servers(0, [echo_descriptor(slow)])
    spy = Spy()
    new = servers(0, [echo_descriptor(spy)])
    register(main, old.port, host="127.0.0.1")
    channel, stub = raw_echo(main.port)
    answers: list[EchoResponse] = []
    with channel:
        caller = threading.Thread(target=lambda: answers.append(stub.echo(EchoRequest(), timeout=30)))
        caller.start()
        assert slow.started.wait(10)
        register(main, new.port, host="127.0.0.1")  # a second endpoint: the service's channel changes
        # the old backend goes away (its own forget): none of its channels is registered any more
        main.client.srv.proxy_forget(Filter(names=["echo"], endpoint=Endpoint(host="127.0.0.1", port=old.port)))
        slow.release.set()
        caller.join(10)
        assert [(a.r.code, a.text) for a in answers] == [(ResultCode.OK, "done")]
        assert spy.calls == []  # never sent again to the new backend
        # the old channel was closed with its last call; new calls go to the new backend
        assert stub.echo(EchoRequest(text="new"), timeout=10).text == "new"
    assert len(spy.calls) == 1
    # main keeps one connection, to the new backend; the old one's was closed after its last call
    assert wait_until(lambda: connections_to(old.port) == 0)
    assert connections_to(new.port) == 1


def test_call_lost_with_its_backend_is_not_resent(servers: Servers) -> None:
    main = servers(0, [echo_descriptor(is_proxy=True)])
    slow = BlockingEcho()
    old = servers(0, [echo_descriptor(slow)])
    spy = Spy()
    new = servers(0, [echo_descriptor(spy)])
    register(main, old.port, host="127.0.0.1")
    channel, stub = raw_echo(main.port)
    answers: list[EchoResponse] = []
    with channel:
        caller = threading.Thread(target=lambda: answers.append(stub.echo(EchoRequest(), timeout=30)))
        caller.start()
        assert slow.started.wait(10)
        register(main, new.port, host="127.0.0.1")
        RpcStaticConfig.SHUTDOWN_GRACE.update("0.2")
        old.shutdown()  # the backend received the request, then went away without answering
        slow.release.set()
        caller.join(10)
    assert [a.r.code for a in answers] == [ResultCode.ERROR_RPC]
    assert spy.calls == []


# --- 23: forwarded metadata ---


class _Versions:
    """An API version enum stand-in: supported 1, current 3 (one more than the samples' echo)."""

    @staticmethod
    def values() -> list[int]:
        return [0, 1, 3]


def test_forwarded_metadata_marks_client_and_fills_api_version(servers: Servers) -> None:
    spy = Spy()
    main = servers(0, [echo_descriptor(is_proxy=True)])
    backend = servers(0, [echo_descriptor(spy)])
    register(main, backend.port, host="127.0.0.1")
    channel, stub = raw_echo(main.port)  # a 2.x client sending `user` only
    with channel, grpc.insecure_channel(f"127.0.0.1:{main.port}") as bare:
        stub.echo(EchoRequest(), timeout=10, metadata=(("client", "c1"), ("user", "u1"), ("api_version", "1")))
        stub.echo(EchoRequest(), timeout=10)
        EchoServiceStub(bare).echo(EchoRequest(), timeout=10)  # not a grpc-helper client: no metadata at all
    named, anonymous, plain = spy.calls
    assert (named["client"], named["user"], named["api_version"]) == ("c1(proxied)", "u1", "1")
    assert (anonymous["client"], anonymous["api_version"]) == ("(proxied)", "2")  # the proxy's current version
    # New in 3: a caller that is not a grpc-helper client has no API version, and stays one reading gRPC
    # statuses for a main behind this one
    assert "client" not in plain
    assert "api_version" not in plain


def test_backend_checks_the_version_the_proxy_fills_in(servers: Servers) -> None:
    proxied = echo_descriptor(is_proxy=True)
    proxied.api_version = _Versions  # type: ignore[assignment]
    main = servers(0, [proxied])
    backend = servers(0, [echo_descriptor()])  # current version 2
    register(main, backend.port, host="127.0.0.1")
    channel, stub = raw_echo(main.port)
    with channel:
        assert stub.echo(EchoRequest(), timeout=10).r.code == ResultCode.ERROR_API_SERVER_TOO_OLD
        assert stub.echo(EchoRequest(), timeout=10, metadata=(("api_version", "2"),)).r.code == ResultCode.OK


# --- 24: waiting for a registration is logged ---


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


def test_waiting_for_a_registration_is_logged_every_half_second(servers: Servers) -> None:
    main = servers(0, [echo_descriptor(is_proxy=True)])
    records = _Records()
    main.logger.addHandler(records)
    main.logger.setLevel(logging.DEBUG)
    RpcStaticConfig.CLIENT_TIMEOUT.update("1.6")
    try:
        channel, stub = raw_echo(main.port)
        with channel:
            t0 = time.monotonic()
            assert stub.echo(EchoRequest(), timeout=30).r.code == ResultCode.ERROR_PROXY_UNREGISTERED
            waited = time.monotonic() - t0
    finally:
        main.logger.removeHandler(records)
    lines = [r for r in records.records if r.getMessage() == "Proxy not registered yet for method echo: wait a bit..."]
    assert all(r.levelno == logging.DEBUG for r in lines)
    assert len(lines) >= int(waited / 0.5)
    gaps = [b.created - a.created for a, b in itertools.pairwise(lines)]
    assert gaps
    assert max(gaps) < 0.5 + 0.2  # scheduling slack


# --- 25: RpcManager._proxied_servers ---


def test_proxied_servers_property(servers: Servers) -> None:
    assert RpcManager()._proxied_servers == set()  # not attached
    main = servers(0, [echo_descriptor(is_proxy=True), notes_descriptor()], cli_config=MAIN_HOST)
    manager = main.managers["srv"]
    assert manager._proxied_servers == set()
    register(main, 1111, names=["echo"], host="")
    register(main, 1111, names=["notes"], host="127.0.0.1")  # the same server: empty host is rpc-main-host
    assert manager._proxied_servers == {("127.0.0.1", 1111)}
    register(main, 2222, names=["notes"], host="localhost")  # a second endpoint (replica) of notes
    assert manager._proxied_servers == {("127.0.0.1", 1111), ("localhost", 2222)}
    main.client.srv.proxy_forget(Filter(names=["notes"], endpoint=Endpoint(host="127.0.0.1", port=1111)))
    assert manager._proxied_servers == {("127.0.0.1", 1111), ("localhost", 2222)}  # echo is still there
    main.client.srv.proxy_forget(Filter(names=["echo"]))
    assert manager._proxied_servers == {("localhost", 2222)}
    with pytest.raises(AttributeError):
        manager._proxied_servers = set()  # read-only
