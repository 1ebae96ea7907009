"""The events service: named events fanned out to listener queues.

Design:
- One `EventQueue` per listener id. `send` appends to every queue whose filter accepts the event
  (O(listeners), never blocking: full queues drop their oldest event) and notifies it.
- `listen` runs on the server's stream pool (`_long_lived_methods`), not on the bounded worker
  pool, and drains its queue in batches. It ends on `interrupt`, on a take-over by another
  stream resuming the same id, on client disconnect, or with ERROR_STREAM_SHUTDOWN at shutdown.
- A queue whose listener went away (interrupt or disconnect) is *retained* for
  `rpc-event-retain-timeout` seconds, still collecting events, so the listener can resume.
- Persistence (workspace `queues.json`): every queue id, filter, and the events queued for it.
  Writing happens off the hot path: a background thread writes at most every 100 ms after a change
  that matters (queue created/retained/dropped, events queued for a retained queue), and at
  shutdown (when live queues are saved with their pending events, to be resumed after a restart).
  Events queued for a *live* listener are delivered within milliseconds, so they are not written on
  each send: a crash loses at most the last 100 ms of retained-queue changes.
- Delivery is at most once: an event taken from the queue is gone even if the stream breaks
  while sending it.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

from grpc_helper._persist import read_json, write_json
from grpc_helper.api import (
    Empty,
    Event,
    EventFilter,
    EventInterrupt,
    EventQueueStatus,
    EventStatus,
    Result,
    ResultCode,
    ResultStatus,
)
from grpc_helper.api.events_pb2_grpc import EventServiceServicer
from grpc_helper.config.static import RpcStaticConfig
from grpc_helper.errors import RpcException
from grpc_helper.events.queues import EventQueue
from grpc_helper.manager import RpcManager
from grpc_helper.server.dispatch import current_call

QUEUES_FILE = "queues.json"
_FLUSH_INTERVAL = 0.1


def _check_name(name: str) -> None:
    if not name:
        raise RpcException("Missing event name", ResultCode.ERROR_PARAM_MISSING)
    if " " in name:
        raise RpcException(f"Invalid event name (contains a space): {name!r}", ResultCode.ERROR_PARAM_INVALID)


class EventsManager(EventServiceServicer, RpcManager):
    """`events`: listen / interrupt / send / inspect."""

    _long_lived_methods = ("listen",)

    def __init__(self) -> None:
        super().__init__()
        self._queues: dict[int, EventQueue] = {}
        self._next_id = 1
        self._closing = False
        self._dirty = threading.Event()
        self._janitor: threading.Thread | None = None
        self._path: Path | None = None

    # --- lifecycle ---
    def _load(self) -> None:
        super()._load()
        wks = self.folders.workspace
        self._path = wks / QUEUES_FILE if wks is not None else None
        self._restore()
        self._janitor = threading.Thread(target=self._background, name="events-janitor", daemon=True)
        self._janitor.start()

    def _shutdown(self) -> None:
        with self.lock:
            self._closing = True
            queues = list(self._queues.values())
        for q in queues:
            with q.cond:
                q.cond.notify_all()
        self._dirty.set()
        if self._janitor is not None:
            self._janitor.join(10)
        self._save()
        super()._shutdown()

    def _restore(self) -> None:
        data = read_json(self._path, {})
        entries = data.get("queues", {}) if isinstance(data, dict) else {str(i): None for i in data}
        for key, value in entries.items():
            try:
                client_id = int(key)
                self._queues[client_id] = EventQueue.from_json(client_id, value)
            except (KeyError, TypeError, ValueError) as exc:
                self.logger.warning("Ignoring invalid persisted event queue %r in %s: %s", key, self._path, exc)
        if isinstance(data, dict) and isinstance(data.get("next_id"), int):
            self._next_id = data["next_id"]
        self._next_id = max([self._next_id, *(i + 1 for i in self._queues)])
        if self._queues:
            self.logger.info("Restored event queues %s", sorted(self._queues))

    def _background(self) -> None:
        """Expire retained queues and write queues.json when it changed (at most every 100 ms)."""
        while not self._closing:
            self._dirty.wait(0.5)
            if self._closing:
                return
            self._expire()
            if self._dirty.is_set():
                self._dirty.clear()
                self._save()
                time.sleep(_FLUSH_INTERVAL)  # coalesce bursts of changes into one write

    def _expire(self) -> None:
        retain = RpcStaticConfig.EVENT_RETAIN_TIMEOUT.int_val
        now = time.monotonic()
        with self.lock:
            expired = [
                q.client_id
                for q in self._queues.values()
                if q.listener is None and q.retained_since is not None and now - q.retained_since > retain
            ]
            for client_id in expired:
                del self._queues[client_id]
        if expired:
            self.logger.info("Dropped event queues %s (not resumed within %ss)", expired, retain)
            self._dirty.set()

    def _save(self) -> None:
        if self._path is None:
            return
        with self.lock:
            queues = {str(i): q.to_json() for i, q in self._queues.items()}
            next_id = self._next_id
        try:
            write_json(self._path, {"next_id": next_id, "queues": queues})
        except OSError as exc:
            self.logger.error("Can't persist event queues in %s: %s", self._path, exc)

    # --- service ---
    def send(self, request: Event) -> ResultStatus:
        _check_name(request.name)
        limit = RpcStaticConfig.EVENT_QUEUE_MAX.int_val
        retained = False
        for q in list(self._queues.values()):
            if q.accepts(request.name):
                q.push(request, limit)
                retained = retained or q.listener is None
        if retained:
            self._dirty.set()
        return ResultStatus()

    def inspect(self, request: Empty) -> EventQueueStatus:
        self._expire()
        with self.lock:
            return EventQueueStatus(client_ids=sorted(self._queues))

    def interrupt(self, request: EventInterrupt) -> ResultStatus:
        with self.lock:
            q = self._queues.get(request.client_id)
            if q is None:
                raise RpcException(f"Unknown event queue: {request.client_id}", ResultCode.ERROR_ITEM_UNKNOWN)
            with q.cond:
                if q.listener is None:
                    raise RpcException(
                        f"Event queue {request.client_id} is already interrupted", ResultCode.ERROR_STATE_UNEXPECTED
                    )
                self._retain(q)
        self._dirty.set()
        return ResultStatus()

    @staticmethod
    def _retain(q: EventQueue) -> None:
        """Detach the listener (caller holds q.cond); the queue is kept for the retain timeout."""
        q.listener = None
        q.retained_since = time.monotonic()
        q.cond.notify_all()

    def listen(self, request: EventFilter) -> Iterator[EventStatus]:
        for name in request.names:
            _check_name(name)
        token = object()
        with self.lock:
            if self._closing:
                raise RpcException("Events service is shutting down", ResultCode.ERROR_STREAM_SHUTDOWN)
            if request.client_id:
                q = self._queues.get(request.client_id)
                if q is None:
                    raise RpcException(f"Unknown event queue: {request.client_id}", ResultCode.ERROR_ITEM_UNKNOWN)
                if request.names:
                    q.names = frozenset(request.names)
            else:
                q = EventQueue(self._next_id, request.names)
                self._next_id += 1
                self._queues[q.client_id] = q
            with q.cond:
                if q.listener is not None:
                    self.logger.info("Event queue %s resumed by a new stream: ending the previous one", q.client_id)
                q.listener, q.retained_since = token, None
                q.cond.notify_all()
        self._dirty.set()
        client_id = q.client_id

        call = current_call()
        if call is not None:  # client gone: wake up the loop so this thread is released at once
            call.context.add_callback(lambda: self._disconnected(q, token))

        yield EventStatus(client_id=client_id)
        keepalive = RpcStaticConfig.EVENT_KEEPALIVE_TIMEOUT.int_val
        while True:
            with q.cond:
                if not q.events and q.listener is token and not self._closing:
                    q.cond.wait(keepalive)
                if q.listener is not token:
                    return  # interrupted, disconnected or taken over
                if self._closing:
                    break
                batch = list(q.events)
                q.events.clear()
            if not batch:
                yield EventStatus(client_id=client_id)  # keep-alive
                keepalive = RpcStaticConfig.EVENT_KEEPALIVE_TIMEOUT.int_val
            for event in batch:
                yield EventStatus(event=event, client_id=client_id)
        # Shutdown: the queue is kept (persisted) so the listener can resume on the next server
        yield EventStatus(
            r=Result(code=ResultCode.ERROR_STREAM_SHUTDOWN, msg="Events service is shutting down"), client_id=client_id
        )

    def _disconnected(self, q: EventQueue, token: object) -> None:
        with q.cond:
            if q.listener is token:
                self._retain(q)
                self._dirty.set()
