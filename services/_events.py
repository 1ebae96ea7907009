"""EventSender: fire-and-forget event sending for managers, from a background thread."""

from __future__ import annotations

import logging
import threading
from collections import deque
from collections.abc import Callable
from typing import Any

import grpc

from grpc_helper import RpcException, RpcTransportError
from grpc_helper.api import Event, ResultCode
from grpc_helper.backoff import Backoff
from grpc_helper.errors import rc_name


class EventSender:
    """Sends events in order from one daemon thread, so that a slow or absent events server never
    delays (or fails) the calls that produce them.

    - `send(event, timeout)` does one delivery attempt (e.g. `client.events.send(event, timeout=timeout)`).
    - Transport errors (ERROR_RPC: server down or restarting) are retried `attempts` times with a
      growing delay; any other error is logged and the event dropped.
    - At most `max_pending` events wait; beyond that the oldest is dropped (with a warning).
    - Events posted before `start()` wait for it (e.g. until the events server is known).
    """

    def __init__(
        self,
        send: Callable[[Event, float], Any],
        logger: logging.Logger,
        attempts: int = 3,
        call_timeout: float = 3.0,
        first_delay: float = 0.5,
        max_pending: int = 1000,
    ) -> None:
        self._send = send
        self.logger = logger
        self._attempts = attempts
        self._call_timeout = call_timeout
        self._first_delay = first_delay
        self._max_pending = max_pending
        self._pending: deque[Event] = deque()
        self._cond = threading.Condition()
        self._closed = False
        self._abandon = threading.Event()  # set when close() gives up waiting: stop retrying at once
        self._thread = threading.Thread(target=self._run, name="event-sender", daemon=True)

    def start(self) -> None:
        """Start delivering (once)."""
        if not self._thread.is_alive() and not self._closed:
            self._thread.start()

    def post(self, event: Event) -> None:
        """Queue an event; never blocks."""
        with self._cond:
            if self._closed:
                self.logger.warning("Event %s dropped: sender closed", event.name)
                return
            if len(self._pending) >= self._max_pending:
                dropped = self._pending.popleft()
                self.logger.warning("Too many pending events: oldest %s dropped", dropped.name)
            self._pending.append(event)
            self._cond.notify()

    def close(self, timeout: float = 5.0) -> None:
        """Deliver what is pending within `timeout` seconds, then stop (what is left is dropped)."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        if self._thread.is_alive():
            self._thread.join(timeout)
        if self._thread.is_alive():
            self._abandon.set()  # the thread stops at its next retry; it is a daemon, don't wait for it
        with self._cond:
            left = len(self._pending)
            self._pending.clear()
        if left:
            self.logger.warning("%d pending event(s) dropped at shutdown", left)

    @property
    def pending(self) -> int:
        with self._cond:
            return len(self._pending)

    # --- worker ---
    def _run(self) -> None:
        while True:
            with self._cond:
                self._cond.wait_for(lambda: bool(self._pending) or self._closed)
                if not self._pending or self._abandon.is_set():
                    return  # closed, and everything was delivered (or given up)
                event = self._pending.popleft()
            self._deliver(event)

    def _deliver(self, event: Event) -> None:
        backoff = Backoff(self._first_delay, cap=float("inf"))  # `attempts` bounds the retries
        for attempt in range(1, self._attempts + 1):
            try:
                self._send(event, self._call_timeout)
                return
            except RpcException as exc:
                if not _transient(exc) or attempt == self._attempts:
                    self.logger.warning(
                        "Event %s not sent (attempt %d): %s: %s", event.name, attempt, rc_name(exc.rc), exc
                    )
                    return
                self.logger.info("Event %s not sent yet (attempt %d): %s; retrying", event.name, attempt, exc)
            except Exception as exc:  # e.g. the client was closed under us at shutdown
                self.logger.warning("Event %s not sent: %r", event.name, exc)
                return
            if self._abandon.wait(backoff.next_delay()):
                self.logger.warning("Event %s dropped at shutdown", event.name)
                return


def _transient(exc: RpcException) -> bool:
    """Worth a retry: the server is down, restarting or slow (not e.g. a main server without events)."""
    if isinstance(exc, RpcTransportError):
        return exc.status in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)
    return exc.rc == ResultCode.ERROR_RPC  # an inner RPC error the server answered with
