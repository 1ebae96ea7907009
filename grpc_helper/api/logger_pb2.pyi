from grpc_helper.api import common_pb2 as _common_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class LoggerApiVersion(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    LOGGER_API_UNKNOWN: _ClassVar[LoggerApiVersion]
    LOGGER_API_SUPPORTED: _ClassVar[LoggerApiVersion]
    LOGGER_API_CURRENT: _ClassVar[LoggerApiVersion]

class LoggerLevel(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    LVL_UNKNOWN: _ClassVar[LoggerLevel]
    LVL_DEBUG: _ClassVar[LoggerLevel]
    LVL_INFO: _ClassVar[LoggerLevel]
    LVL_WARNING: _ClassVar[LoggerLevel]
    LVL_ERROR: _ClassVar[LoggerLevel]
    LVL_CRITICAL: _ClassVar[LoggerLevel]
LOGGER_API_UNKNOWN: LoggerApiVersion
LOGGER_API_SUPPORTED: LoggerApiVersion
LOGGER_API_CURRENT: LoggerApiVersion
LVL_UNKNOWN: LoggerLevel
LVL_DEBUG: LoggerLevel
LVL_INFO: LoggerLevel
LVL_WARNING: LoggerLevel
LVL_ERROR: LoggerLevel
LVL_CRITICAL: LoggerLevel

class LoggerConfig(_message.Message):
    __slots__ = ("name", "enabled", "level")
    NAME_FIELD_NUMBER: _ClassVar[int]
    ENABLED_FIELD_NUMBER: _ClassVar[int]
    LEVEL_FIELD_NUMBER: _ClassVar[int]
    name: str
    enabled: bool
    level: LoggerLevel
    def __init__(self, name: _Optional[str] = ..., enabled: _Optional[bool] = ..., level: _Optional[_Union[LoggerLevel, str]] = ...) -> None: ...

class LoggerStatus(_message.Message):
    __slots__ = ("r", "items")
    R_FIELD_NUMBER: _ClassVar[int]
    ITEMS_FIELD_NUMBER: _ClassVar[int]
    r: _common_pb2.Result
    items: _containers.RepeatedCompositeFieldContainer[LoggerConfig]
    def __init__(self, r: _Optional[_Union[_common_pb2.Result, _Mapping]] = ..., items: _Optional[_Iterable[_Union[LoggerConfig, _Mapping]]] = ...) -> None: ...

class LoggerUpdate(_message.Message):
    __slots__ = ("items",)
    ITEMS_FIELD_NUMBER: _ClassVar[int]
    items: _containers.RepeatedCompositeFieldContainer[LoggerConfig]
    def __init__(self, items: _Optional[_Iterable[_Union[LoggerConfig, _Mapping]]] = ...) -> None: ...
