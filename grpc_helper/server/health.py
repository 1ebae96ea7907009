"""The server's `grpc.health.v1.Health` service.

Why not grpc_health's `HealthServicer`: it sends Watch responses while holding its lock, and
grpcio's `send_response` waits for the send to complete, which grpcio's server thread reports;
that same thread runs a closing Watch's callback, which takes the lock. With clients that keep
Watch streams open (gRPC's client-side health checking, as main's channels to its backends do),
the two meet and the server hangs (seen at shutdown). Here no lock is held while sending: each
watcher sends under a lock of its own, and always the status current when it sends (so two
concurrent changes can't leave a watcher with the older one).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

Status = int  # a HealthCheckResponse.ServingStatus value
SERVING: Status = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING: Status = health_pb2.HealthCheckResponse.NOT_SERVING
_UNKNOWN: Status = health_pb2.HealthCheckResponse.SERVICE_UNKNOWN

SendResponse = Callable[[Any], None]  # grpcio's non-blocking send_response_callback (None ends the call)


class _Watcher:
    """One Watch stream."""

    def __init__(self, service: str, send: SendResponse) -> None:
        self.service = service
        self._send = send
        self._lock = threading.Lock()
        self._sent: Status | None = None
        self.ended = False

    def push(self, status: Callable[[str], Status]) -> None:
        """Send the service's current `status`, if it is not the last one sent."""
        with self._lock:
            current = status(self.service)
            if not self.ended and current != self._sent:
                self._sent = current
                self._send(health_pb2.HealthCheckResponse(status=current))

    def end(self) -> None:
        with self._lock:
            if not self.ended:
                self.ended = True
                self._send(None)


class HealthService(health_pb2_grpc.HealthServicer):  # type: ignore[misc]  # grpc_health has no type information
    """Statuses by service name ("" for the whole server), answered to Check and pushed to Watch
    streams; after `enter_graceful_shutdown`, every status is NOT_SERVING for good."""

    def __init__(self) -> None:
        self._lock = threading.Lock()  # never held while sending
        self._statuses: dict[str, Status] = {"": SERVING}
        self._watchers: set[_Watcher] = set()
        self._shutting_down = False

    def _status(self, service: str) -> Status:
        with self._lock:
            return self._statuses.get(service, _UNKNOWN)

    def set(self, service: str, status: Status) -> None:
        """Set the status of `service`, and tell its watchers (ignored once shutting down)."""
        with self._lock:
            if self._shutting_down:
                return
            self._statuses[service] = status
            watchers = [w for w in self._watchers if w.service == service]
        for watcher in watchers:
            watcher.push(self._status)

    def enter_graceful_shutdown(self) -> None:
        """Every status NOT_SERVING from now on, told to every watcher."""
        with self._lock:
            self._shutting_down = True
            self._statuses = dict.fromkeys(self._statuses, NOT_SERVING)
            watchers = list(self._watchers)
        for watcher in watchers:
            watcher.push(self._status)

    def end_watches(self) -> None:
        """End every Watch stream with OK: a connected watcher must not hold a shutdown."""
        with self._lock:
            watchers = list(self._watchers)
        for watcher in watchers:
            watcher.end()

    # --- the service ---
    def Check(self, request: health_pb2.HealthCheckRequest, context: grpc.ServicerContext) -> Any:
        with self._lock:
            status = self._statuses.get(request.service)
        if status is None:
            context.abort(grpc.StatusCode.NOT_FOUND, f"Unknown service {request.service!r}")
        return health_pb2.HealthCheckResponse(status=status)

    def Watch(self, request: health_pb2.HealthCheckRequest, context: grpc.ServicerContext, send: SendResponse) -> None:
        """A non-blocking Watch (see `server._register_health`): the current status now, then each change."""
        watcher = _Watcher(request.service, send)

        def closed() -> None:
            # Runs on grpcio's server thread when the call ends: takes no lock a sender may hold
            watcher.ended = True
            with self._lock:
                self._watchers.discard(watcher)

        with self._lock:
            self._watchers.add(watcher)
        context.add_callback(closed)
        watcher.push(self._status)
