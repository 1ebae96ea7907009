"""A blocking unary call that another thread can cancel: how main forwards a unary call.

Why not grpcio's public API: its blocking unary call can't be cancelled (a caller that goes away would
leave the backend working, and main's thread waiting, until the call's end); a future hands the answer
over from the channel's thread, and a unary answer read as a stream of one takes five completion events
instead of one. Each costs main ~200 us of CPU per call, ~30% of the proxied unary rate (README,
Benchmarks). This is what grpcio's own blocking call does (one batch of the six operations of a unary
call on a call with its own completion queue, read on the calling thread), keeping the call object, so
that `cancel` works from the caller's termination callback.

grpcio private internals (hence grpcio's bound in pyproject.toml): the Cython core's segregated call and
operations, and the error type grpcio raises for a finished call. tests/test_hop.py covers this path
(statuses, metadata both ways, cancellation, deadlines) against the pinned grpcio.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import grpc
from grpc import _channel as grpc_channel  # private: grpcio's channel module
from grpc._cython import cygrpc  # type: ignore[attr-defined]  # a compiled module: no type information

from grpc_helper.metadata import Metadata

_FLAGS = 0  # no write flags, no wait_for_ready: a forwarded call is fail-fast (see forward's module doc)
_RECEIVE_STATUS = cygrpc.OperationType.receive_status_on_client
_RECEIVE_MESSAGE = cygrpc.OperationType.receive_message
_RECEIVE_INITIAL = cygrpc.OperationType.receive_initial_metadata
_CODES: dict[int, grpc.StatusCode] = {code.value[0]: code for code in grpc.StatusCode}  # the core's codes: ints
_CANCELLED = cygrpc.StatusCode.cancelled


class UnaryCall:
    """One method's cancellable unary calls on one channel (what `Backend.method` caches): bytes in, bytes out."""

    __slots__ = ("_census", "_core", "_handle", "_method")

    def __init__(self, channel: grpc.Channel, path: str) -> None:
        self._core = channel._channel  # type: ignore[attr-defined]  # private: a grpc.Channel's core channel
        self._method = path.encode()
        # The method pre-registered on the channel (what generated stubs use): no interning of the path per call
        self._handle = channel._get_registered_call_handle(path)  # type: ignore[attr-defined]
        self._census = cygrpc.build_census_context()

    def __call__(
        self, request: bytes, timeout: float | None, metadata: Metadata, attach: Callable[[Callable[[], None]], None]
    ) -> tuple[bytes, Metadata, Metadata]:
        """Send `request`, wait for the answer: (response, initial metadata, trailing metadata). `attach` is
        given the function that cancels the call, before the wait. Raises the `grpc.RpcError` (also a
        `grpc.Call`) grpcio's blocking call would raise, CANCELLED when cancelled."""
        operations = (
            cygrpc.SendInitialMetadataOperation(metadata, _FLAGS),
            cygrpc.SendMessageOperation(request, _FLAGS),
            cygrpc.SendCloseFromClientOperation(_FLAGS),
            cygrpc.ReceiveInitialMetadataOperation(_FLAGS),
            cygrpc.ReceiveMessageOperation(_FLAGS),
            cygrpc.ReceiveStatusOnClientOperation(_FLAGS),
        )
        deadline = None if timeout is None else time.time() + timeout
        call = self._core.segregated_call(
            cygrpc.PropagationConstants.GRPC_PROPAGATE_DEFAULTS,
            self._method,
            None,  # host
            deadline,
            metadata,
            None,  # call credentials: the forwarded metadata carries the backend's token
            ((operations, None),),
            self._census,
            self._handle,
        )
        attach(lambda: call.cancel(_CANCELLED, "Cancelled"))
        event = call.next_event()  # the one batch: everything answered, or the call ended
        response: bytes | None = None
        initial: Metadata = ()
        trailing: Metadata = ()
        code, details, debug = grpc.StatusCode.UNKNOWN, "", None
        for operation in event.batch_operations:
            kind = operation.type()
            if kind == _RECEIVE_MESSAGE:
                response = operation.message()
            elif kind == _RECEIVE_INITIAL:
                initial = tuple(operation.initial_metadata() or ())
            elif kind == _RECEIVE_STATUS:
                trailing = tuple(operation.trailing_metadata() or ())
                received = _CODES.get(operation.code())
                if received is None:
                    details = f"Server sent unknown code {operation.code()} and details {operation.details()!r}"
                else:
                    code, details, debug = received, operation.details(), operation.error_string()
        if code is grpc.StatusCode.OK and response is not None:
            return response, initial, trailing
        if code is grpc.StatusCode.OK:  # OK without a message: not a unary answer
            code, details = grpc.StatusCode.INTERNAL, "The server answered OK without a response message"
        state = grpc_channel._RPCState((), initial, trailing, code, details)
        state.debug_error_string = debug
        raise grpc_channel._InactiveRpcError(state)  # type: ignore[abstract]  # grpcio's stubs miss a few of its methods
