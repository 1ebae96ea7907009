from grpc_helper.api import common_pb2 as _common_pb2
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class GreeterApiVersion(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    GREETER_API_UNKNOWN: _ClassVar[GreeterApiVersion]
    GREETER_API_SUPPORTED: _ClassVar[GreeterApiVersion]
    GREETER_API_CURRENT: _ClassVar[GreeterApiVersion]
GREETER_API_UNKNOWN: GreeterApiVersion
GREETER_API_SUPPORTED: GreeterApiVersion
GREETER_API_CURRENT: GreeterApiVersion

class Greeting(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class GreetResult(_message.Message):
    __slots__ = ("r", "text")
    R_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    r: _common_pb2.Result
    text: str
    def __init__(self, r: _Optional[_Union[_common_pb2.Result, _Mapping]] = ..., text: _Optional[str] = ...) -> None: ...
