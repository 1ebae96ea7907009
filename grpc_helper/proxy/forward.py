"""Byte-level forwarding of proxied calls.

Messages are never decoded: the proxy's handlers have no (de)serializers, so request and
response bytes go straight through one persistent channel per backend. Only the API version
check (metadata) and error answers are made at the proxy.

A forwarded call goes through two phases:

1. **Waiting, nothing sent.** `ProxyRegistry.acquire` waits, up to `rpc-client-timeout` from the
   call's arrival (or the caller's deadline if sooner), until the service is registered and its
   backend channel is *connected*; it follows registration changes meanwhile (a call waiting on
   an unreachable backend goes to the new host:port as soon as one registers). No request is
   issued during this phase, so switching backends can never deliver a request twice. Time out:
   ERROR_PROXY_UNREGISTERED if nothing is registered, ERROR_RPC if the backend can't be reached.
   (Why not simply send with gRPC's `wait_for_ready`? Its timeout would bound the whole call, a
   legitimately long one too, and a queued call can't be moved to a new registration: cancelling
   it races with gRPC sending it.)
2. **One attempt.** The request is then sent exactly once, fail-fast, with the caller's deadline
   (the only bound on the call itself: `rpc-client-timeout` is about reaching the backend).
   Nothing is ever resent by the proxy: any error from then on (an UNAVAILABLE included, e.g. a
   connection reset mid-call, since the backend may have received the request) ends the call
   with an ERROR_RPC answer, as the original's inner client did. gRPC itself only retries
   transparently what never reached the wire.

So, like the original, the caller gets gRPC OK with `r.code` set (never a gRPC UNAVAILABLE that its
own client would retry on top). Responses without a `Result r` field can't carry that: their
callers get a gRPC status instead: before anything is sent (version check, phase 1), the one a
served call answers for the same `Result` (`calls.error_answer`); in phase 2, the backend's own.
For streamed responses, an error becomes the stream's last message.

Forwarded metadata: the caller's, minus transport headers and its credentials, plus the caller's identity
as main authenticated it (`rpc-caller`, see `auth`: the backend applies its own policy to that caller),
with `client` renamed `<client>(proxied)` (just `(proxied)` when the caller sent none: the original
appends to the name whatever it is), and the proxy's current API version of the service added when the
caller sent no `api_version`, so the backend checks the version the proxy serves.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any, NamedTuple, Protocol

import grpc

from grpc_helper import tracing
from grpc_helper.api import Result
from grpc_helper.auth import caller_metadata, current_identity
from grpc_helper.calls import VersionRange, cancelled_after_end, error_answer, remaining
from grpc_helper.errors import RpcTransportError, error_status, rpc_error_to_exception
from grpc_helper.generated import Behavior, Handler, has_result_field, method_handler, response_class, run_on
from grpc_helper.metadata import (
    KEY_API_VERSION,
    KEY_CALLER,
    KEY_CLIENT,
    KEY_ROUTE_ENDPOINT,
    KEY_ROUTE_SERVICE,
    Metadata,
    reads_results,
)
from grpc_helper.metrics import EndpointMeter
from grpc_helper.proxy.backend import CANCELLABLE_UNARY, Acquired, Backend

if TYPE_CHECKING:
    from opentelemetry.trace import Span

_PROXIED_SUFFIX = "(proxied)"
# The routing keys are main's to act on, never passed on (a backend that is itself a main won't route again)
# and the caller's identity is main's to state (`auth.caller_metadata`): whatever a caller sent in it is dropped
_NOT_FORWARDED = frozenset(("user-agent", "authorization", KEY_ROUTE_SERVICE, KEY_ROUTE_ENDPOINT, KEY_CALLER))
# A backend's metadata not passed back to the caller: transport keys (gRPC's and HTTP/2's own, which gRPC
# sets per hop), and main's business (`rpc-*`)
_NOT_RETURNED = frozenset(("content-type", "te", "user-agent", "date", "server", "authorization"))
_HOP_PREFIXES = ("grpc-", ":", "rpc-")
_DETAILS_KEY = "grpc-status-details-bin"  # a gRPC error's rich details (google.rpc.Status): the caller's
# How long the end of a caller's request stream waits to be told apart from its cancellation (seconds):
# grpcio sees both events of a cancellation within microseconds; a real end pays this once
_CANCEL_SETTLE = 0.02


class Backends(Protocol):
    """Where forwarded calls get their backend (the registry is one)."""

    logger: logging.Logger

    def acquire(self, name: str, method: str, context: grpc.ServicerContext) -> Acquired | Result:
        """Phase 1 (see the module doc): a connected backend for `name` and the meter of its calls (None:
        metrics off), or the error to answer."""
        ...

    def release(self, backend: Backend) -> None:
        """Give back a backend `acquire` returned, once the call is over."""
        ...


def forwarded_metadata(metadata: Metadata) -> Metadata:
    """Caller metadata to pass on: everything but transport headers, the caller's credentials (a backend
    must never see a caller's token: main calls it as itself) and routing keys."""
    return tuple((k, v) for k, v in metadata if k not in _NOT_FORWARDED and not k.startswith("grpc-"))


def proxied_metadata(metadata: Metadata, current_version: int | None, *, results: bool = True) -> Metadata:
    """`forwarded_metadata`, with `client` marked as proxied and a default `api_version` for a caller that is a
    grpc-helper client (`results`: see `metadata.reads_results`; any other caller has no API version, and
    must stay one that reads statuses for a main behind this one). `current_version` None: main knows no
    version of the service (a dynamic one), none is added."""
    client = ""
    has_version = False
    out: list[tuple[str, str | bytes]] = []
    for key, value in forwarded_metadata(metadata):
        if key == KEY_CLIENT:
            client = str(value)  # a str already: only the values of "-bin" keys are bytes
            continue
        has_version = has_version or key == KEY_API_VERSION
        out.append((key, value))
    if results:
        out.append((KEY_CLIENT, client + _PROXIED_SUFFIX))
        if not has_version and current_version is not None:
            out.append((KEY_API_VERSION, str(current_version)))
    return tuple(out)


def make_forwarder(
    name: str,
    service: str,
    method: str,
    kind: str,
    versions: VersionRange | None,
    registry: Backends,
    stream_pool: ThreadPoolExecutor,
) -> Handler:
    """A raw-bytes handler of `kind` forwarding `/service/method` to the backend `registry` has for `name`.

    `versions` None: a service main has no descriptor of (registered by its gRPC name, see `ProxyRegistry`):
    no API version check at main (the backend checks), no response type, so errors are plain gRPC statuses."""
    site = _ForwardSite(name, method, f"/{service}/{method}", kind, versions, registry, service)
    behavior = _stream_forwarder(site) if kind.endswith("_stream") else _unary_forwarder(site)
    # Forwarded calls wait on the network: keep them off the bounded worker pool
    run_on(behavior, stream_pool)
    return method_handler(site.kind, behavior)  # no (de)serializers: bytes in, bytes out


class ForwardedCall(NamedTuple):
    """A forwarded call in flight, as debug dumps list it."""

    method: str
    identity: str | None  # its caller's identity (with a policy)
    context: grpc.ServicerContext  # else the caller's address is asked of it, for a dump only (see `caller`)
    backend: str
    start: float  # time.time()

    @property
    def caller(self) -> str:
        """The caller's identity, or its peer address (`context.peer()` releases the GIL twice: a cost per call
        on a busy main, paid here only when a dump is made)."""
        return self.identity if self.identity is not None else self.context.peer()


# Thread ident -> the forwarded call it runs (a forwarded call holds one thread of the streams pool throughout)
IN_FLIGHT: dict[int, ForwardedCall] = {}


class _Canceller:
    """Cancels a backend call once asked, whenever the call is known: the caller may go away before the
    backend call exists (then it is cancelled as soon as it does) or after."""

    __slots__ = ("_cancel", "_lock", "wanted")

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._cancel: Callable[[], Any] | None = None  # what cancels the backend call, once it exists
        self.wanted = False

    def attach(self, cancel: Callable[[], Any]) -> None:
        with self._lock:
            self._cancel = cancel
            wanted = self.wanted
        if wanted:
            cancel()

    def __call__(self) -> None:
        with self._lock:
            self.wanted = True
            cancel = self._cancel
        if cancel is not None:
            cancel()


def _caller_requests(requests: Iterator[bytes], cancel: _Canceller) -> Iterator[bytes]:
    """The caller's request stream, passed on to the backend, where the caller's cancellation never looks
    like the end of its input (which the backend would take as complete, and might commit): a backend
    call whose caller cancelled is cancelled instead of half-closed (see `calls.cancelled_after_end`)."""
    try:
        yield from requests
    except grpc.RpcError:  # grpcio saw the cancellation first: pass it on (never an exception into gRPC)
        cancel()
        return
    if cancelled_after_end(requests, _CANCEL_SETTLE):
        cancel()


class _ForwardSite:
    """What the forwarding behaviors of one method share: its two phases (see the module doc)."""

    def __init__(
        self,
        name: str,
        method: str,
        path: str,
        kind: str,
        versions: VersionRange | None,
        registry: Backends,
        service: str,
    ) -> None:
        self.name, self.method, self.path, self.kind, self.service = name, method, path, kind, service
        self.versions, self.registry = versions, registry
        self.response_cls = response_class(service, method) if versions is not None else None
        self.can_answer = self.response_cls is not None and has_result_field(self.response_cls)
        self.request_streaming = kind.startswith("stream_")
        # Traced (decided once, here): the backend call's own span, the parent of the backend's
        traced = tracing.configured()
        self.upstream = traced.upstream(service, method) if traced is not None else None

    def prepare(self, context: grpc.ServicerContext) -> tuple[Backend, Metadata, bool, EndpointMeter | None] | bytes:
        """(backend, metadata to forward with, whether the caller reads `Result`s, the meter of the call) (phase 1),
        or the bytes of an error answer."""
        md = context.invocation_metadata()
        results = reads_results(md)
        versions = self.versions
        err = versions.check(md) if versions is not None else None
        if err is None:
            acquired = self.registry.acquire(self.name, self.method, context)
            if not isinstance(acquired, Result):
                backend, meter = acquired
                # The caller's identity goes along: the backend applies its own policy to it, not main's rights
                current = versions.current if versions is not None else None
                forwarded = proxied_metadata(md, current, results=results)
                return backend, forwarded + backend.credentials + caller_metadata(), results, meter
            err = acquired
            left = remaining(context)
            if left is not None and left <= 0:  # waited for a backend until the caller's deadline: it passed
                context.abort(grpc.StatusCode.DEADLINE_EXCEEDED, f"{self.path}: deadline passed waiting for a backend")
        return error_answer(self.response_cls, context, err, plain=not results).SerializeToString()

    def failed(self, context: grpc.ServicerContext, backend: Backend, exc: grpc.RpcError, *, results: bool) -> bytes:
        """The answer for a forwarded call that failed (phase 2): never resent. A caller that reads `Result`s
        gets 2.x's shape (gRPC OK, `r.code` ERROR_RPC) when the response has one; any other, the backend's
        own status, details and trailers. A passed deadline is DEADLINE_EXCEEDED for everyone."""
        error = rpc_error_to_exception(exc, f"proxied call {self.path} to {backend.address}")
        if not context.is_active():  # the caller is gone (cancelled, deadline): nobody to tell
            return b""
        if error.status is grpc.StatusCode.UNIMPLEMENTED:  # e.g. a routed command to a server that is not ours
            msg = f"The server at {backend.address} has no {self.service} service (or no {self.method} in it)"
            error = RpcTransportError(msg, error.status, error.details)
        status = error.status
        if status is grpc.StatusCode.DEADLINE_EXCEEDED or not (results and self.can_answer):
            if status is not grpc.StatusCode.DEADLINE_EXCEEDED:
                self.registry.logger.info("%s", error)
            context.set_trailing_metadata(returned_metadata(_trailers(exc)))
            context.abort(status, error.details if not results else str(error))
        self.registry.logger.warning("%s", error)
        # protoc's stubs type enum fields as the enum only, and rc is an int code
        assert self.response_cls is not None  # can_answer
        return self.response_cls(r=Result(code=error.rc, msg=str(error))).SerializeToString()  # type: ignore[arg-type]

    def started(self, context: grpc.ServicerContext, backend: Backend) -> int:
        """Record the call in `IN_FLIGHT` (for debug dumps); returns the key to `done` with."""
        key = threading.get_ident()
        caller = current_identity()
        name = caller.name if caller is not None else None
        IN_FLIGHT[key] = ForwardedCall(self.path, name, context, backend.address, time.time())
        return key


def _trailers(exc: grpc.RpcError) -> Metadata:
    trailers = exc.trailing_metadata() if isinstance(exc, grpc.Call) else None
    return tuple(trailers or ())


# The status of an upstream call, as measured (`EndpointMeter.done`)
_OK, _UNKNOWN, _INTERNAL = grpc.StatusCode.OK, grpc.StatusCode.UNKNOWN, grpc.StatusCode.INTERNAL
_CANCELLED = grpc.StatusCode.CANCELLED


def _unary_forwarder(site: _ForwardSite) -> Behavior:
    prepare, failed, release, started = site.prepare, site.failed, site.registry.release, site.started
    path, request_streaming, upstream = site.path, site.request_streaming, site.upstream
    perf = time.perf_counter

    def unary_response(request: bytes | Iterator[bytes], context: grpc.ServicerContext) -> bytes:
        prepared = prepare(context)
        if isinstance(prepared, bytes):
            return prepared
        backend, md, results, meter = prepared
        cancel = _Canceller()
        if not context.add_callback(cancel):  # the caller is already gone
            cancel()
        key = started(context, backend)
        code = _UNKNOWN  # how the backend call ended (measured, with metrics on; its span's status, traced)
        start = perf()
        span: Span | None = None
        if upstream is not None:
            span, md = upstream.start(md)
        try:
            if not request_streaming:  # a blocking call the caller's termination callback can cancel
                answer: tuple[bytes, Metadata, Metadata] = backend.method(CANCELLABLE_UNARY, path)(
                    request, remaining(context), md, cancel.attach
                )
                code = _OK
                pass_metadata(context, answer[1], answer[2])
                return answer[0]
            # A client stream's unary response read as a stream of one (the same on the wire): a call that
            # can be cancelled, its request stream passed on by grpcio's thread
            responses = backend.method("stream_stream", path)(
                _caller_requests(request, cancel),  # type: ignore[arg-type]  # an iterator when streaming
                timeout=remaining(context),
                metadata=md,
            )
            cancel.attach(responses.cancel)
            answers = list(responses)  # one; reading to the end gives the trailing metadata and status
            if len(answers) != 1:
                code = _INTERNAL
                context.abort(_INTERNAL, f"{path}: the backend answered {len(answers)} messages")
            code = _OK
            pass_metadata(context, responses.initial_metadata(), responses.trailing_metadata())
            streamed: bytes = answers[0]
            return streamed
        except grpc.RpcError as exc:
            code = error_status(exc)
            if cancel.wanted:
                return b""  # the caller went away (cancelled, or its deadline passed): nobody to answer
            return failed(context, backend, exc, results=results)
        finally:
            if meter is not None:  # before `release`, which may close the backend and its meters
                meter.done(start, code)
            IN_FLIGHT.pop(key, None)
            release(backend)
            if span is not None and upstream is not None:
                upstream.end(span, code)

    return unary_response


def _stream_forwarder(site: _ForwardSite) -> Behavior:
    prepare, failed, release, started = site.prepare, site.failed, site.registry.release, site.started
    kind, path, request_streaming, upstream = site.kind, site.path, site.request_streaming, site.upstream
    perf = time.perf_counter

    def stream_response(request: bytes | Iterator[bytes], context: grpc.ServicerContext) -> Iterator[bytes]:
        prepared = prepare(context)
        if isinstance(prepared, bytes):
            yield prepared
            return
        backend, md, results, meter = prepared
        cancel = _Canceller()
        if not context.add_callback(cancel):  # the caller is already gone
            cancel()
        key = started(context, backend)
        code = _CANCELLED  # how the backend call ended; a stream closed before its end: the caller went away
        start = perf()
        span: Span | None = None
        if upstream is not None:
            span, md = upstream.start(md)
        try:
            if request_streaming:
                request = _caller_requests(request, cancel)  # type: ignore[arg-type]  # an iterator when streaming
            responses = backend.method(kind, path)(request, timeout=remaining(context), metadata=md)
            cancel.attach(responses.cancel)
            try:
                headers = returned_metadata(responses.initial_metadata())
                if headers:
                    context.send_initial_metadata(headers)
                yield from responses
                code = _OK
                trailers = returned_metadata(responses.trailing_metadata())
                if trailers:
                    context.set_trailing_metadata(trailers)
            except grpc.RpcError as exc:
                code = error_status(exc)
                if cancel.wanted:
                    return  # the caller went away
                yield failed(context, backend, exc, results=results)  # 2.x: the stream's last message
        finally:
            if meter is not None:  # before `release`, which may close the backend and its meters
                meter.done(start, code)
            IN_FLIGHT.pop(key, None)
            release(backend)
            if span is not None and upstream is not None:
                upstream.end(span, code)

    return stream_response


def returned_metadata(metadata: Iterable[tuple[str, str | bytes]] | None) -> Metadata:
    """What a backend's initial or trailing metadata passes on to the caller: everything but transport keys
    (`grpc-*` but rich error details, `grpc-status-details-bin`; `content-type`, HTTP/2's) and keys of ours
    (`rpc-*`: main's own business)."""
    return tuple(
        (k, v)
        for k, v in metadata or ()
        if k == _DETAILS_KEY or (k not in _NOT_RETURNED and not k.startswith(_HOP_PREFIXES))
    )


def pass_metadata(
    context: grpc.ServicerContext,
    initial: Iterable[tuple[str, str | bytes]] | None,
    trailing: Iterable[tuple[str, str | bytes]] | None,
) -> None:
    """Give a unary call's caller the backend's initial and trailing metadata (none of it: nothing to do)."""
    headers = returned_metadata(initial)
    if headers:
        context.send_initial_metadata(headers)
    trailers = returned_metadata(trailing)
    if trailers:
        context.set_trailing_metadata(trailers)
