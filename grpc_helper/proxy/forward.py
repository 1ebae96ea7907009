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
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Protocol

import grpc

from grpc_helper.api import Result
from grpc_helper.auth import caller_metadata
from grpc_helper.calls import VersionRange, error_answer, remaining
from grpc_helper.errors import rpc_error_to_exception
from grpc_helper.generated import Behavior, Handler, has_result_field, kind_of, method_handler, response_class, run_on
from grpc_helper.metadata import (
    KEY_API_VERSION,
    KEY_CALLER,
    KEY_CLIENT,
    KEY_ROUTE_ENDPOINT,
    KEY_ROUTE_SERVICE,
    Metadata,
)
from grpc_helper.proxy.backend import Backend

_PROXIED_SUFFIX = "(proxied)"
# The routing keys are main's to act on, never passed on (a backend that is itself a main won't route again)
# and the caller's identity is main's to state (`auth.caller_metadata`): whatever a caller sent in it is dropped
_NOT_FORWARDED = frozenset(("user-agent", "authorization", KEY_ROUTE_SERVICE, KEY_ROUTE_ENDPOINT, KEY_CALLER))


class Backends(Protocol):
    """Where forwarded calls get their backend (the registry is one)."""

    logger: logging.Logger

    def acquire(self, name: str, method: str, context: grpc.ServicerContext) -> Backend | Result:
        """Phase 1 (see the module doc): a connected backend for `name`, or the error to answer."""
        ...

    def release(self, backend: Backend) -> None:
        """Give back a backend `acquire` returned, once the call is over."""
        ...


def forwarded_metadata(metadata: Metadata) -> Metadata:
    """Caller metadata to pass on: everything but transport headers, the caller's credentials (a backend
    must never see a caller's token: main calls it as itself) and routing keys."""
    return tuple((k, v) for k, v in metadata if k not in _NOT_FORWARDED and not k.startswith("grpc-"))


def proxied_metadata(metadata: Metadata, current_version: int) -> Metadata:
    """`forwarded_metadata`, with `client` marked as proxied and a default `api_version` (see module doc)."""
    client = ""
    has_version = False
    out: list[tuple[str, str | bytes]] = []
    for key, value in forwarded_metadata(metadata):
        if key == KEY_CLIENT:
            client = str(value)  # a str already: only the values of "-bin" keys are bytes
            continue
        has_version = has_version or key == KEY_API_VERSION
        out.append((key, value))
    out.append((KEY_CLIENT, client + _PROXIED_SUFFIX))
    if not has_version:
        out.append((KEY_API_VERSION, str(current_version)))
    return tuple(out)


def make_forwarder(
    name: str,
    service: str,
    method: str,
    original: Handler,
    versions: VersionRange,
    registry: Backends,
    stream_pool: ThreadPoolExecutor,
) -> Handler:
    """A raw-bytes handler forwarding `/service/method` to the backend `registry` has for `name`."""
    site = _ForwardSite(name, method, f"/{service}/{method}", kind_of(original), versions, registry, service)
    behavior = _stream_forwarder(site) if original.response_streaming else _unary_forwarder(site)
    # Forwarded calls wait on the network: keep them off the bounded worker pool
    run_on(behavior, stream_pool)
    return method_handler(site.kind, behavior)  # no (de)serializers: bytes in, bytes out


class _ForwardSite:
    """What the forwarding behaviors of one method share: its two phases (see the module doc)."""

    def __init__(
        self, name: str, method: str, path: str, kind: str, versions: VersionRange, registry: Backends, service: str
    ) -> None:
        self.name, self.method, self.path, self.kind = name, method, path, kind
        self.versions, self.registry = versions, registry
        self.response_cls = response_class(service, method)
        self.can_answer = has_result_field(self.response_cls)

    def prepare(self, context: grpc.ServicerContext) -> tuple[Backend, Metadata] | bytes:
        """(backend, metadata) to forward with (phase 1), or the bytes of an error answer."""
        md = context.invocation_metadata()
        err = self.versions.check(md)
        if err is None:
            backend = self.registry.acquire(self.name, self.method, context)
            if not isinstance(backend, Result):
                # The caller's identity goes along: the backend applies its own policy to it, not main's rights
                return backend, proxied_metadata(md, self.versions.current) + backend.credentials + caller_metadata()
            err = backend
        return error_answer(self.response_cls, context, err).SerializeToString()

    def failed(self, context: grpc.ServicerContext, backend: Backend, exc: grpc.RpcError) -> bytes:
        """The answer for a forwarded call that failed (phase 2): never resent."""
        error = rpc_error_to_exception(exc, f"proxied call {self.path} to {backend.address}")
        if context.is_active():  # else the caller is gone (cancelled, deadline): nobody to tell
            self.registry.logger.warning("%s", error)
        if not self.can_answer:
            context.abort(error.status, str(error))  # the backend's status, passed on
        # protoc's stubs type enum fields as the enum only, and rc is an int code
        return self.response_cls(r=Result(code=error.rc, msg=str(error))).SerializeToString()  # type: ignore[arg-type]


def _unary_forwarder(site: _ForwardSite) -> Behavior:
    prepare, failed, release = site.prepare, site.failed, site.registry.release
    kind, path = site.kind, site.path

    def unary_response(request: bytes | Iterator[bytes], context: grpc.ServicerContext) -> bytes:
        prepared = prepare(context)
        if isinstance(prepared, bytes):
            return prepared
        backend, md = prepared
        try:
            response: bytes = backend.method(kind, path)(request, timeout=remaining(context), metadata=md)
            return response
        except grpc.RpcError as exc:
            return failed(context, backend, exc)
        finally:
            release(backend)

    return unary_response


def _stream_forwarder(site: _ForwardSite) -> Behavior:
    prepare, failed, release = site.prepare, site.failed, site.registry.release
    kind, path = site.kind, site.path

    def stream_response(request: bytes | Iterator[bytes], context: grpc.ServicerContext) -> Iterator[bytes]:
        prepared = prepare(context)
        if isinstance(prepared, bytes):
            yield prepared
            return
        backend, md = prepared
        try:
            responses = backend.method(kind, path)(request, timeout=remaining(context), metadata=md)
            context.add_callback(responses.cancel)  # caller gone: cancel the backend call too
            try:
                yield from responses
            except grpc.RpcError as exc:
                yield failed(context, backend, exc)  # the stream's last message
        finally:
            release(backend)

    return stream_response
