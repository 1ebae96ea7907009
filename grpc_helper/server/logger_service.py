"""Manager of the default `log` service (LoggerService)."""

from __future__ import annotations

from grpc_helper.api import Filter, LoggerStatus, LoggerUpdate
from grpc_helper.api.logger_pb2_grpc import LoggerServiceServicer
from grpc_helper.server._base import _DefaultManager


class LoggerServiceManager(LoggerServiceServicer, _DefaultManager):
    """`log`: levels and enabled state of loggers, persisted in the workspace."""

    def get(self, request: Filter) -> LoggerStatus:
        return LoggerStatus(items=self.server.loggers.get(request.names))

    def set(self, request: LoggerUpdate) -> LoggerStatus:
        return LoggerStatus(items=self.server.loggers.set(request.items))

    def reset(self, request: Filter) -> LoggerStatus:
        return LoggerStatus(items=self.server.loggers.reset(request.names))
