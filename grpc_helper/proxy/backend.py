"""Channels to proxied servers: balanced over a service's replicas and health-checked by gRPC itself."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any, Protocol

import grpc

# grpcio private internal (hence grpcio's bound in pyproject.toml): its Cython core, for the values
# of the connectivity states that the core channel reports (see `Backend.__init__`)
from grpc._cython import cygrpc  # type: ignore[attr-defined]  # a compiled module: no type information

from grpc_helper.balancing import Address, channel_target
from grpc_helper.client import balanced_channel
from grpc_helper.config.static import RpcStaticConfig
from grpc_helper.metadata import Metadata
from grpc_helper.metrics import EndpointMeter, release_endpoint
from grpc_helper.proxy.unary_call import UnaryCall
from grpc_helper.tls import PLAINTEXT, ClientSecurity

READY: int = cygrpc.ConnectivityState.ready
TRANSIENT_FAILURE: int = cygrpc.ConnectivityState.transient_failure

# The bounded health check of a monitor channel (see `Backend.probe`): how often, on which method; its
# request is an empty `HealthCheckRequest` (the whole server), and its deadline `rpc-keepalive-timeout`
PROBE_PERIOD = 1.0
_PROBE_PATH = "/grpc.health.v1.Health/Check"
# A probe failing with one of these: the server was not reached in time (any other answer, UNIMPLEMENTED
# from a server without a health service included, came from the server: it is there)
_UNREACHED = (grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.UNAVAILABLE)


class _CoreChannel(Protocol):
    """What is used of grpcio's private core channel (`cygrpc.Channel`)."""

    def check_connectivity_state(self, try_to_connect: bool) -> int: ...  # noqa: FBT001 - grpcio's signature


def backend_address(host: str, port: int) -> Address:
    """Where a registration points to: an empty registered host means `rpc-main-host`."""
    return host or RpcStaticConfig.MAIN_HOST.str_val, port


CANCELLABLE_UNARY = "cancellable_unary"  # the `Backend.method` kind of a `UnaryCall`

# Cached multi-callables per channel at most: declared services have a few; a dynamic service's paths come from
# its callers (every path a registered service's caller sends)
_MAX_METHODS = 1024


class Backend:
    """A channel to one or several servers (the replicas of a proxied service), balanced and health
    checked by gRPC (`SERVICE_CONFIG`), with its cached multi-callables.

    `users`, `retired`, `serving` and `meters` are managed by the registry, under its lock: a retired backend
    (no registration uses it any more) is closed once its last call ends.
    """

    def __init__(self, addresses: Sequence[Address], security: ClientSecurity | None = None) -> None:
        """`addresses`: where the servers are (an empty host already resolved as `rpc-main-host`);
        `security`: TLS to them (None: plaintext)."""
        self.address = ",".join(f"{host}:{port}" for host, port in addresses)  # for messages
        self.users = 0
        self.retired = False
        self.serving: bool | None = None  # as the registry last saw it (None: not known yet)
        self.down_since: float | None = None  # monotonic time it was last seen stop serving
        self.reached: bool | None = None  # whether its last bounded health check got an answer (see `probe`)
        self._probe: grpc.Future | None = None  # type: ignore[type-arg]  # grpc's stubs: generic in them only
        self._probed = 0.0  # when the last probe started (monotonic)
        self._closed = False
        self._methods: dict[str, Callable[..., Any]] = {}
        # By the proxied service that uses it (channels are shared by the services registered at the same
        # endpoints): what its forwarded calls are measured with, with metrics on (released at close)
        self.meters: dict[str, EndpointMeter] = {}
        # The gRPC target, as channelz shows the channel (`srv.info` tells it: `grpc-helper channelz`)
        self.target = channel_target(addresses)
        self.channel = balanced_channel(security or PLAINTEXT, addresses, self.target)
        # Added to every forwarded call: the server's own token (`rpc-auth-token-file`), if any, never a caller's
        self.credentials: Metadata = security.metadata() if security is not None else ()
        # gRPC's public API reports connectivity through subscriptions only, whose polling thread
        # races with close() (it may query the channel once closed, and die with an error): read
        # the state synchronously from the core channel instead. grpcio private internal (hence
        # grpcio's bound in pyproject.toml): a grpc.Channel keeps its core channel in `_channel`.
        self._core: _CoreChannel = self.channel._channel  # type: ignore[attr-defined]  # private: not in the stubs
        self.state(try_to_connect=True)  # connect now: the first call won't wait for it

    def state(self, *, try_to_connect: bool = False) -> int:
        """The channel's connectivity state; `try_to_connect` asks an idle channel to connect (after
        losing its connections, a channel stays idle until asked). Never call once closed."""
        return self._core.check_connectivity_state(try_to_connect)

    def connected(self, *, try_to_connect: bool = False) -> bool:
        """Whether a call can be sent now: a server is connected and healthy."""
        return self.state(try_to_connect=try_to_connect) == READY

    def method(self, kind: str, path: str) -> Callable[..., Any]:
        """The cached multi-callable of `kind` ("unary_unary", ..., or `CANCELLABLE_UNARY` for a
        `unary_call.UnaryCall`) for `path`, passing bytes through."""
        key = kind + path
        callable_ = self._methods.get(key)
        if callable_ is None:
            if len(self._methods) >= _MAX_METHODS:  # a dynamic service's callers name any method: bounded
                self._methods.clear()
            if kind == CANCELLABLE_UNARY:
                callable_ = UnaryCall(self.channel, path)
            else:
                # No (de)serializers: forwarded messages stay bytes. `_registered_method=True`: a private
                # parameter of grpcio's method factories (what its generated stubs pass) that makes the call
                # use the method pre-registered on the channel instead of interning the path on every call.
                callable_ = getattr(self.channel, kind)(path, None, None, _registered_method=True)
            self._methods[key] = callable_
        return callable_

    def probe(self, *, record: bool = True) -> None:
        """Start a bounded health check (one `Health.Check`, deadline `rpc-keepalive-timeout`) unless one
        is in flight or started less than `PROBE_PERIOD` ago; its outcome lands in `reached` (with `record`).

        Why, on top of keepalive: a monitor channel carries nothing but gRPC's health watch, a stream that
        stays silent while the health does not change, and main pings servers it may not configure only
        after sending them something (`options.Peer.ANY`). The check is that something, and it notices a
        server that vanished by itself: no answer within its deadline. Its answer is something from the
        server too, which is what keeps a silent stream's pings from striking at a server with gRPC's
        default enforcement: on a balanced channel of several servers (whose connections are its own, not
        its monitors'), probes without `record` do just that, one server after the other (round robin)."""
        now = time.monotonic()
        if self._closed or (self._probe is not None and not self._probe.done()) or now - self._probed < PROBE_PERIOD:
            return
        self._probed = now
        timeout = RpcStaticConfig.KEEPALIVE_TIMEOUT.float_val
        self._probe = self.method("unary_unary", _PROBE_PATH).future(b"", timeout=timeout)  # type: ignore[attr-defined]
        if record:
            self._probe.add_done_callback(self._probed_done)

    def _probed_done(self, future: grpc.Future) -> None:  # type: ignore[type-arg]
        if future.cancelled():
            return
        error = future.exception()
        self.reached = error is None or error.code() not in _UNREACHED  # type: ignore[attr-defined]

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            if self._probe is not None:
                self._probe.cancel()
            self.channel.close()
            for meter in self.meters.values():
                release_endpoint(meter)
            self.meters.clear()


# What a forwarded call acquires (`ProxyRegistry.acquire`): its backend, and the meter of its calls to it for the
# proxied service it was acquired for (None: metrics off)
Acquired = tuple[Backend, EndpointMeter | None]
