from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ResultCode(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    OK: _ClassVar[ResultCode]
    ERROR: _ClassVar[ResultCode]
    ARGS: _ClassVar[ResultCode]
    ERROR_PORT_BUSY: _ClassVar[ResultCode]
    ERROR_API_CLIENT_TOO_OLD: _ClassVar[ResultCode]
    ERROR_API_SERVER_TOO_OLD: _ClassVar[ResultCode]
    ERROR_RPC: _ClassVar[ResultCode]
    ERROR_PROXY_UNREGISTERED: _ClassVar[ResultCode]
    ERROR_STREAM_SHUTDOWN: _ClassVar[ResultCode]
    ERROR_PROXY_FORGOTTEN: _ClassVar[ResultCode]
    ERROR_PARAM_MISSING: _ClassVar[ResultCode]
    ERROR_PARAM_INVALID: _ClassVar[ResultCode]
    ERROR_PARAM_UNSUPPORTED: _ClassVar[ResultCode]
    ERROR_ITEM_UNKNOWN: _ClassVar[ResultCode]
    ERROR_ITEM_CONFLICT: _ClassVar[ResultCode]
    ERROR_ITEM_BUSY: _ClassVar[ResultCode]
    ERROR_ITEM_MULTIPLE: _ClassVar[ResultCode]
    ERROR_MODEL_INVALID: _ClassVar[ResultCode]
    ERROR_MODEL_SYNTAX: _ClassVar[ResultCode]
    ERROR_REQUEST_FAILED: _ClassVar[ResultCode]
    ERROR_REQUEST_TIMEOUT: _ClassVar[ResultCode]
    ERROR_REQUEST_UNSUPPORTED: _ClassVar[ResultCode]
    ERROR_STATE_UNREACHABLE: _ClassVar[ResultCode]
    ERROR_STATE_UNEXPECTED: _ClassVar[ResultCode]
    ERROR_CUSTOM: _ClassVar[ResultCode]
OK: ResultCode
ERROR: ResultCode
ARGS: ResultCode
ERROR_PORT_BUSY: ResultCode
ERROR_API_CLIENT_TOO_OLD: ResultCode
ERROR_API_SERVER_TOO_OLD: ResultCode
ERROR_RPC: ResultCode
ERROR_PROXY_UNREGISTERED: ResultCode
ERROR_STREAM_SHUTDOWN: ResultCode
ERROR_PROXY_FORGOTTEN: ResultCode
ERROR_PARAM_MISSING: ResultCode
ERROR_PARAM_INVALID: ResultCode
ERROR_PARAM_UNSUPPORTED: ResultCode
ERROR_ITEM_UNKNOWN: ResultCode
ERROR_ITEM_CONFLICT: ResultCode
ERROR_ITEM_BUSY: ResultCode
ERROR_ITEM_MULTIPLE: ResultCode
ERROR_MODEL_INVALID: ResultCode
ERROR_MODEL_SYNTAX: ResultCode
ERROR_REQUEST_FAILED: ResultCode
ERROR_REQUEST_TIMEOUT: ResultCode
ERROR_REQUEST_UNSUPPORTED: ResultCode
ERROR_STATE_UNREACHABLE: ResultCode
ERROR_STATE_UNEXPECTED: ResultCode
ERROR_CUSTOM: ResultCode

class Result(_message.Message):
    __slots__ = ("code", "msg", "stack")
    CODE_FIELD_NUMBER: _ClassVar[int]
    MSG_FIELD_NUMBER: _ClassVar[int]
    STACK_FIELD_NUMBER: _ClassVar[int]
    code: ResultCode
    msg: str
    stack: str
    def __init__(self, code: _Optional[_Union[ResultCode, str]] = ..., msg: _Optional[str] = ..., stack: _Optional[str] = ...) -> None: ...

class ResultStatus(_message.Message):
    __slots__ = ("r",)
    R_FIELD_NUMBER: _ClassVar[int]
    r: Result
    def __init__(self, r: _Optional[_Union[Result, _Mapping]] = ...) -> None: ...

class Empty(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class Filter(_message.Message):
    __slots__ = ("names", "ignore_unknown", "endpoint")
    NAMES_FIELD_NUMBER: _ClassVar[int]
    IGNORE_UNKNOWN_FIELD_NUMBER: _ClassVar[int]
    ENDPOINT_FIELD_NUMBER: _ClassVar[int]
    names: _containers.RepeatedScalarFieldContainer[str]
    ignore_unknown: bool
    endpoint: Endpoint
    def __init__(self, names: _Optional[_Iterable[str]] = ..., ignore_unknown: _Optional[bool] = ..., endpoint: _Optional[_Union[Endpoint, _Mapping]] = ...) -> None: ...

class Endpoint(_message.Message):
    __slots__ = ("host", "port")
    HOST_FIELD_NUMBER: _ClassVar[int]
    PORT_FIELD_NUMBER: _ClassVar[int]
    host: str
    port: int
    def __init__(self, host: _Optional[str] = ..., port: _Optional[int] = ...) -> None: ...
