"""Server reflection through main: its own services' descriptors, and the dynamic services' from their backends.

Main has no descriptor of a dynamic service (registered by its gRPC name, see `ProxyRegistry.register`), so
a reflection client asking main about one is answered by a backend of that service: `list_services` is main's
own list merged with the dynamic services registered now; a `file_containing_symbol` inside a dynamic service
(`pkg.Service` or `pkg.Service.Method`) is forwarded to that service's backend; any other request is answered
by main when it can, else by the backend that sent that file (files seen in forwarded answers are remembered),
else by each registered dynamic service's backend in turn until one knows it. Each forwarded request is one
call of its own (one request, one response) on the service's balanced channel, bounded by
`rpc-client-timeout` to reach a backend (as any forwarded call) and by `FORWARD_TIMEOUT` once sent.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator

import grpc
from google.protobuf.descriptor_pb2 import FileDescriptorProto
from grpc_reflection.v1alpha import reflection, reflection_pb2_grpc
from grpc_reflection.v1alpha.reflection_pb2 import ErrorResponse
from grpc_reflection.v1alpha.reflection_pb2 import ServerReflectionRequest as Request
from grpc_reflection.v1alpha.reflection_pb2 import ServerReflectionResponse as Response

from grpc_helper.api import Result
from grpc_helper.auth import caller_metadata
from grpc_helper.calls import remaining
from grpc_helper.proxy.registry import ProxyRegistry

PATH = f"/{reflection.SERVICE_NAME}/ServerReflectionInfo"
FORWARD_TIMEOUT = 5.0  # seconds a backend has to answer one forwarded reflection request
# Files remembered as a dynamic service's (by file name), at most: what `file_by_filename` asks next
_MAX_FILES = 1000
_NOT_FOUND = grpc.StatusCode.NOT_FOUND.value[0]
_UNAVAILABLE = grpc.StatusCode.UNAVAILABLE.value[0]


class ProxiedReflection(reflection_pb2_grpc.ServerReflectionServicer):  # type: ignore[misc]  # no type information
    """grpcio-reflection's v1alpha `ServerReflection` of main, extended to the dynamic services (see the module)."""

    def __init__(self, local: reflection.ReflectionServicer, registry: ProxyRegistry) -> None:
        self._local = local
        self._registry = registry
        self._files: dict[str, str] = {}  # file name -> the dynamic service whose backend sent it
        self._lock = threading.Lock()

    def ServerReflectionInfo(
        self, request_iterator: Iterator[Request], context: grpc.ServicerContext
    ) -> Iterator[Response]:
        for request in request_iterator:
            yield self._answer(request, context)

    def _answer(self, request: Request, context: grpc.ServicerContext) -> Response:
        kind = request.WhichOneof("message_request")
        if kind == "file_containing_symbol":
            owner = self._owner(request.file_containing_symbol)
            if owner is not None:
                return self._forwarded(owner, request, context)
        elif kind == "file_by_filename":
            with self._lock:
                owner = self._files.get(request.file_by_filename)
            if owner is not None and self._registry.is_registered(owner):
                return self._forwarded(owner, request, context)
        answer = self._local_answer(request, context)
        if kind == "list_services":
            listed = answer.list_services_response.service
            known = {s.name for s in listed}
            for name in self._registry.dynamic_services(registered=True):
                if name not in known:
                    listed.add(name=name)
            return answer
        if answer.HasField("error_response") and answer.error_response.error_code == _NOT_FOUND:
            # Not main's: a symbol, file or extension of a dynamic service's file, maybe
            for name in self._registry.dynamic_services(registered=True):
                forwarded = self._forwarded(name, request, context)
                if not forwarded.HasField("error_response"):
                    return forwarded
        return answer

    def _owner(self, symbol: str) -> str | None:
        """The dynamic service registered now that `symbol` is, or is a method of."""
        service = symbol if self._registry.is_dynamic(symbol) else symbol.rpartition(".")[0]
        return service if self._registry.is_dynamic(service) and self._registry.is_registered(service) else None

    def _local_answer(self, request: Request, context: grpc.ServicerContext) -> Response:
        answer: Response = next(iter(self._local.ServerReflectionInfo(iter([request]), context)))
        return answer

    def _forwarded(self, name: str, request: Request, context: grpc.ServicerContext) -> Response:
        """`request` answered by a backend of the dynamic service `name` (an error response if none can)."""
        acquired = self._registry.acquire(name, PATH, context)
        if isinstance(acquired, Result):
            return _error(request, _UNAVAILABLE, acquired.msg)
        backend, _ = acquired  # reflection is not a forwarded call: not measured as one
        try:
            left = remaining(context)
            timeout = FORWARD_TIMEOUT if left is None else min(left, FORWARD_TIMEOUT)
            metadata = backend.credentials + caller_metadata()  # as a forwarded call: main's own credentials
            method = backend.method("stream_stream", PATH)
            call = method(iter([request.SerializeToString()]), timeout=timeout, metadata=metadata)
            try:
                data = next(call, None)
            finally:
                call.cancel()  # one answer is all it takes: the stream ends here
        except grpc.RpcError as exc:
            code = exc.code() if isinstance(exc, grpc.Call) else grpc.StatusCode.UNKNOWN
            details = exc.details() if isinstance(exc, grpc.Call) else str(exc)
            return _error(request, code.value[0], f"Reflection of {name} at {backend.address}: {code.name} {details}")
        finally:
            self._registry.release(backend)
        if data is None:
            return _error(request, _UNAVAILABLE, f"Reflection of {name} at {backend.address}: no answer")
        answer = Response.FromString(data)
        answer.original_request.CopyFrom(request)
        files = answer.file_descriptor_response.file_descriptor_proto
        if files:
            with self._lock:
                if len(self._files) >= _MAX_FILES:
                    self._files.clear()
                for raw in files:
                    self._files[FileDescriptorProto.FromString(raw).name] = name
        return answer


def _error(request: Request, code: int, msg: str) -> Response:
    return Response(original_request=request, error_response=ErrorResponse(error_code=code, error_message=msg))
