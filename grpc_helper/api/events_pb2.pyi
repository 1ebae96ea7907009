from grpc_helper.api import common_pb2 as _common_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class EventApiVersion(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    EVENT_API_UNKNOWN: _ClassVar[EventApiVersion]
    EVENT_API_SUPPORTED: _ClassVar[EventApiVersion]
    EVENT_API_CURRENT: _ClassVar[EventApiVersion]
EVENT_API_UNKNOWN: EventApiVersion
EVENT_API_SUPPORTED: EventApiVersion
EVENT_API_CURRENT: EventApiVersion

class EventProperty(_message.Message):
    __slots__ = ("name", "value")
    NAME_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    name: str
    value: str
    def __init__(self, name: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...

class Event(_message.Message):
    __slots__ = ("name", "properties")
    NAME_FIELD_NUMBER: _ClassVar[int]
    PROPERTIES_FIELD_NUMBER: _ClassVar[int]
    name: str
    properties: _containers.RepeatedCompositeFieldContainer[EventProperty]
    def __init__(self, name: _Optional[str] = ..., properties: _Optional[_Iterable[_Union[EventProperty, _Mapping]]] = ...) -> None: ...

class EventStatus(_message.Message):
    __slots__ = ("r", "event", "client_id", "seq")
    R_FIELD_NUMBER: _ClassVar[int]
    EVENT_FIELD_NUMBER: _ClassVar[int]
    CLIENT_ID_FIELD_NUMBER: _ClassVar[int]
    SEQ_FIELD_NUMBER: _ClassVar[int]
    r: _common_pb2.Result
    event: Event
    client_id: int
    seq: int
    def __init__(self, r: _Optional[_Union[_common_pb2.Result, _Mapping]] = ..., event: _Optional[_Union[Event, _Mapping]] = ..., client_id: _Optional[int] = ..., seq: _Optional[int] = ...) -> None: ...

class EventFilter(_message.Message):
    __slots__ = ("names", "client_id", "last_seq")
    NAMES_FIELD_NUMBER: _ClassVar[int]
    CLIENT_ID_FIELD_NUMBER: _ClassVar[int]
    LAST_SEQ_FIELD_NUMBER: _ClassVar[int]
    names: _containers.RepeatedScalarFieldContainer[str]
    client_id: int
    last_seq: int
    def __init__(self, names: _Optional[_Iterable[str]] = ..., client_id: _Optional[int] = ..., last_seq: _Optional[int] = ...) -> None: ...

class EventInterrupt(_message.Message):
    __slots__ = ("client_id",)
    CLIENT_ID_FIELD_NUMBER: _ClassVar[int]
    client_id: int
    def __init__(self, client_id: _Optional[int] = ...) -> None: ...

class EventQueueStatus(_message.Message):
    __slots__ = ("r", "client_ids")
    R_FIELD_NUMBER: _ClassVar[int]
    CLIENT_IDS_FIELD_NUMBER: _ClassVar[int]
    r: _common_pb2.Result
    client_ids: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, r: _Optional[_Union[_common_pb2.Result, _Mapping]] = ..., client_ids: _Optional[_Iterable[int]] = ...) -> None: ...
