"""The library's exception, and the one place where gRPC errors become it."""

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
        return f"RpcException({str(self)!r}, rc={rc_name(self.rc)})"


def rc_name(rc: int) -> str:
    """`ResultCode` name of a code, or the number for custom codes."""
    try:
        return ResultCode.Name(rc)  # type: ignore[arg-type]
    except ValueError:
        return str(rc)


def result_from_exception(exc: BaseException) -> Result:
    """The `Result` a failed manager method answers with."""
    rc = exc.rc if isinstance(exc, RpcException) else ResultCode.ERROR
    stack = "".join(traceback.format_exception(exc))
    return Result(code=rc, msg=str(exc) or type(exc).__name__, stack=stack)  # type: ignore[arg-type]


def rpc_error_to_exception(exc: grpc.RpcError, what: str) -> RpcException:
    """Map a low-level gRPC error to the library's exception (ERROR_RPC)."""
    code = exc.code() if isinstance(exc, grpc.Call) else None
    details = exc.details() if isinstance(exc, grpc.Call) else str(exc)
    name = code.name if code is not None else "UNKNOWN"
    return RpcException(f"RPC error on {what}: {name}: {details}", ResultCode.ERROR_RPC)


@contextmanager
def map_rpc_errors(what: str) -> Iterator[None]:
    """Turn any `grpc.RpcError` raised inside into an `RpcException(ERROR_RPC)`, cause chained."""
    try:
        yield
    except grpc.RpcError as exc:
        raise rpc_error_to_exception(exc, what) from exc
