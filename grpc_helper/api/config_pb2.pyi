from grpc_helper.api import common_pb2 as _common_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ConfigApiVersion(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    CONFIG_API_UNKNOWN: _ClassVar[ConfigApiVersion]
    CONFIG_API_SUPPORTED: _ClassVar[ConfigApiVersion]
    CONFIG_API_CURRENT: _ClassVar[ConfigApiVersion]

class ConfigValidator(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    CONFIG_VALID_STRING: _ClassVar[ConfigValidator]
    CONFIG_VALID_CUSTOM: _ClassVar[ConfigValidator]
    CONFIG_VALID_INT: _ClassVar[ConfigValidator]
    CONFIG_VALID_POS_INT: _ClassVar[ConfigValidator]
    CONFIG_VALID_FLOAT: _ClassVar[ConfigValidator]
    CONFIG_VALID_POS_FLOAT: _ClassVar[ConfigValidator]
CONFIG_API_UNKNOWN: ConfigApiVersion
CONFIG_API_SUPPORTED: ConfigApiVersion
CONFIG_API_CURRENT: ConfigApiVersion
CONFIG_VALID_STRING: ConfigValidator
CONFIG_VALID_CUSTOM: ConfigValidator
CONFIG_VALID_INT: ConfigValidator
CONFIG_VALID_POS_INT: ConfigValidator
CONFIG_VALID_FLOAT: ConfigValidator
CONFIG_VALID_POS_FLOAT: ConfigValidator

class ConfigItem(_message.Message):
    __slots__ = ("name", "description", "value", "default_value", "can_be_empty", "validator")
    NAME_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    DEFAULT_VALUE_FIELD_NUMBER: _ClassVar[int]
    CAN_BE_EMPTY_FIELD_NUMBER: _ClassVar[int]
    VALIDATOR_FIELD_NUMBER: _ClassVar[int]
    name: str
    description: str
    value: str
    default_value: str
    can_be_empty: bool
    validator: ConfigValidator
    def __init__(self, name: _Optional[str] = ..., description: _Optional[str] = ..., value: _Optional[str] = ..., default_value: _Optional[str] = ..., can_be_empty: _Optional[bool] = ..., validator: _Optional[_Union[ConfigValidator, str]] = ...) -> None: ...

class ConfigStatus(_message.Message):
    __slots__ = ("r", "items")
    R_FIELD_NUMBER: _ClassVar[int]
    ITEMS_FIELD_NUMBER: _ClassVar[int]
    r: _common_pb2.Result
    items: _containers.RepeatedCompositeFieldContainer[ConfigItem]
    def __init__(self, r: _Optional[_Union[_common_pb2.Result, _Mapping]] = ..., items: _Optional[_Iterable[_Union[ConfigItem, _Mapping]]] = ...) -> None: ...

class ConfigItemUpdate(_message.Message):
    __slots__ = ("name", "value")
    NAME_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    name: str
    value: str
    def __init__(self, name: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...

class ConfigUpdate(_message.Message):
    __slots__ = ("items", "ignore_unknown")
    ITEMS_FIELD_NUMBER: _ClassVar[int]
    IGNORE_UNKNOWN_FIELD_NUMBER: _ClassVar[int]
    items: _containers.RepeatedCompositeFieldContainer[ConfigItemUpdate]
    ignore_unknown: bool
    def __init__(self, items: _Optional[_Iterable[_Union[ConfigItemUpdate, _Mapping]]] = ..., ignore_unknown: _Optional[bool] = ...) -> None: ...
