"""The grpc-helper wire API: every message and enum of the default services.

The code beside this file is generated from protos/grpc_helper/api/*.proto by
scripts/gen-protos.py; never edit it by hand.
"""

from grpc_helper.api.common_pb2 import Empty, Endpoint, Filter, Result, ResultCode, ResultStatus
from grpc_helper.api.config_pb2 import (
    ConfigApiVersion,
    ConfigItem,
    ConfigItemUpdate,
    ConfigStatus,
    ConfigUpdate,
    ConfigValidator,
)
from grpc_helper.api.events_pb2 import (
    Event,
    EventApiVersion,
    EventFilter,
    EventInterrupt,
    EventProperty,
    EventQueueStatus,
    EventStatus,
)
from grpc_helper.api.logger_pb2 import LoggerApiVersion, LoggerConfig, LoggerLevel, LoggerStatus, LoggerUpdate
from grpc_helper.api.server_pb2 import (
    MethodStat,
    MultiServiceInfo,
    ProxyEndpoint,
    ProxyRegisterRequest,
    ServerApiVersion,
    ServiceInfo,
    ShutdownRequest,
    StatRequest,
    StatStatus,
)

__all__ = [
    "ConfigApiVersion",
    "ConfigItem",
    "ConfigItemUpdate",
    "ConfigStatus",
    "ConfigUpdate",
    "ConfigValidator",
    "Empty",
    "Endpoint",
    "Event",
    "EventApiVersion",
    "EventFilter",
    "EventInterrupt",
    "EventProperty",
    "EventQueueStatus",
    "EventStatus",
    "Filter",
    "LoggerApiVersion",
    "LoggerConfig",
    "LoggerLevel",
    "LoggerStatus",
    "LoggerUpdate",
    "MethodStat",
    "MultiServiceInfo",
    "ProxyEndpoint",
    "ProxyRegisterRequest",
    "Result",
    "ResultCode",
    "ResultStatus",
    "ServerApiVersion",
    "ServiceInfo",
    "ShutdownRequest",
    "StatRequest",
    "StatStatus",
]
