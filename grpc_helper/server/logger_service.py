"""Manager of the default `log` service (LoggerService)."""

from __future__ import annotations

from grpc_helper.api import Filter, LoggerStatus, LoggerUpdate
from grpc_helper.api.logger_pb2_grpc import LoggerServiceServicer
from grpc_helper.limits import check_request
from grpc_helper.logs import LoggersConfig
from grpc_helper.manager import RpcManager


class LoggerServiceManager(LoggerServiceServicer, RpcManager):
    """`log`: levels and enabled state of loggers, persisted in the workspace. Requests are bounded
    (`check_request`) before any work."""

    def __init__(self, loggers: LoggersConfig) -> None:
        super().__init__()
        self._loggers = loggers

    def get(self, request: Filter) -> LoggerStatus:
        check_request(request)
        return LoggerStatus(items=self._loggers.get(request.names))

    def set(self, request: LoggerUpdate) -> LoggerStatus:
        check_request(request)
        return LoggerStatus(items=self._loggers.set(request.items))

    def reset(self, request: Filter) -> LoggerStatus:
        check_request(request)
        return LoggerStatus(items=self._loggers.reset(request.names))
