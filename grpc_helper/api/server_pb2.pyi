from grpc_helper.api import common_pb2 as _common_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ServerApiVersion(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    SERVER_API_UNKNOWN: _ClassVar[ServerApiVersion]
    SERVER_API_SUPPORTED: _ClassVar[ServerApiVersion]
    SERVER_API_CURRENT: _ClassVar[ServerApiVersion]
SERVER_API_UNKNOWN: ServerApiVersion
SERVER_API_SUPPORTED: ServerApiVersion
SERVER_API_CURRENT: ServerApiVersion

class ServiceInfo(_message.Message):
    __slots__ = ("name", "version", "current_api_version", "supported_api_version", "is_proxy", "proxy_host", "proxy_port", "endpoints", "renewable", "channel_target")
    NAME_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    CURRENT_API_VERSION_FIELD_NUMBER: _ClassVar[int]
    SUPPORTED_API_VERSION_FIELD_NUMBER: _ClassVar[int]
    IS_PROXY_FIELD_NUMBER: _ClassVar[int]
    PROXY_HOST_FIELD_NUMBER: _ClassVar[int]
    PROXY_PORT_FIELD_NUMBER: _ClassVar[int]
    ENDPOINTS_FIELD_NUMBER: _ClassVar[int]
    RENEWABLE_FIELD_NUMBER: _ClassVar[int]
    CHANNEL_TARGET_FIELD_NUMBER: _ClassVar[int]
    name: str
    version: str
    current_api_version: int
    supported_api_version: int
    is_proxy: bool
    proxy_host: str
    proxy_port: int
    endpoints: _containers.RepeatedCompositeFieldContainer[ProxyEndpoint]
    renewable: bool
    channel_target: str
    def __init__(self, name: _Optional[str] = ..., version: _Optional[str] = ..., current_api_version: _Optional[int] = ..., supported_api_version: _Optional[int] = ..., is_proxy: _Optional[bool] = ..., proxy_host: _Optional[str] = ..., proxy_port: _Optional[int] = ..., endpoints: _Optional[_Iterable[_Union[ProxyEndpoint, _Mapping]]] = ..., renewable: _Optional[bool] = ..., channel_target: _Optional[str] = ...) -> None: ...

class ProxyEndpoint(_message.Message):
    __slots__ = ("host", "port", "version", "serving", "channel_target")
    HOST_FIELD_NUMBER: _ClassVar[int]
    PORT_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    SERVING_FIELD_NUMBER: _ClassVar[int]
    CHANNEL_TARGET_FIELD_NUMBER: _ClassVar[int]
    host: str
    port: int
    version: str
    serving: bool
    channel_target: str
    def __init__(self, host: _Optional[str] = ..., port: _Optional[int] = ..., version: _Optional[str] = ..., serving: _Optional[bool] = ..., channel_target: _Optional[str] = ...) -> None: ...

class MultiServiceInfo(_message.Message):
    __slots__ = ("r", "items")
    R_FIELD_NUMBER: _ClassVar[int]
    ITEMS_FIELD_NUMBER: _ClassVar[int]
    r: _common_pb2.Result
    items: _containers.RepeatedCompositeFieldContainer[ServiceInfo]
    def __init__(self, r: _Optional[_Union[_common_pb2.Result, _Mapping]] = ..., items: _Optional[_Iterable[_Union[ServiceInfo, _Mapping]]] = ...) -> None: ...

class ShutdownRequest(_message.Message):
    __slots__ = ("timeout",)
    TIMEOUT_FIELD_NUMBER: _ClassVar[int]
    timeout: int
    def __init__(self, timeout: _Optional[int] = ...) -> None: ...

class ProxyRegisterRequest(_message.Message):
    __slots__ = ("names", "version", "host", "port", "renew", "grpc_services")
    NAMES_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    HOST_FIELD_NUMBER: _ClassVar[int]
    PORT_FIELD_NUMBER: _ClassVar[int]
    RENEW_FIELD_NUMBER: _ClassVar[int]
    GRPC_SERVICES_FIELD_NUMBER: _ClassVar[int]
    names: _containers.RepeatedScalarFieldContainer[str]
    version: str
    host: str
    port: int
    renew: bool
    grpc_services: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, names: _Optional[_Iterable[str]] = ..., version: _Optional[str] = ..., host: _Optional[str] = ..., port: _Optional[int] = ..., renew: _Optional[bool] = ..., grpc_services: _Optional[_Iterable[str]] = ...) -> None: ...

class StatRequest(_message.Message):
    __slots__ = ("names", "window", "idle")
    NAMES_FIELD_NUMBER: _ClassVar[int]
    WINDOW_FIELD_NUMBER: _ClassVar[int]
    IDLE_FIELD_NUMBER: _ClassVar[int]
    names: _containers.RepeatedScalarFieldContainer[str]
    window: int
    idle: bool
    def __init__(self, names: _Optional[_Iterable[str]] = ..., window: _Optional[int] = ..., idle: _Optional[bool] = ...) -> None: ...

class MethodStat(_message.Message):
    __slots__ = ("service", "method", "seconds", "calls", "failures", "p50", "p95", "p99")
    SERVICE_FIELD_NUMBER: _ClassVar[int]
    METHOD_FIELD_NUMBER: _ClassVar[int]
    SECONDS_FIELD_NUMBER: _ClassVar[int]
    CALLS_FIELD_NUMBER: _ClassVar[int]
    FAILURES_FIELD_NUMBER: _ClassVar[int]
    P50_FIELD_NUMBER: _ClassVar[int]
    P95_FIELD_NUMBER: _ClassVar[int]
    P99_FIELD_NUMBER: _ClassVar[int]
    service: str
    method: str
    seconds: float
    calls: int
    failures: int
    p50: float
    p95: float
    p99: float
    def __init__(self, service: _Optional[str] = ..., method: _Optional[str] = ..., seconds: _Optional[float] = ..., calls: _Optional[int] = ..., failures: _Optional[int] = ..., p50: _Optional[float] = ..., p95: _Optional[float] = ..., p99: _Optional[float] = ...) -> None: ...

class StatStatus(_message.Message):
    __slots__ = ("r", "items")
    R_FIELD_NUMBER: _ClassVar[int]
    ITEMS_FIELD_NUMBER: _ClassVar[int]
    r: _common_pb2.Result
    items: _containers.RepeatedCompositeFieldContainer[MethodStat]
    def __init__(self, r: _Optional[_Union[_common_pb2.Result, _Mapping]] = ..., items: _Optional[_Iterable[_Union[MethodStat, _Mapping]]] = ...) -> None: ...
