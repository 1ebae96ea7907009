"""Byte-level forwarding of proxied calls.

Messages are never decoded: the proxy's handlers have no (de)serializers, so request and
response bytes go straight through one persistent channel per backend. Only the API version
check (metadata) and error answers (ERROR_PROXY_UNREGISTERED) are done at the proxy.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

import grpc

from grpc_helper.api import Result, ResultCode
from grpc_helper.server.dispatch import VersionRange, response_class

if TYPE_CHECKING:
    from grpc_helper.proxy.backend import Backend

# Above this, gRPC's "no deadline" sentinel is showing through time_remaining()
_NO_DEADLINE = 1e8

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

    def error_bytes(result: Result, context: grpc.ServicerContext) -> bytes:
        if "r" in response_cls.DESCRIPTOR.fields_by_name:
            return response_cls(r=result).SerializeToString()
        context.abort(grpc.StatusCode.UNAVAILABLE, f"{ResultCode.Name(result.code)}: {result.msg}")
        raise AssertionError("unreachable")

    def prepare(context: grpc.ServicerContext) -> tuple[Any, tuple[Any, ...]] | bytes:
        """(multi-callable, metadata) to forward with, or the bytes of an error answer."""
        md = context.invocation_metadata()
        err = versions.check(md)
        if err is None:
            backend = resolve(name, context)
            if not isinstance(backend, Result):
                return backend.method(kind, path), forwarded_metadata(md)
            err = backend
        return error_bytes(err, context)

    def relay_error(exc: grpc.RpcError, context: grpc.ServicerContext) -> None:
        context.abort(exc.code(), f"Proxied call {path} failed: {exc.details()}")

    if not original.response_streaming:

        def unary_response(request: Any, context: grpc.ServicerContext) -> bytes:
            prepared = prepare(context)
            if isinstance(prepared, bytes):
                return prepared
            call, md = prepared
            try:
                return call(request, timeout=remaining(context), metadata=md)
            except grpc.RpcError as exc:
                relay_error(exc, context)
                raise

        behavior: Any = unary_response
    else:

        def stream_response(request: Any, context: grpc.ServicerContext) -> Iterator[bytes]:
            prepared = prepare(context)
            if isinstance(prepared, bytes):
                yield prepared
                return
            call, md = prepared
            responses = call(request, timeout=remaining(context), metadata=md)
            context.add_callback(responses.cancel)  # caller gone: cancel the backend call too
            try:
                yield from responses
            except grpc.RpcError as exc:
                relay_error(exc, context)

        behavior = stream_response

    # Forwarded calls wait on the network: keep them off the bounded worker pool
    behavior.experimental_thread_pool = stream_pool
    factory = getattr(grpc, f"{kind}_rpc_method_handler")
    return factory(behavior, request_deserializer=None, response_serializer=None)
