"""EventsListener: the client side of the events service."""

from __future__ import annotations

import logging
import threading
from abc import ABC, abstractmethod
from collections.abc import Iterable
from typing import Any

from grpc_helper.api import Event, EventFilter, EventInterrupt, ResultCode
from grpc_helper.errors import RpcException

_FIRST_RETRY_DELAY = 0.1
_MAX_RETRY_DELAY = 5.0


class EventsListener(ABC):
    """Listens to events in a daemon thread, calling `on_event` for each non-empty event.

    `client` is an `RpcClient` with an `events` stub. Listening starts at once; `ready` is set
    when the server has given (or confirmed) `client_id`. After a server restart or a broken
    stream it reconnects with backoff and resumes its queue; if the server no longer knows the
    id, it asks for a new one. `interrupt()` stops it; so does an interrupt of its queue by
    anyone else (the server then ends the stream normally).
    """

    def __init__(
        self, client: Any, names: Iterable[str], client_id: int | None = None, logger: logging.Logger | None = None
    ) -> None:
        self.client = client
        self.names = list(names)
        self.client_id = client_id or 0
        self.logger = logger or logging.getLogger("grpc_helper.events")
        self.ready = threading.Event()
        self._stopping = threading.Event()
        self._stream: Any = None
        self._thread = threading.Thread(target=self._run, name=f"events-listener-{id(self):x}", daemon=True)
        self._thread.start()

    @abstractmethod
    def on_event(self, event: Event) -> None:
        """Called (in the listener thread) for every event received."""

    def _run(self) -> None:
        delay = _FIRST_RETRY_DELAY
        while not self._stopping.is_set():
            try:
                self._stream = self.client.events.listen(EventFilter(names=self.names, client_id=self.client_id))
                for status in self._stream:
                    if status.client_id and not self.ready.is_set():
                        self.client_id = status.client_id
                        self.ready.set()
                        delay = _FIRST_RETRY_DELAY
                    if status.event.name:
                        self._deliver(status.event)
                # A stream that ends without error was interrupted (or taken over by another stream)
                self.logger.info("Event stream of queue %s ended by the server", self.client_id)
                return
            except RpcException as exc:
                if self._stopping.is_set():
                    return
                if exc.rc == ResultCode.ERROR_ITEM_UNKNOWN and self.client_id:
                    self.logger.warning("Event queue %s unknown to the server: asking for a new one", self.client_id)
                    self.client_id = 0
                    continue
                self.logger.info("Event stream of queue %s broken (%s); reconnecting", self.client_id, exc)
            if not self._stopping.is_set():
                self.ready.clear()  # set again once the stream is back
            self._stopping.wait(delay)
            delay = min(delay * 2, _MAX_RETRY_DELAY)

    def _deliver(self, event: Event) -> None:
        try:
            self.on_event(event)
        except Exception:
            self.logger.exception("Event handler failed on %s", event.name)

    def interrupt(self, timeout: float | None = 30) -> None:
        """Stop listening: interrupts the server queue and joins the thread.

        Raises `RpcException(ERROR_ITEM_UNKNOWN)` if the server no longer knows the queue.
        """
        self._stopping.set()
        try:
            if self.client_id:
                self.client.events.interrupt(EventInterrupt(client_id=self.client_id))
        finally:
            stream = self._stream
            if stream is not None and self._thread.is_alive():
                self._thread.join(min(timeout or 1.0, 1.0))
                if self._thread.is_alive():
                    stream.cancel()  # e.g. the server is gone: don't wait for a stream that won't end
            self._thread.join(timeout)
