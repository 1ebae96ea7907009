"""Channels to proxied servers: balanced over a service's replicas and health-checked by gRPC itself."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Protocol

# grpcio private internal (hence grpcio's bound in pyproject.toml): its Cython core, for the values
# of the connectivity states that the core channel reports (see `Backend.__init__`)
from grpc._cython import cygrpc  # type: ignore[attr-defined]  # a compiled module: no type information

from grpc_helper.balancing import Address
from grpc_helper.client import balanced_channel
from grpc_helper.config.static import RpcStaticConfig
from grpc_helper.metadata import Metadata
from grpc_helper.tls import PLAINTEXT, ClientSecurity

READY: int = cygrpc.ConnectivityState.ready
TRANSIENT_FAILURE: int = cygrpc.ConnectivityState.transient_failure


class _CoreChannel(Protocol):
    """What is used of grpcio's private core channel (`cygrpc.Channel`)."""

    def check_connectivity_state(self, try_to_connect: bool) -> int: ...  # noqa: FBT001 - grpcio's signature


def backend_address(host: str, port: int) -> Address:
    """Where a registration points to: an empty registered host means `rpc-main-host`."""
    return host or RpcStaticConfig.MAIN_HOST.str_val, port


class Backend:
    """A channel to one or several servers (the replicas of a proxied service), balanced and health
    checked by gRPC (`SERVICE_CONFIG`), with its cached multi-callables.

    `users`, `retired` and `serving` are managed by the registry, under its lock: a retired backend
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
        self._closed = False
        self._methods: dict[str, Callable[..., Any]] = {}
        self.channel = balanced_channel(security or PLAINTEXT, addresses)
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
            self.channel.close()
