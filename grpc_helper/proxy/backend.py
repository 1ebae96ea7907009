"""One persistent channel per proxied server."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any, Protocol

import grpc

# grpcio private internal (hence grpcio's bound in pyproject.toml): its Cython core, for the value
# of the READY connectivity state that the core channel reports (see `Backend.__init__`)
from grpc._cython import cygrpc  # type: ignore[attr-defined]  # a compiled module: no type information
from grpc_health.v1 import health_pb2, health_pb2_grpc

from grpc_helper.client import CHANNEL_OPTIONS
from grpc_helper.config.static import RpcStaticConfig
from grpc_helper.tls import PLAINTEXT, ClientSecurity

_READY: int = cygrpc.ConnectivityState.ready
# How often a backend's health is checked (seconds; also the bound of each check): a backend that
# dies or comes back is seen within about twice that
_WATCH_PERIOD = 1.0
_SERVING = health_pb2.HealthCheckResponse.SERVING

StateListener = Callable[["Backend", bool], None]


class _CoreChannel(Protocol):
    """What is used of grpcio's private core channel (`cygrpc.Channel`)."""

    def check_connectivity_state(self, try_to_connect: bool) -> int: ...  # noqa: FBT001 - grpcio's signature


def backend_address(host: str, port: int) -> tuple[str, int]:
    """Where a registration points to: an empty registered host means `rpc-main-host`."""
    return host or RpcStaticConfig.MAIN_HOST.str_val, port


class Backend:
    """A channel to a proxied server, with its cached multi-callables.

    `users` and `retired` are managed by the registry, under its lock: a retired backend (no
    registration points to it any more) is closed once its last call ends.
    """

    def __init__(
        self, host: str, port: int, on_state: StateListener | None = None, security: ClientSecurity | None = None
    ) -> None:
        """`on_state(backend, serving)`: told (from the backend's watch thread) each time the
        backend's health changes, as `_watch` sees it; None: not watched. `security`: TLS to the
        backend (None: plaintext)."""
        self.host, self.port = host, port  # as registered (the host may be empty)
        address = backend_address(host, port)
        self.address = f"{address[0]}:{address[1]}"  # resolved once: the channel's target
        self.users = 0
        self.retired = False
        self._closed = False
        self._methods: dict[str, Callable[..., Any]] = {}
        self.channel = (security or PLAINTEXT).channel(self.address, CHANNEL_OPTIONS)
        # gRPC's public API reports connectivity through subscriptions only, whose polling thread
        # races with close() (it may query the channel once closed, and die with an error): read
        # the state synchronously from the core channel instead. grpcio private internal (hence
        # grpcio's bound in pyproject.toml): a grpc.Channel keeps its core channel in `_channel`.
        self._core: _CoreChannel = self.channel._channel  # type: ignore[attr-defined]  # private: not in the stubs
        self.connected(try_to_connect=True)  # connect now: the first call won't wait for it
        self.serving: bool | None = None  # the backend's health as last seen (None: not known yet)
        self._stop = threading.Event()
        self._on_state = on_state
        if on_state is not None:
            threading.Thread(target=self._watch, name=f"rpc-backend-health-{self.address}", daemon=True).start()

    def _watch(self) -> None:
        """The watch thread: asks the backend's own `grpc.health.v1` service for its status (its whole
        server, service "") every `_WATCH_PERIOD` seconds, on the backend channel. The backend is
        serving while it answers SERVING; it is not while it can't be reached in time or answers
        anything else. A backend without a health service (UNIMPLEMENTED) counts as serving whenever
        it answers at all.

        Why polled Checks rather than a long-lived Watch stream: closing a channel after cancelling a
        Watch on it leaves its TCP connection open (measured with grpcio 1.85), and a retired backend
        must not keep one; and connectivity subscriptions race with close (see `__init__`)."""
        check = health_pb2_grpc.HealthStub(self.channel).Check
        request = health_pb2.HealthCheckRequest(service="")
        while not self._stop.is_set():
            try:
                serving = check(request, timeout=_WATCH_PERIOD).status == _SERVING
            except grpc.RpcError as exc:
                # UNIMPLEMENTED: no health service, but the backend answered
                serving = exc.code() == grpc.StatusCode.UNIMPLEMENTED
            except ValueError:  # "Cannot invoke RPC on closed channel!": closed between two checks
                return
            self._report(serving)
            self._stop.wait(_WATCH_PERIOD)

    def _report(self, serving: bool) -> None:  # noqa: FBT001 - a state, not an option
        if serving != self.serving and not self._stop.is_set():
            self.serving = serving
            assert self._on_state is not None
            self._on_state(self, serving)

    def connected(self, *, try_to_connect: bool = False) -> bool:
        """Whether the channel is connected; `try_to_connect` asks it to connect if it is not (after
        losing its connection, a channel stays idle until asked). Never call once closed."""
        return self._core.check_connectivity_state(try_to_connect) == _READY

    def method(self, kind: str, path: str) -> Callable[..., Any]:
        """The cached multi-callable of `kind` ("unary_unary", ...) for `path`, passing bytes through."""
        key = kind + path
        callable_ = self._methods.get(key)
        if callable_ is None:
            # No (de)serializers: forwarded messages stay bytes. `_registered_method=True`: a private
            # parameter of grpcio's method factories (what its generated stubs pass) that makes the call
            # use the method pre-registered on the channel instead of interning the path on every call.
            callable_ = getattr(self.channel, kind)(path, None, None, _registered_method=True)
            self._methods[key] = callable_
        return callable_

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._stop.set()  # the watch thread checks no more (a check under way is cancelled below)
            self.channel.close()
