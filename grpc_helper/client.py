"""RpcClient: typed stubs with API-version metadata, retries while the server is unavailable, and Result checks."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import replace
from time import monotonic
from typing import TYPE_CHECKING, Any, Protocol, TypeAlias, TypeVar, cast

import grpc
from google.protobuf.message import Message

from grpc_helper import tracing
from grpc_helper.api import Filter, ResultCode, ServerApiVersion, StatRequest
from grpc_helper.api.server_pb2_grpc import RpcServerServiceStub
from grpc_helper.backoff import Backoff
from grpc_helper.balancing import SERVICE_CONFIG, Address, channel_target
from grpc_helper.errors import PlaintextTokenError, RpcException, RpcTransportError, rpc_error_to_exception
from grpc_helper.generated import MethodSpec, path_has_result, stub_methods
from grpc_helper.metadata import KEY_API_VERSION, Metadata, RpcMetadata
from grpc_helper.options import Peer, channel_options
from grpc_helper.tls import PLAINTEXT, ClientSecurity

# Direct mode: how long a replica's channel may take to connect before main is used instead (seconds),
# and how often at most routes are read again after an UNAVAILABLE call
DIRECT_CONNECT_TIMEOUT = 1.0
# How long the question "is this server ours?" (`RpcClient._learn_server`) may take before a streamed call
_PROBE_TIMEOUT = 2.0
# Its answers that settle it: not ours (or not known to be, for good)
_NOT_OURS = frozenset(
    (grpc.StatusCode.UNIMPLEMENTED, grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.UNAUTHENTICATED)
)
_ROUTES_REFRESH = 1.0
# Stubs of main's own services: never routed directly
_MAIN_STUBS = frozenset(("srv", "config", "log", "events", "health"))
# Less than this left of a call's deadline (seconds): no retry is attempted any more
_LAST_ATTEMPT = 0.01
# Stub name -> (generated stub class, API version sent with its calls; None: no version sent)
StubsMap: TypeAlias = dict[str, tuple[type[Any], int | None]]
S = TypeVar("S")
T = TypeVar("T")


def balanced_channel(security: ClientSecurity, addresses: Sequence[Address], target: str | None = None) -> grpc.Channel:
    """A channel to every one of `addresses`, balanced and health-checked by gRPC (`SERVICE_CONFIG`): main's
    channels to a service's replicas, and direct mode's; servers we may not configure (`Peer.ANY`). `target`:
    `channel_target(addresses)`, when the caller made it already."""
    options = channel_options(Peer.ANY, SERVICE_CONFIG)
    if len(addresses) > 1 and not (security.tls and security.server_name):
        # The authority of an `ipv4:a,b` target would be the whole list: give the first server's. Never with
        # TLS's checked name: that name is the authority then, and TLS refuses a call whose authority the
        # server's certificate does not carry ("call host does not match SSL server name")
        options = [*options, ("grpc.default_authority", f"{addresses[0][0]}:{addresses[0][1]}")]
    return security.channel(target or channel_target(addresses), options)


class _Stub:
    """One service of a client: an attribute per method, each taking `(request, timeout=None)`."""

    def __init__(self, client: RpcClient, name: str, stub_class: type[Any], version: int | None) -> None:
        self._name = name
        # The credentials are the channel's each call goes on (`RpcClient._multicallable`), not part of this
        metadata: Metadata = client.metadata.as_metadata()
        if version is not None:
            metadata += ((KEY_API_VERSION, str(int(version))),)
        for method, spec in stub_methods(stub_class).items():
            setattr(self, method, client._bind(spec, metadata, name))

    def __repr__(self) -> str:
        return f"<stub {self._name}>"


class RpcClient:
    """Client of one server, with one attribute per entry of `stubs` (name -> (stub class, api version)).

    - `timeout`: how long calls are retried while the server is UNAVAILABLE (None: one attempt only). It
      bounds the whole call, counted from its start: a unary call given no `timeout` of its own gets it as
      its deadline, across attempts; a streamed response is not started again once it has passed
    - `name`: client name (str) or a full `RpcMetadata`, sent as call metadata
    - `exception`: raise `custom_exception(msg, rc)` for responses with a non-OK code below ERROR_CUSTOM
    - `security`: TLS (CA, client certificate, server name) and a bearer token (`ClientSecurity`);
      None: plaintext, as 2.x. A token without TLS goes to loopback only: to another host,
      `PlaintextTokenError` (a `ValueError`), here or wherever a channel is made (see `refresh_routes`)
    - `direct`: for stubs of services this server (a main) proxies, call their replicas directly,
      balanced by gRPC (round_robin, health-checked), instead of through it; see `refresh_routes`
    - `route_security(service)`: direct mode, the credentials for `service`'s replicas (None: `security`,
      checking each replica's certificate against the service's name). A server's auto-client gives its own:
      its token is for its server only
    """

    def __init__(
        self,
        host: str,
        port: int,
        stubs: StubsMap,
        timeout: float | None = 60,
        name: str | RpcMetadata = "",
        logger: logging.Logger | None = None,
        exception: bool = True,  # noqa: FBT001, FBT002 - positional in 2.x, so it stays positional
        custom_exception: type[Exception] = RpcException,
        *,
        security: ClientSecurity | None = None,
        direct: bool = False,
        route_security: Callable[[str], ClientSecurity] | None = None,
    ) -> None:
        self.host, self.port, self.timeout = host, port, timeout
        self.security = security or PLAINTEXT
        self._credentials = self.security.metadata()  # sent on this client's own channel only
        self._route_security = route_security
        self.metadata = name if isinstance(name, RpcMetadata) else RpcMetadata(client=name)
        self.logger = logger or logging.getLogger("grpc_helper.client")
        self.exception = exception
        self.custom_exception = custom_exception
        # OpenTelemetry, when configured (decided once, here): a span per call, its context sent along
        self._tracing = tracing.configured()
        # Whether this client's server is ours (None: not known yet, see `_learn_server`): how its channel pings
        self._server_is_ours: bool | None = None
        self._learning = threading.Lock()  # one question at a time
        self.channel = self._new_channel()
        self.direct = direct
        # Stub -> its replicas' addresses, their channel, and the credentials sent on it
        self._routes: dict[str, tuple[tuple[Address, ...], grpc.Channel, Metadata]] = {}
        self._routes_read = 0.0  # when `refresh_routes` last asked main (monotonic)
        self._channel_lock = threading.Lock()  # serializes close() and route changes: never taken by calls
        self._rebinders: list[Callable[[], None]] = []  # one per bound method: rebinds it to self.channel
        self._kept_off: set[tuple[str, tuple[Address, ...]]] = set()  # direct routes refused for the token
        self.stubs = dict(stubs)
        self._stubs: dict[str, _Stub] = {}
        for attr, (stub_class, version) in stubs.items():
            self._stubs[attr] = _Stub(self, attr, stub_class, version)
            setattr(self, attr, self._stubs[attr])
        if direct:
            self.refresh_routes()

    if TYPE_CHECKING:
        # Stubs are set per instance from the stubs map: untyped this way (see `stub` for typed ones)
        def __getattr__(self, name: str) -> Any: ...

    def stub(self, name: str, stub_class: type[S]) -> S:
        """The stub `name` (the same object as attribute `name`), typed as `stub_class`, the generated stub
        class it was given with, so that type checkers check the requests and responses of its calls:

            echo = client.stub("echo", EchoServiceStub)
            response = echo.echo(EchoRequest(text="hi"), timeout=5)  # an EchoResponse

        The type is the generated `.pyi`'s (gRPC multi-callables); the methods take `(request, timeout=None)`
        only, and server-streaming ones return a `ResponseStream`. Raises KeyError for a name this client
        has no stub of, TypeError for a `stub_class` that is not (a base of) the one it was given with.
        """
        try:
            given = self.stubs[name][0]
        except KeyError:
            raise KeyError(f"No stub {name!r} in this client (stubs: {', '.join(self.stubs) or 'none'})") from None
        if not issubclass(given, stub_class):
            raise TypeError(f"Stub {name!r} was given as {given.__name__}, not {stub_class.__name__}")
        return cast(S, self._stubs[name])  # S is the type of the generated stub this one mirrors

    def close(self) -> None:
        """Close the channel (releasing its connection; calls in progress are cancelled).

        The client stays usable: a later call connects again, like a first call would.
        """
        # A fresh channel replaces the closed one right away instead of on next use: an unused
        # channel is cheap (no connection, no thread, no file descriptor) and this keeps the call
        # path free of any "is it closed?" check or lock. Methods are rebound before the old
        # channel is closed, so only calls already started on it are affected.
        with self._channel_lock:
            old, self.channel = self.channel, self._new_channel()
            routes, self._routes = self._routes, {}  # through main again until routes are read again
            for rebind in self._rebinders:
                rebind()
        old.close()
        for _, channel, _ in routes.values():
            channel.close()

    @property
    def routes(self) -> dict[str, tuple[Address, ...]]:
        """Direct mode: the stubs whose calls go straight to their replicas, and those replicas' addresses."""
        return {name: endpoints for name, (endpoints, _, _) in self._routes.items()}

    def refresh_routes(self) -> None:
        """Direct mode: ask this client's server (a main) where the proxied services of this client's stubs
        run (`srv.info`), and send their calls there from now on: one channel per service with a serving
        endpoint, over all its endpoints, balanced and health-checked by gRPC (round_robin: an endpoint
        down gets no call until it serves again), with the same metadata,
        deadlines and API-version checks. A service with no endpoint reachable from here within
        `DIRECT_CONNECT_TIMEOUT` (e.g. addresses of a network this host is not on) goes through main; a main
        that does not answer changes nothing (the routes read before, if any, are kept: replicas serve on
        while main is unreachable). Called at construction, and again (at most once a second) when a
        call fails with UNAVAILABLE. With TLS, a replica's certificate is checked against its service's
        name (main's default `rpc-tls-backend-name`). Calls to replicas carry the credentials of
        `route_security` when given (see the class doc), else this client's.

        A token never travels in plaintext off loopback: with a token and no TLS, a service with any
        endpoint not on loopback gets no direct route (logged once, at WARNING): its calls keep going
        through main, which never forwards a caller's token, rather than failing."""
        self._routes_read = time.monotonic()
        names = [n for n in self.stubs if n not in _MAIN_STUBS]
        if not names:
            return
        try:
            request = Filter(names=names, ignore_unknown=True)
            info = RpcServerServiceStub(self.channel).info(
                request, timeout=DIRECT_CONNECT_TIMEOUT, metadata=self._srv_metadata()
            )
        except grpc.RpcError as exc:
            # Keep what was read before: main cut off or lost says nothing about the replicas
            self.logger.debug("Direct routes: main %s:%s did not answer (%s): unchanged", self.host, self.port, exc)
            return
        found: dict[str, tuple[Address, ...]] = {}
        for item in info.items:
            if item.is_proxy and any(e.serving for e in item.endpoints):
                # Every registered endpoint, serving or not: gRPC's health checking and round_robin skip those
                # down and take them back once they serve again (a route read while one was down would
                # otherwise never send it a call again)
                found[item.name] = tuple((e.host or self.host, e.port) for e in item.endpoints)
        routes: dict[str, tuple[tuple[Address, ...], grpc.Channel, Metadata]] = {}
        for name, endpoints in found.items():
            current = self._routes.get(name)
            if current is not None and current[0] == endpoints:
                routes[name] = current
                continue
            security = self._replicas_security(name)
            channel = self._replicas_channel(name, endpoints, security)
            if channel is None:
                continue
            routes[name] = (endpoints, channel, security.metadata())
        with self._channel_lock:
            old, self._routes = self._routes, routes
            for rebind in self._rebinders:
                rebind()
        for name, route in old.items():
            if routes.get(name) is not route:  # a kept route is the very same (endpoints, channel, credentials)
                route[1].close()

    def _replicas_security(self, service: str) -> ClientSecurity:
        """The credentials of `service`'s replicas (see `route_security`)."""
        if self._route_security is not None:
            return self._route_security(service)
        return replace(self.security, server_name=service) if self.security.tls else self.security

    def _replicas_channel(
        self, service: str, endpoints: tuple[Address, ...], security: ClientSecurity
    ) -> grpc.Channel | None:
        """A balanced channel to `endpoints` with `security`, once connected; None if none can be reached in
        time, or if it would carry a token in plaintext (`PlaintextTokenError`: through main instead)."""
        try:
            channel = balanced_channel(security, endpoints)
        except PlaintextTokenError:
            if (service, endpoints) not in self._kept_off:  # once: routes are read again often
                self._kept_off.add((service, endpoints))
                why = "Direct routes: %s at %s through main: not all on loopback, and a token needs TLS off it"
                self.logger.warning(why, service, endpoints)
            return None
        try:
            grpc.channel_ready_future(channel).result(timeout=DIRECT_CONNECT_TIMEOUT)
        except grpc.FutureTimeoutError:
            channel.close()
            self.logger.info("Direct routes: %s unreachable at %s from here: through main", service, endpoints)
            return None
        return channel

    def _srv_metadata(self) -> Metadata:
        """The metadata of this client's own calls to its server's `srv` service."""
        version = ((KEY_API_VERSION, str(int(ServerApiVersion.SERVER_API_CURRENT))),)
        return self.metadata.as_metadata() + self._credentials + version

    def _new_channel(self) -> grpc.Channel:
        # Our server (main, usually), once known to be: pinged while any call is open, an event listener's silent
        # stream too. Any other server (or not known yet) is pinged once after each message sent only: a 2.x or
        # plain grpcio server takes pings during a silent call as abuse (a `too_many_pings` GOAWAY, failing every
        # call on the connection)
        peer = Peer.OURS if self._server_is_ours else Peer.ANY
        return self.security.channel(channel_target([(self.host, self.port)]), channel_options(peer))

    def _learn_server(self, stub: str) -> None:
        """Before a call of `stub` that may stay silent for long (a streamed response) to this client's server,
        learn whether that server is ours, if not known yet: it is if it answers `srv.stat` (new in 3; a 2.x or
        foreign server: UNIMPLEMENTED). Ours, calls move to a channel that pings throughout (`Peer.OURS`): a
        vanished server is noticed within `keepalive_bound()` even by a listener waiting for events. One short
        call per client, the first time only; asked again after an answer that tells nothing (unreachable,
        busy), never for a call that goes to replicas directly (main may be unreachable: they serve on)."""
        if self._server_is_ours is not None or stub in self._routes:
            return
        with self._learning:
            if self._server_is_ours is not None:
                return
            try:
                srv = RpcServerServiceStub(self.channel)
                srv.stat(StatRequest(window=1), timeout=_PROBE_TIMEOUT, metadata=self._srv_metadata())
            except grpc.RpcError as exc:
                # Refused (no policy role for it, or a foreign server's own checks): not known to be ours, for good
                if exc.code() in _NOT_OURS:
                    self._server_is_ours = False
                    why = "%s:%s: not known to be a grpc-helper 3 server (%s): pinged after each message only"
                    self.logger.debug(why, self.host, self.port, exc.code().name)
                return
            self._server_is_ours = True
            with self._channel_lock:
                # Not closed (it would cancel them): calls in progress on the old channel hold it, and its
                # connection closes once the last of them ends and the channel is released
                self.channel = self._new_channel()
                for rebind in self._rebinders:
                    rebind()

    def __enter__(self) -> RpcClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- errors and retries ---
    def _raise_for(self, response: Any) -> None:
        """Raise for a non-OK `response.r` (`response`: a message known, by `path_has_result`, to have `Result r`)."""
        r = response.r
        if r.code != ResultCode.OK and r.code < ResultCode.ERROR_CUSTOM:
            exc = self.custom_exception(r.msg, r.code)
            if isinstance(exc, RpcException):
                exc.stack = r.stack
            raise exc

    def _retry(
        self,
        attempt: Callable[[float | None], T],
        error: grpc.RpcError,
        path: str,
        timeout: float | None,
        started: float,
    ) -> T:
        """Called after a failed first attempt of a call `started` at that `time.monotonic()`: retry with
        backoff while UNAVAILABLE, within the client's timeout (and the call's if shorter) counted from the
        call's start; raise `RpcTransportError` for anything else. `attempt(left)` runs one attempt, `left`
        being what remains of the call's deadline (its own `timeout`, else the client's)."""
        if self.timeout is None:  # one attempt only
            raise rpc_error_to_exception(error, path) from error
        window = min(t for t in (self.timeout, timeout) if t is not None)
        backoff = Backoff(timeout=started + window - time.monotonic())  # the window opened with the call
        end = started + (self.timeout if timeout is None else timeout)
        while True:
            if error.code() != grpc.StatusCode.UNAVAILABLE or backoff.expired:
                raise rpc_error_to_exception(error, path) from error
            delay = backoff.next_delay()
            self.logger.debug("%s unavailable on %s:%s, retrying in %.2fs", path, self.host, self.port, delay)
            time.sleep(delay)
            if self.direct and time.monotonic() - self._routes_read >= _ROUTES_REFRESH:
                self.refresh_routes()  # replicas moved, or went away: follow main's registrations
            left = end - time.monotonic()
            if left < _LAST_ATTEMPT:
                # The window is spent (the last delay was cut to its end): an attempt now could only time
                # out, and hide why the window was spent; report that instead
                raise rpc_error_to_exception(error, path) from error
            try:
                return attempt(left)
            except grpc.RpcError as exc:
                # A retry cut by the deadline we set (the window's end) reports why the window was
                # spent: the server was UNAVAILABLE (a caller's own deadline is reported as such)
                if timeout is not None or exc.code() != grpc.StatusCode.DEADLINE_EXCEEDED:
                    error = exc

    # --- method binding ---
    def _bind(self, spec: MethodSpec, metadata: Metadata, stub: str) -> Callable[..., Any]:
        """The client-side method of `spec` (by its kind) of stub `stub`, kept bound to its current channel
        (`self.channel`, or its direct route) by `close()` and `refresh_routes()`."""
        check = self.exception and path_has_result(spec.path)
        method, rebind = _METHOD_FACTORIES[spec.kind](self, spec, metadata, stub, check=check)
        self._rebinders.append(rebind)
        return method

    def _multicallable(self, spec: MethodSpec, stub: str, metadata: Metadata) -> tuple[Callable[..., Any], Metadata]:
        """`spec`'s gRPC multi-callable on the current channel of `stub`, and the metadata to call it with:
        `metadata` and the credentials of that channel (one pair: a call never mixes two channels' credentials)."""
        route = self._routes.get(stub)
        channel, credentials = (self.channel, self._credentials) if route is None else route[1:]
        factory = getattr(channel, spec.kind)
        # `_registered_method=True`: a private parameter of grpcio's method factories (what its generated
        # stubs pass), making calls use the method pre-registered on the channel instead of interning
        # its path on every call (hence grpcio's bound in pyproject.toml)
        multicallable: Callable[..., Any] = factory(
            spec.path, spec.request_serializer, spec.response_deserializer, _registered_method=True
        )
        if self._tracing is not None:
            multicallable = self._tracing.client_call(multicallable, spec.path, streaming=spec.kind.endswith("_stream"))
        return multicallable, metadata + credentials


class ClientMeter(Protocol):
    """What measures an `RpcClient` method's calls (`grpc_helper.metrics.ClientMethodMetrics`)."""

    def retried(self) -> None:
        """One more attempt after the first."""

    def done(self, start: float, code: grpc.StatusCode) -> None:
        """A call begun at `start` (time.monotonic()) ended with `code`."""


# Makes the meter of a method (by its path), set by the server module: clients of a server's process are
# measured; the operator CLI's are not, and it never imports prometheus_client (it stays a light probe)
METERS: Callable[[str], ClientMeter] | None = None


def _measured(meter: ClientMeter | None, attempt: Callable[[float | None], T]) -> Callable[[float | None], T]:
    """A retry's `attempt` counted as one on `meter`."""
    if meter is None:
        return attempt

    def counted(left: float | None) -> T:
        meter.retried()
        return attempt(left)

    return counted


def _timed(meter: ClientMeter | None, call: Callable[[], T]) -> T:
    """`call()`, its duration and final status recorded on `meter`."""
    if meter is None:
        return call()
    start = monotonic()
    code = grpc.StatusCode.OK
    try:
        return call()
    except RpcTransportError as exc:
        code = exc.status
        raise
    except BaseException:
        code = grpc.StatusCode.UNKNOWN
        raise
    finally:
        meter.done(start, code)


# Each factory below returns (the method, its rebinder). The method calls a multi-callable with its metadata,
# held together in a closure cell, which the rebinder points at the client's current channel: close() swaps
# the channel at no cost per call. (`check`: raise for a response's non-OK `Result`.)
_Bound: TypeAlias = tuple[Callable[..., Any], Callable[[], None]]


def _unary_method(client: RpcClient, spec: MethodSpec, metadata: Metadata, stub: str, *, check: bool) -> _Bound:
    bound = client._multicallable(spec, stub, metadata)
    path = spec.path
    meter = METERS(path) if METERS is not None else None

    def rebind() -> None:
        nonlocal bound
        bound = client._multicallable(spec, stub, metadata)

    def attempt(request: Message, timeout: float | None) -> Any:
        call, md = bound
        return call(request, timeout=timeout, metadata=md)

    def attempts(request: Message, timeout: float | None) -> Any:
        started = monotonic()
        try:
            # The client's timeout is the call's deadline unless it has its own (see RpcClient)
            return attempt(request, client.timeout if timeout is None else timeout)
        except grpc.RpcError as exc:
            # `bound` read at each attempt: a retry goes where the routes now point (direct mode)
            again = _measured(meter, lambda left: attempt(request, left))
            return client._retry(again, exc, path, timeout, started)

    def unary(request: Message, timeout: float | None = None) -> Any:
        response = attempts(request, timeout) if meter is None else _timed(meter, lambda: attempts(request, timeout))
        if check:
            client._raise_for(response)
        return response

    return unary, rebind


def _client_stream_method(client: RpcClient, spec: MethodSpec, metadata: Metadata, stub: str, *, check: bool) -> _Bound:
    bound = client._multicallable(spec, stub, metadata)
    path = spec.path
    meter = METERS(path) if METERS is not None else None

    def rebind() -> None:
        nonlocal bound
        bound = client._multicallable(spec, stub, metadata)

    def attempt(requests: _TrackedIterator, timeout: float | None) -> Any:
        call, md = bound
        return call(requests, timeout=timeout, metadata=md)

    def attempts(requests: Iterable[Message], timeout: float | None) -> Any:
        tracked = _TrackedIterator(requests)
        started = monotonic()
        try:
            return attempt(tracked, client.timeout if timeout is None else timeout)
        except grpc.RpcError as exc:
            if tracked.started:  # can't replay a consumed request stream
                raise rpc_error_to_exception(exc, path) from exc
            again = _measured(meter, lambda left: attempt(tracked, left))
            return client._retry(again, exc, path, timeout, started)

    def client_stream(requests: Iterable[Message], timeout: float | None = None) -> Any:
        response = _timed(meter, lambda: attempts(requests, timeout))
        if check:
            client._raise_for(response)
        return response

    return client_stream, rebind


def _server_stream_method(client: RpcClient, spec: MethodSpec, metadata: Metadata, stub: str, *, check: bool) -> _Bound:
    bound = client._multicallable(spec, stub, metadata)
    path = spec.path
    request_streaming = spec.kind == "stream_stream"

    def rebind() -> None:
        nonlocal bound
        bound = client._multicallable(spec, stub, metadata)

    # `request`: a message, or an iterable of them for a bidirectional stream
    def server_stream(request: Any, timeout: float | None = None) -> ResponseStream:
        tracked = _TrackedIterator(request) if request_streaming else None
        arg = tracked if tracked is not None else request

        def start() -> _StreamCall:
            client._learn_server(stub)  # before the call: it may move `bound` to a channel that pings throughout
            call, md = bound
            return call(arg, timeout=timeout, metadata=md)  # type: ignore[no-any-return]

        return ResponseStream(client, start, path, timeout, check=check, requests=tracked)

    return server_stream, rebind


class _MethodFactory(Protocol):
    def __call__(
        self, client: RpcClient, spec: MethodSpec, metadata: Metadata, stub: str, *, check: bool
    ) -> _Bound: ...


_METHOD_FACTORIES: dict[str, _MethodFactory] = {
    "unary_unary": _unary_method,
    "stream_unary": _client_stream_method,
    "unary_stream": _server_stream_method,
    "stream_stream": _server_stream_method,
}


class _TrackedIterator:
    """Request iterator that remembers whether it was consumed (a consumed stream can't be retried)."""

    def __init__(self, it: Iterable[Any]) -> None:
        self._it = iter(it)
        self.started = False

    def __iter__(self) -> _TrackedIterator:
        return self

    def __next__(self) -> Any:
        self.started = True
        return next(self._it)


class _StreamCall(Protocol):
    """A gRPC call with a streamed response, as a multi-callable returns it."""

    def __next__(self) -> Message: ...

    def cancel(self) -> bool: ...


class ResponseStream:
    """Iterator over a streamed response: retries until the first message, checks every message's Result."""

    def __init__(
        self,
        client: RpcClient,
        start: Callable[[], _StreamCall],
        path: str,
        timeout: float | None,
        *,
        check: bool,
        requests: _TrackedIterator | None = None,
    ) -> None:
        self._client, self._start, self._path, self._timeout, self._check = client, start, path, timeout, check
        self._requests = requests
        self._started = time.monotonic()  # the retry window counts from here
        self._call = start()
        self._received = False

    def __iter__(self) -> Iterator[Message]:
        return self

    def __next__(self) -> Message:
        try:
            msg = next(self._call)
        except grpc.RpcError as exc:
            if self._received or (self._requests is not None and self._requests.started):
                raise rpc_error_to_exception(exc, self._path) from exc

            def restart(_left: float | None) -> Message:
                # No deadline from the client's timeout: the stream may live long once it has started
                self._call = self._start()
                return next(self._call)

            msg = self._client._retry(restart, exc, self._path, self._timeout, self._started)
        self._received = True
        if self._check:
            self._client._raise_for(msg)
        return msg

    def cancel(self) -> None:
        """Cancel the call; iteration then ends with `RpcTransportError` (ERROR_RPC, status CANCELLED)."""
        self._call.cancel()
