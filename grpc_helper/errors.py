"""The library's exceptions, and the one place where errors cross between gRPC and `Result`:

- `rc_name`: how a result code is written (a name, or the number for codes `ResultCode` does not name);
- `rpc_error_to_exception` / `map_rpc_errors`: a failed gRPC call (`grpc.RpcError`) -> `RpcTransportError`;
- `result_from_exception`: a manager's exception -> the `Result` it answers with;
- `result_status`: a `Result` -> the gRPC status answering it when the response type has no `Result r`.
"""

from __future__ import annotations

import traceback
from collections.abc import Iterator
from contextlib import contextmanager

import grpc

from grpc_helper.api import Result, ResultCode


class RpcException(Exception):
    """An error carrying a `ResultCode`.

    Raised by the client for non-OK responses (with the server's message and stack),
    and by managers to answer a call with a specific code.
    """

    def __init__(self, message: str = "", rc: int = ResultCode.ERROR, stack: str = "") -> None:
        super().__init__(message)
        self.rc = rc
        self.stack = stack  # remote stack trace, when the error came from a server

    @property
    def message(self) -> str:
        return str(self)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({str(self)!r}, rc={rc_name(self.rc)})"


class RpcTransportError(RpcException):
    """A call that failed in gRPC itself, so no `Result` came back: server unreachable (UNAVAILABLE),
    deadline exceeded, call cancelled, method not implemented...

    `rc` is always `ERROR_RPC` (what 2.x code catches); `status` is the `grpc.StatusCode` and
    `details` the status details. The `grpc.RpcError` is chained as `__cause__`.
    """

    def __init__(self, message: str, status: grpc.StatusCode = grpc.StatusCode.UNKNOWN, details: str = "") -> None:
        super().__init__(message, ResultCode.ERROR_RPC)
        self.status = status
        self.details = details

    def __repr__(self) -> str:
        return f"{type(self).__name__}({str(self)!r}, rc={rc_name(self.rc)}, status={self.status.name})"


class AccessDenied(RpcException):
    """A known caller doing what it may not (another identity's event queue or registration): the call is
    answered with gRPC status PERMISSION_DENIED (see `calls.CallSite.failure`), not a `Result`."""

    def __init__(self, message: str) -> None:
        super().__init__(message, ResultCode.ERROR_PARAM_INVALID)


class PlaintextTokenError(RpcException, ValueError):
    """A channel that would carry a bearer token in plaintext to a server not on loopback: refused before
    it is made (`ClientSecurity.channel`). A `ValueError` too, as this refusal always was."""

    def __init__(self, message: str) -> None:
        super().__init__(message, ResultCode.ERROR_PARAM_INVALID)


def rc_name(rc: int) -> str:
    """`ResultCode` name of a code, or the number for codes it does not name (custom ones included)."""
    try:
        return ResultCode.Name(rc)
    except ValueError:
        return str(rc)


def result_from_exception(exc: BaseException, *, with_stack: bool = True) -> Result:
    """The `Result` a failed manager method answers with; `with_stack`: with the server's traceback
    (`rpc-error-stack`). Messages quote client input cut short (`limits.quote`), so the result stays small."""
    rc = exc.rc if isinstance(exc, RpcException) else ResultCode.ERROR
    stack = "".join(traceback.format_exception(exc)) if with_stack else ""
    # protoc's stubs type enum fields as the enum only, and rc is any int code (custom ones too)
    return Result(code=rc, msg=str(exc) or type(exc).__name__, stack=stack)  # type: ignore[arg-type]


# What a caller that is not a grpc-helper client gets for errors raised at a proxy (see `result_status`)
_PLAIN_STATUSES = {
    ResultCode.ERROR_PROXY_UNREGISTERED: grpc.StatusCode.UNAVAILABLE,  # no backend to send it to
    ResultCode.ERROR_RPC: grpc.StatusCode.UNAVAILABLE,  # a backend that can't be reached
    ResultCode.ERROR_REQUEST_TIMEOUT: grpc.StatusCode.DEADLINE_EXCEEDED,
}


def result_status(result: Result, *, plain: bool = False) -> tuple[grpc.StatusCode, str]:
    """(gRPC status, details) answering an error `result` for a response type without `Result r`.

    Served and proxied calls both answer with this, so a caller sees the same status either way.
    FAILED_PRECONDITION whatever the code: not UNAVAILABLE, which a client retries (`RpcClient`
    does) on top of the proxy's own wait for a registration, when a response carrying `r` would
    not be retried; the code itself is in the details, `<code name>: <message>`.

    `plain`: for a caller that is not a grpc-helper client (grpcurl, tonic, plain grpcio: no 2.x shape
    to read), the status gRPC callers expect: UNAVAILABLE for a backend not registered or unreachable
    (what Envoy answers without a healthy upstream), DEADLINE_EXCEEDED for a timeout.
    """
    code = _PLAIN_STATUSES.get(result.code, grpc.StatusCode.FAILED_PRECONDITION) if plain else None
    return code or grpc.StatusCode.FAILED_PRECONDITION, f"{rc_name(result.code)}: {result.msg}"


def served_status(context: grpc.ServicerContext, *, failed: bool) -> grpc.StatusCode:
    """The status a served call ends with, as its context tells it: the code an `abort()` or `set_code()` gave,
    else UNKNOWN for a behavior that raised (`failed`), OK otherwise."""
    code: grpc.StatusCode | None = context.code()  # type: ignore[attr-defined]  # grpcio has it, its stubs do not
    return code or (grpc.StatusCode.UNKNOWN if failed else grpc.StatusCode.OK)


def error_status(exc: grpc.RpcError) -> grpc.StatusCode:
    """The status of a failed gRPC call (UNKNOWN for an error not raised by a call: grpcio raises none such today)."""
    return exc.code() if isinstance(exc, grpc.Call) else grpc.StatusCode.UNKNOWN


def rpc_error_to_exception(exc: grpc.RpcError, what: str) -> RpcTransportError:
    """Map a failed gRPC call to the library's exception, keeping its status (raise it `from exc`)."""
    status = error_status(exc)
    details = (exc.details() or "") if isinstance(exc, grpc.Call) else str(exc)
    return RpcTransportError(f"RPC error on {what}: {status.name}: {details}", status, details)


@contextmanager
def map_rpc_errors(what: str) -> Iterator[None]:
    """Turn any `grpc.RpcError` raised inside into an `RpcTransportError`, cause chained."""
    try:
        yield
    except grpc.RpcError as exc:
        raise rpc_error_to_exception(exc, what) from exc
