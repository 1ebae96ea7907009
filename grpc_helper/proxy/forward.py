"""Byte-level forwarding of proxied calls.

Messages are never decoded: the proxy's handlers have no (de)serializers, so request and
response bytes go straight through one persistent channel per backend. Only the API version
check (metadata) and error answers (ERROR_PROXY_UNREGISTERED) are made at the proxy.

A backend that is unreachable is retried with backoff until `rpc-client-timeout` (or the
caller's deadline), as long as nothing was exchanged yet; then the caller gets UNAVAILABLE.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

import grpc

from grpc_helper.api import Result, ResultCode
from grpc_helper.config.static import RpcStaticConfig
from grpc_helper.server.dispatch import VersionRange, response_class

if TYPE_CHECKING:
    from grpc_helper.proxy.backend import Backend

# Above this, gRPC's "no deadline" sentinel is showing through time_remaining()
_NO_DEADLINE = 1e8
_FIRST_RETRY_DELAY = 0.05
_MAX_RETRY_DELAY = 1.0

_KINDS = {
    (False, False): "unary_unary",
    (False, True): "unary_stream",
    (True, False): "stream_unary",
    (True, True): "stream_stream",
}


def forwarded_metadata(metadata: tuple[Any, ...]) -> tuple[tuple[str, Any], ...]:
    """Caller metadata to pass on: everything but transport headers."""
    return tuple((k, v) for k, v in metadata if k != "user-agent" and not k.startswith("grpc-"))


def remaining(context: grpc.ServicerContext) -> float | None:
    """The caller's remaining deadline, to propagate (None: no deadline)."""
    left = context.time_remaining()
    return None if left is None or left > _NO_DEADLINE else left


class _Requests:
    """Request stream wrapper remembering whether anything was read (then a retry would lose data)."""

    def __init__(self, it: Iterator[Any]) -> None:
        self._it, self.started = it, False

    def __iter__(self) -> _Requests:
        return self

    def __next__(self) -> Any:
        self.started = True
        return next(self._it)


def _retrying(attempt: Callable[[], Any], context: grpc.ServicerContext, path: str, requests: _Requests | None) -> Any:
    """Run `attempt()`, retrying while the backend is UNAVAILABLE and nothing was exchanged yet."""
    deadline: float | None = None
    delay = _FIRST_RETRY_DELAY
    while True:
        try:
            return attempt()
        except grpc.RpcError as exc:
            if exc.code() != grpc.StatusCode.UNAVAILABLE or (requests is not None and requests.started):
                context.abort(exc.code(), f"Proxied call {path} failed: {exc.details()}")
            now = time.monotonic()
            if deadline is None:
                limit = RpcStaticConfig.CLIENT_TIMEOUT.float_val
                left = remaining(context)
                deadline = now + (limit if left is None else min(limit, left))
            if now >= deadline:
                msg = f"Proxied call {path}: backend unreachable: {exc.details()}"
                context.abort(grpc.StatusCode.UNAVAILABLE, msg)
            time.sleep(min(delay, deadline - now))
            delay = min(delay * 2, _MAX_RETRY_DELAY)


def make_forwarder(
    name: str,
    service: str,
    method: str,
    original: grpc.RpcMethodHandler,
    versions: VersionRange,
    resolve: Callable[[str, grpc.ServicerContext], Backend | Result],
    stream_pool: Any,
) -> grpc.RpcMethodHandler:
    """A raw-bytes handler forwarding `/service/method` to the backend `resolve` finds for `name`."""
    path = f"/{service}/{method}"
    kind = _KINDS[(original.request_streaming, original.response_streaming)]
    response_cls = response_class(service, method)
    can_answer = "r" in response_cls.DESCRIPTOR.fields_by_name

    def prepare(context: grpc.ServicerContext) -> tuple[Any, tuple[Any, ...]] | bytes:
        """(multi-callable, metadata) to forward with, or the bytes of an error answer."""
        md = context.invocation_metadata()
        err = versions.check(md)
        if err is None:
            backend = resolve(name, context)
            if not isinstance(backend, Result):
                return backend.method(kind, path), forwarded_metadata(md)
            err = backend
        if not can_answer:
            context.abort(grpc.StatusCode.UNAVAILABLE, f"{ResultCode.Name(err.code)}: {err.msg}")
        return response_cls(r=err).SerializeToString()

    if not original.response_streaming:

        def unary_response(request: Any, context: grpc.ServicerContext) -> bytes:
            prepared = prepare(context)
            if isinstance(prepared, bytes):
                return prepared
            call, md = prepared
            requests = _Requests(request) if original.request_streaming else None
            arg = requests if requests is not None else request
            return _retrying(lambda: call(arg, timeout=remaining(context), metadata=md), context, path, requests)

        behavior: Any = unary_response
    else:

        def stream_response(request: Any, context: grpc.ServicerContext) -> Iterator[bytes]:
            prepared = prepare(context)
            if isinstance(prepared, bytes):
                yield prepared
                return
            call, md = prepared
            requests = _Requests(request) if original.request_streaming else None
            arg = requests if requests is not None else request
            holder: list[Any] = []

            def start() -> Any:
                responses = call(arg, timeout=remaining(context), metadata=md)
                holder[:] = [responses]
                return next(responses, None)  # connection errors show up here

            first = _retrying(start, context, path, requests)
            responses = holder[0]
            context.add_callback(responses.cancel)  # caller gone: cancel the backend call too
            if first is None:
                return
            yield first
            try:
                yield from responses
            except grpc.RpcError as exc:
                context.abort(exc.code(), f"Proxied call {path} failed: {exc.details()}")

        behavior = stream_response

    # Forwarded calls wait on the network: keep them off the bounded worker pool
    behavior.experimental_thread_pool = stream_pool
    factory = getattr(grpc, f"{kind}_rpc_method_handler")
    return factory(behavior, request_deserializer=None, response_serializer=None)
