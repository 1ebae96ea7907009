"""EventsListener: the client side of the events service."""

from __future__ import annotations

import logging
import threading
from abc import ABC, abstractmethod
from collections.abc import Iterable

from grpc_helper import tracing
from grpc_helper.api import Event, EventFilter, EventInterrupt, EventStatus, ResultCode
from grpc_helper.backoff import Backoff
from grpc_helper.client import ResponseStream, RpcClient
from grpc_helper.errors import RpcException
from grpc_helper.events.queues import check_name

FIRST_RETRY_DELAY = 0.1  # seconds before the first reconnection attempt
MAX_RETRY_DELAY = 5.0  # ... doubling up to this
# Longest wait for the first status of a stream (seconds; the client's timeout if shorter): a server that
# took the call but never answers it (wedged, or gone without closing the connection) is left, and the
# listener reconnects, rather than waiting forever
FIRST_STATUS_TIMEOUT = 10.0

# Errors that no retry can fix: the listener stops (and keeps the error in `error`)
_FATAL = {
    ResultCode.ERROR_PARAM_MISSING,
    ResultCode.ERROR_PARAM_INVALID,
    ResultCode.ERROR_API_CLIENT_TOO_OLD,
    ResultCode.ERROR_API_SERVER_TOO_OLD,
}


class EventsListener(ABC):
    """Listens to events in a daemon thread, calling `on_event` for every non-empty event.

    `client` is an `RpcClient` (or anything) with an `events` stub; `names` filters events (all if
    empty); `client_id` resumes a queue. Listening starts at once.

    - `client_id`: the id the server gave (or confirmed) for this listener's queue.
    - `ready`: set once the first status arrived (so `client_id` is known); it stays set.
    - `connected`: set while a stream is established, cleared while reconnecting.
    - `error`: the `RpcException` that stopped the listener for good, if any (invalid names, API
      version mismatch).

    After a broken stream or a server shutdown (ERROR_STREAM_SHUTDOWN) it reconnects with backoff
    (0.1 s doubling to 5 s, on top of the client's own retries while the server is unavailable) and
    resumes the same queue, so nothing sent meanwhile is lost: the server sends again what it sent lately
    (the stream may have been dead already), and the listener, saying the last event it got
    (`last_seq`), gets each event once. If the server no longer knows the
    id (ERROR_ITEM_UNKNOWN), it asks for a new one. It stops on `interrupt()`, and also when its
    stream ends normally: the queue was interrupted, or resumed by another stream, elsewhere.
    """

    def __init__(
        self,
        client: RpcClient,
        names: Iterable[str],
        client_id: int | None = None,
        logger: logging.Logger | None = None,
    ) -> None:
        self.client = client
        self.names = list(names)
        for name in self.names:
            check_name(name)  # fail here rather than retrying a request the server always rejects
        self.client_id = client_id or 0
        self.last_seq = 0  # the number of the last event received (EventStatus.seq), said when resuming
        self.logger = logger or logging.getLogger("grpc_helper.events")
        self.ready = threading.Event()
        self.connected = threading.Event()
        self.error: RpcException | None = None
        self._lock = threading.Lock()  # guards _stopping and _stream between the thread and interrupt()
        self._stopping = False
        self._stream: ResponseStream | None = None
        self._wakeup = threading.Event()  # cuts a backoff sleep short on interrupt()
        self._tracing = tracing.configured()  # when configured: on_event runs in a span linked to the sender's
        self._watchdog = threading.Timer(0, lambda: None)  # the current stream's (see FIRST_STATUS_TIMEOUT)
        self._thread = threading.Thread(target=self._run, name=f"events-listener-{id(self):x}", daemon=True)
        self._thread.start()

    @abstractmethod
    def on_event(self, event: Event) -> None:
        """Called in the listener thread for every event received (keep-alives are skipped)."""

    @property
    def is_alive(self) -> bool:
        """True until the listening thread ended."""
        return self._thread.is_alive()

    # --- the listening thread ---
    def _run(self) -> None:
        backoff = Backoff(FIRST_RETRY_DELAY, MAX_RETRY_DELAY)
        while True:
            with self._lock:
                if self._stopping:
                    return
                try:
                    # Starting the call does not block: interrupt() can cancel it from now on
                    request = EventFilter(names=self.names, client_id=self.client_id, last_seq=self.last_seq)
                    stream = self._stream = self.client.events.listen(request)
                except Exception:  # e.g. a client without an `events` stub: no retry will help
                    self.logger.exception("Event listener can't start listening: stop")
                    return
            # Armed until the first status arrives (see FIRST_STATUS_TIMEOUT)
            timeout = min(t for t in (FIRST_STATUS_TIMEOUT, getattr(self.client, "timeout", None)) if t is not None)
            watchdog = threading.Timer(timeout, self._no_first_status, args=(stream,))
            watchdog.daemon = True
            self._watchdog = watchdog
            watchdog.start()
            try:
                self._consume(stream)
                if not self._stopping:
                    self.logger.info("Event queue %s was interrupted or resumed elsewhere: stop", self.client_id)
                return
            except RpcException as exc:
                if self._stopping:
                    return
                if exc.rc == ResultCode.ERROR_ITEM_UNKNOWN and self.client_id:
                    self.logger.warning("Event queue %s unknown to the server: asking for a new one", self.client_id)
                    self.client_id = 0
                    continue
                if exc.rc in _FATAL:
                    self.logger.error("Event listener stops: %s", exc)
                    self.error = exc
                    return
                if self.connected.is_set():
                    backoff.reset()  # it worked until now: reconnect quickly
                self.logger.info(
                    "Event queue %s: stream ended (%s); reconnecting in %.1fs", self.client_id, exc, backoff.delay
                )
            except Exception:
                self.logger.exception(
                    "Event listener of queue %s failed; reconnecting in %.1fs", self.client_id, backoff.delay
                )
            finally:
                watchdog.cancel()
                self.connected.clear()
                with self._lock:
                    self._stream = None
            self._wakeup.wait(backoff.next_delay())

    def _consume(self, stream: Iterable[EventStatus]) -> None:
        first = True
        for status in stream:
            if status.r.code != ResultCode.OK:  # a client built with exception=False doesn't raise
                raise RpcException(status.r.msg, status.r.code)
            if first:
                first = False
                self._watchdog.cancel()
                if status.client_id != self.client_id and self.client_id:
                    self.logger.info("Event queue %s replaced by %s", self.client_id, status.client_id)
                    self.last_seq = 0  # a new queue: its numbers are its own
                self.client_id = status.client_id
                self.connected.set()
                self.ready.set()
                continue
            if status.event.name:
                if status.seq:
                    if status.seq <= self.last_seq:
                        continue  # sent again after a lost stream, and received before it was lost
                    self.last_seq = status.seq
                try:
                    if self._tracing is None:
                        self.on_event(status.event)
                    else:
                        with self._tracing.processing(status.event, status.seq):
                            self.on_event(status.event)
                except Exception:
                    self.logger.exception("Event handler failed on %s", status.event.name)

    def _no_first_status(self, stream: ResponseStream) -> None:
        """The watchdog: no first status in time; the stream is cancelled and the listener reconnects."""
        if not self._stopping:
            self.logger.warning("Event queue %s: no answer to listen in time; reconnecting", self.client_id)
            stream.cancel()

    # --- stopping ---
    def interrupt(self, timeout: float | None = 30) -> None:
        """Stop listening: interrupt the server-side queue (retained for rpc-event-retain-timeout), join the thread.

        Raises the server's `RpcException`, e.g. ERROR_ITEM_UNKNOWN when it no longer knows the
        queue; the thread is stopped anyway. Before the first status (no id yet), or when the
        server is gone, the stream is just cancelled. `timeout` bounds the join (seconds).
        """
        with self._lock:
            self._stopping = True
            self._wakeup.set()
        try:
            if self.client_id and (self.connected.is_set() or not self._thread.is_alive()):
                self.client.events.interrupt(EventInterrupt(client_id=self.client_id))
        finally:
            # The server ends an interrupted stream by itself; cancelling also covers a stream being
            # (re)connected, and an interrupt that failed
            with self._lock:
                stream = self._stream
            if stream is not None:
                stream.cancel()
            if self._thread is not threading.current_thread():  # not from on_event
                self._thread.join(timeout)
