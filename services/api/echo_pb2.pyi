from grpc_helper.api import common_pb2 as _common_pb2
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class EchoApiVersion(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    ECHO_API_UNKNOWN: _ClassVar[EchoApiVersion]
    ECHO_API_SUPPORTED: _ClassVar[EchoApiVersion]
    ECHO_API_CURRENT: _ClassVar[EchoApiVersion]
ECHO_API_UNKNOWN: EchoApiVersion
ECHO_API_SUPPORTED: EchoApiVersion
ECHO_API_CURRENT: EchoApiVersion

class EchoRequest(_message.Message):
    __slots__ = ("text", "payload", "count")
    TEXT_FIELD_NUMBER: _ClassVar[int]
    PAYLOAD_FIELD_NUMBER: _ClassVar[int]
    COUNT_FIELD_NUMBER: _ClassVar[int]
    text: str
    payload: bytes
    count: int
    def __init__(self, text: _Optional[str] = ..., payload: _Optional[bytes] = ..., count: _Optional[int] = ...) -> None: ...

class EchoResponse(_message.Message):
    __slots__ = ("r", "text", "payload", "index")
    R_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    PAYLOAD_FIELD_NUMBER: _ClassVar[int]
    INDEX_FIELD_NUMBER: _ClassVar[int]
    r: _common_pb2.Result
    text: str
    payload: bytes
    index: int
    def __init__(self, r: _Optional[_Union[_common_pb2.Result, _Mapping]] = ..., text: _Optional[str] = ..., payload: _Optional[bytes] = ..., index: _Optional[int] = ...) -> None: ...
