"""What several test modules share: sample managers and descriptors, event helpers, bounded waits, ports.

Servers, clients, folders and `rc_of` come from `grpc_helper.testing` (the public test helpers); the
fixtures built on them are in conftest.py. Test modules import this one as `helpers` (pytest puts
tests/ on sys.path), never conftest.
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import grpc

import grpc_helper_samples
from grpc_helper import EventsListener, Folders, RpcClient, RpcException, RpcManager, RpcServer, RpcServiceDescriptor
from grpc_helper.api import Event, EventFilter, EventProperty, ResultCode
from grpc_helper.testing import serve
from grpc_helper.tls import ClientSecurity
from grpc_helper_samples._run import PROXY_USE_CURRENT_HOST_ENV
from grpc_helper_samples.api import EchoApiVersion, EchoRequest, EchoResponse
from grpc_helper_samples.api.echo_pb2_grpc import (
    EchoServiceServicer,
    EchoServiceStub,
    add_EchoServiceServicer_to_server,
)

# --- echo managers and descriptors ---


class EchoManager(EchoServiceServicer, RpcManager):
    """Echo manager implementing all four call kinds; `text="fail:<rc>"` raises RpcException(rc)."""

    def __init__(self) -> None:
        super().__init__()
        self.loaded = False
        self.shut_down = False

    def _load(self) -> None:
        super()._load()
        self.loaded = True

    def _shutdown(self) -> None:
        self.shut_down = True
        super()._shutdown()

    def echo(self, request: EchoRequest) -> EchoResponse:
        if request.text.startswith("fail:"):
            raise RpcException("asked to fail", int(request.text.split(":", 1)[1]))
        if request.text == "crash":
            raise ValueError("unexpected crash")
        return EchoResponse(text=request.text, payload=request.payload)

    def repeat(self, request: EchoRequest) -> Iterable[EchoResponse]:
        for i in range(request.count):
            yield EchoResponse(text=request.text, index=i)
        if request.text == "crash":
            raise RpcException("stream failed", ResultCode.ERROR_ITEM_BUSY)

    def collect(self, request: Iterable[EchoRequest]) -> EchoResponse:
        texts = [r.text for r in request]
        return EchoResponse(text="".join(texts), index=len(texts))

    def chat(self, request: Iterable[EchoRequest]) -> Iterable[EchoResponse]:
        for i, r in enumerate(request):
            yield EchoResponse(text=r.text.upper(), index=i)


class BlockingEcho(EchoManager):
    """`echo` sets `started`, then blocks until `release` is set (30 s at most) and answers "done"."""

    def __init__(self) -> None:
        super().__init__()
        self.started, self.release = threading.Event(), threading.Event()

    def echo(self, _request: EchoRequest) -> EchoResponse:
        self.started.set()
        self.release.wait(30)
        return EchoResponse(text="done")


def echo_descriptor(manager: Any = None, is_proxy: bool = False, name: str = "echo") -> RpcServiceDescriptor:
    """The echo service: served by `manager` (a fresh `EchoManager` by default), or proxied with `is_proxy`."""
    if manager is None:
        manager = EchoServiceServicer() if is_proxy else EchoManager()
    return RpcServiceDescriptor(
        grpc_helper_samples, name, EchoApiVersion, manager, add_EchoServiceServicer_to_server, EchoServiceStub, is_proxy
    )


# --- servers ---


class Servers:
    """`servers(port, descriptors, ...)` starts an `RpcServer` (arguments as its constructor's, no SIGUSR2
    handler by default) with `grpc_helper.testing.serve`; the last started is shut down first, at teardown."""

    def __init__(self, stack: ExitStack) -> None:
        self._stack = stack

    def __call__(
        self,
        port: int,
        descriptors: Iterable[RpcServiceDescriptor] = (),
        folders: Folders | None = None,
        cli_config: Mapping[str, str] | None = None,
        static_items: Iterable[Any] | None = None,
        user_items: Iterable[Any] | None = None,
        with_events: bool = False,
        with_debug_signal: bool = False,
    ) -> RpcServer:
        served = serve(
            descriptors,
            port=port,
            folders=folders,
            cli_config=cli_config,
            static_items=static_items,
            user_items=user_items,
            with_events=with_events,
            with_debug_signal=with_debug_signal,
        )
        return self._stack.enter_context(served).server


# --- sample programs as processes ---

WAIT = 30  # bound for anything that waits on a process
LISTENING = re.compile(r"listening on port (\d+)")  # what a sample logs once its server listens


def clean_env() -> dict[str, str]:
    """The environment without anything that would act as a config layer, change registration or trace calls."""
    return {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("RPC_", "NOTES_", "OTEL_")) and k != PROXY_USE_CURRENT_HOST_ENV
    }


def _target(module: str) -> list[str]:
    return [module] if module.endswith(".py") else ["-m", module]


class Program:
    """A sample program run as a subprocess (`python -m grpc_helper_samples.<name>`) on port 0, stderr in a file.

    `wait_port()` waits until it reported the port it got (its log says "listening on port N").
    """

    def __init__(
        self,
        name: str,
        root: Path,
        *extra: str,
        module: str | None = None,
        wrap: Sequence[str] = (),
        env: Mapping[str, str] | None = None,
    ) -> None:
        """`module`: what to run (the sample `name` by default), a module or a script (`.py`); `wrap`: a command
        prefix (e.g. `ip netns exec NS` to run it on another host); `env`: added to its environment; its
        workspace is `root / name`."""
        self.name = name
        self.log = root / f"{name}-{time.monotonic_ns()}.log"
        cmd = [
            *wrap, sys.executable, *_target(module or f"grpc_helper_samples.{name}"), "-p", "0", "-w", str(root / name),
            "--system", str(root / "system"), "--user", str(root / "user"), *extra,
        ]  # fmt: skip
        with self.log.open("w") as log:
            environment = {**clean_env(), **(env or {})}
            self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=log, env=environment)
        self.port = 0

    def wait_port(self) -> int:
        """The port the program listens on, once it reported it (bounded wait); sets `port`."""

        def reported() -> bool:
            return LISTENING.search(self.output) is not None or self.proc.poll() is not None

        assert wait_until(reported, WAIT), f"{self.name}: no port reported within {WAIT}s:\n{self.output}"
        found = LISTENING.search(self.output)
        assert found, f"{self.name} ended (exit code {self.proc.poll()}) without listening:\n{self.output}"
        self.port = int(found.group(1))
        return self.port

    def terminate(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()

    def stop(self) -> int:
        """SIGTERM, then kill if it doesn't end in time; returns the exit code."""
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                return self.proc.wait(WAIT)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        return self.proc.wait()

    @property
    def output(self) -> str:
        return self.log.read_text()


# --- raw gRPC callers ---


class _AddMetadata(
    grpc.UnaryUnaryClientInterceptor,
    grpc.UnaryStreamClientInterceptor,
    grpc.StreamUnaryClientInterceptor,
    grpc.StreamStreamClientInterceptor,
):
    def __init__(self, metadata: tuple[tuple[str, str], ...]) -> None:
        self._metadata = metadata

    def _details(self, details: Any) -> Any:
        given = tuple(details.metadata or ())
        keys = {key for key, _ in given}
        return details._replace(metadata=(*given, *((k, v) for k, v in self._metadata if k not in keys)))

    def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        return continuation(self._details(details), request)

    def intercept_unary_stream(self, continuation: Any, details: Any, request: Any) -> Any:
        return continuation(self._details(details), request)

    def intercept_stream_unary(self, continuation: Any, details: Any, requests: Any) -> Any:
        return continuation(self._details(details), requests)

    def intercept_stream_stream(self, continuation: Any, details: Any, requests: Any) -> Any:
        return continuation(self._details(details), requests)


def with_metadata(channel: grpc.Channel, metadata: tuple[tuple[str, str], ...]) -> grpc.Channel:
    """`channel`, its calls sending `metadata` too, for keys a call does not give (closing it closes `channel`)."""
    return grpc.intercept_channel(channel, _AddMetadata(metadata))


# --- waiting ---


def start_echo(
    main_port: int, workspace: Path, stderr: int = subprocess.DEVNULL, **items: str
) -> subprocess.Popen[str]:
    """The echo sample in a process of its own, registering on main at 127.0.0.1:`main_port`, with these
    extra static `items` (name: value); its `stderr` (e.g. `subprocess.PIPE`) discarded by default."""
    config = {"rpc-main-host": "127.0.0.1", "rpc-main-port": str(main_port), **items}
    args = ["-p", "0", "-w", str(workspace), *(a for k, v in config.items() for a in ("-c", f"{k}={v}"))]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    command = [sys.executable, "-m", "grpc_helper_samples.echo", *args]
    return subprocess.Popen(command, env=env, stderr=stderr, stdout=subprocess.DEVNULL, text=True)


def operator_security(creds: Mapping[str, str]) -> ClientSecurity:
    """The operator's credentials as `stack.sh env` exports them (its certificate, and its token besides)."""
    return ClientSecurity.from_files(
        creds["GRPC_HELPER_TLS_CA"],
        creds["GRPC_HELPER_TLS_CERT"],
        creds["GRPC_HELPER_TLS_KEY"],
        token_file=creds["GRPC_HELPER_TOKEN_FILE"],
    )


def wait_until(check: Callable[[], bool], timeout: float = 30) -> bool:
    """Poll `check` until it is true (True) or `timeout` seconds passed (its last value)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.02)
    return check()


# What a stack's Prometheus holds once 5 echo calls and 1 notes put went through main (the observability tests):
# a series from each service, main forwarding the calls and each backend serving its own
STACK_SERIES = [
    ('sum(grpc_server_call_started_total{job="main", grpc_method="EchoService/echo"})', 5),
    ('sum(grpc_helper_proxy_upstream_call_duration_seconds_count{job="main", proxied_service="echo"})', 5),
    ('grpc_helper_proxy_endpoints{job="main", proxied_service="echo"}', 1),
    ('sum(grpc_server_call_started_total{job="echo", grpc_method="EchoService/echo"})', 5),
    ('sum(grpc_server_call_started_total{job="notes", grpc_method="NotesService/put"})', 1),
]


def prometheus_value(url: str, promql: str) -> float | None:
    """The value of an instant query `promql` on the Prometheus at `url` (its HTTP API): the first series', None
    when there is none or Prometheus does not answer (yet)."""
    query = f"{url}/api/v1/query?" + urllib.parse.urlencode({"query": promql})
    try:
        with urllib.request.urlopen(query, timeout=5) as answer:
            data = json.loads(answer.read())
    except (urllib.error.URLError, ConnectionError):  # still starting
        return None
    assert data["status"] == "success", data
    result = data["data"]["result"]
    return float(result[0]["value"][1]) if result else None


# --- ports ---


@contextmanager
def refusing_port() -> Iterator[int]:
    """A port that refuses connections for the duration of the `with` block, and that nobody else gets.

    A socket is bound to it (so no port-0 bind, here or in another process, can be given it) but
    never listens: connections are refused. SO_REUSEADDR lets a server the test starts on it
    later bind it too (a bound, non-listening socket does not conflict then); from then on, that
    server gets the connections.
    """
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("0.0.0.0", 0))
        yield sock.getsockname()[1]


def accepts_connections(port: int) -> bool:
    """Whether something listens on 127.0.0.1:`port` (a server stops listening as its shutdown begins)."""
    with socket.socket() as sock:
        sock.settimeout(5)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def connections_to(port: int) -> int:
    """How many established TCP connections go to `port` on this host (their client ends, in /proc/net/tcp{,6}):
    what a server sees of the channels open to it."""
    count = 0
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table) as lines:
            next(lines)  # header
            for line in lines:
                fields = line.split()  # sl, local address, remote address (hex ip:port), state (01: established)...
                if fields[3] == "01" and int(fields[2].rsplit(":", 1)[1], 16) == port:
                    count += 1
    return count


def silent_chat(client: RpcClient, seconds: float = 12) -> list[str]:
    """The texts answered on `client.echo.chat` to "first", then, after `seconds` of silence (nothing sent
    either way but pings), "last": an echo that upper-cases answers ["FIRST", "LAST"] if the call survived."""
    silence = threading.Event()  # never set: waiting on it is the silence, bounded

    def requests() -> Iterator[EchoRequest]:
        yield EchoRequest(text="first")
        silence.wait(seconds)
        yield EchoRequest(text="last")

    return [r.text for r in client.echo.chat(requests(), timeout=seconds + 18)]


# --- events ---


def event(name: str, **props: str) -> Event:
    return Event(name=name, properties=[EventProperty(name=k, value=v) for k, v in props.items()])


class Stream:
    """A raw listen stream: first status, then non-empty events."""

    def __init__(self, client: RpcClient, names: list[str] | None = None, client_id: int = 0) -> None:
        self.it = client.events.listen(EventFilter(names=names or [], client_id=client_id))
        self.client_id = next(self.it).client_id

    def next_event(self) -> Event:
        for status in self.it:
            if status.event.name:
                return status.event
        raise AssertionError("stream ended")


class Collector(EventsListener):
    """An events listener keeping what it receives, with a bounded wait for a number of events."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.events: list[Event] = []
        self.changed = threading.Condition()
        super().__init__(*args, **kwargs)

    def on_event(self, event: Event) -> None:
        with self.changed:
            self.events.append(event)
            self.changed.notify_all()

    def wait_count(self, n: int, timeout: float = 30) -> bool:
        with self.changed:
            return self.changed.wait_for(lambda: len(self.events) >= n, timeout)
