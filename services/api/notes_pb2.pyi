from grpc_helper.api import common_pb2 as _common_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class NotesApiVersion(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    NOTES_API_UNKNOWN: _ClassVar[NotesApiVersion]
    NOTES_API_SUPPORTED: _ClassVar[NotesApiVersion]
    NOTES_API_CURRENT: _ClassVar[NotesApiVersion]
NOTES_API_UNKNOWN: NotesApiVersion
NOTES_API_SUPPORTED: NotesApiVersion
NOTES_API_CURRENT: NotesApiVersion

class Note(_message.Message):
    __slots__ = ("key", "text")
    KEY_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    key: str
    text: str
    def __init__(self, key: _Optional[str] = ..., text: _Optional[str] = ...) -> None: ...

class NoteKey(_message.Message):
    __slots__ = ("key",)
    KEY_FIELD_NUMBER: _ClassVar[int]
    key: str
    def __init__(self, key: _Optional[str] = ...) -> None: ...

class NoteStatus(_message.Message):
    __slots__ = ("r", "note")
    R_FIELD_NUMBER: _ClassVar[int]
    NOTE_FIELD_NUMBER: _ClassVar[int]
    r: _common_pb2.Result
    note: Note
    def __init__(self, r: _Optional[_Union[_common_pb2.Result, _Mapping]] = ..., note: _Optional[_Union[Note, _Mapping]] = ...) -> None: ...

class NoteList(_message.Message):
    __slots__ = ("r", "notes")
    R_FIELD_NUMBER: _ClassVar[int]
    NOTES_FIELD_NUMBER: _ClassVar[int]
    r: _common_pb2.Result
    notes: _containers.RepeatedCompositeFieldContainer[Note]
    def __init__(self, r: _Optional[_Union[_common_pb2.Result, _Mapping]] = ..., notes: _Optional[_Iterable[_Union[Note, _Mapping]]] = ...) -> None: ...
