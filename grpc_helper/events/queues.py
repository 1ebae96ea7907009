"""Event queues: one per listener id, bounded, resumable, persisted while nobody drains them."""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Iterable
from contextlib import suppress
from queue import Empty, SimpleQueue
from threading import Lock
from typing import Any

from grpc_helper.api import Event, EventProperty, ResultCode
from grpc_helper.errors import RpcException
from grpc_helper.limits import quote

_log = logging.getLogger("grpc_helper.events")

# While a queue overflows, warn at its first drop and then every this many drops (not on each one)
_DROP_WARN_EVERY = 1000


def check_name(name: str) -> None:
    """An event name (sent, or in a filter) must be non-empty and have no space."""
    if not name:
        raise RpcException("Missing event name", ResultCode.ERROR_PARAM_MISSING)
    if " " in name:
        raise RpcException(f"Invalid event name (contains a space): {quote(name)}", ResultCode.ERROR_PARAM_INVALID)


class EventQueue:
    """Events waiting for one listener id.

    `owner` is a token of the stream currently draining the queue. None means nobody: the queue is
    *retained* (since `retained_since`) until a stream resumes it or the retain timeout expires.
    A stream attaching with the same id takes the queue over: the previous owner sees its token
    replaced and ends.

    Hot path: `push` is one short lock, an append and, only if the owner sleeps, one wake-up. The
    wake-up channel is a C `SimpleQueue` rather than a `Condition`: far less Python per event, and
    the owner drains everything pending at each wake-up.
    """

    __slots__ = (
        "_lock",
        "_logger",
        "_sleeping",
        "_wake",
        "client_id",
        "closed",
        "dropped",
        "events",
        "names",
        "owner",
        "retained_since",
    )

    def __init__(
        self,
        client_id: int,
        names: Iterable[str] = (),
        events: Iterable[Event] = (),
        logger: logging.Logger | None = None,
    ) -> None:
        self.client_id = client_id
        self.names: frozenset[str] = frozenset(names)
        self.events: deque[Event] = deque(events)
        self.owner: object | None = None
        self.retained_since: float | None = time.monotonic()
        self.closed = False  # the service shuts down: the owner must end (the queue itself is kept)
        self.dropped = 0  # events dropped since the queue was last drained
        self._logger = logger or _log
        self._lock = Lock()
        self._sleeping = False
        self._wake: SimpleQueue[None] = SimpleQueue()

    def accepts(self, name: str) -> bool:
        return not self.names or name in self.names

    # --- producer side ---
    def push(self, event: Event, limit: int) -> None:
        """Append `event`; a full queue drops its oldest event (a sender is never blocked)."""
        dropped = 0
        with self._lock:
            events = self.events
            if len(events) >= limit:
                while len(events) >= limit:  # `limit` may have been lowered meanwhile
                    events.popleft()
                    self.dropped += 1
                dropped = self.dropped
            events.append(event)
            if self._sleeping:
                self._sleeping = False
                self._wake.put(None)
        if dropped and (dropped == 1 or dropped % _DROP_WARN_EVERY == 0):
            self._logger.warning(
                "Event queue %s is full (rpc-event-queue-max=%s): dropped its oldest event (%s so far)",
                self.client_id,
                limit,
                dropped,
            )

    def wake(self) -> None:
        """Wake the owner up if it sleeps, so that it checks whether it must end."""
        with self._lock:
            if self._sleeping:
                self._sleeping = False
                self._wake.put(None)

    # --- ownership ---
    def attach(self, token: object) -> bool:
        """Make `token` the owner; True if it took the queue over from a live stream (woken to end)."""
        with self._lock:
            previous = self.owner
            self.owner, self.retained_since = token, None
        if previous is not None:
            self.wake()
        return previous is not None

    def detach(self, token: object | None = None) -> bool:
        """Retain the queue if `token` (or, for None, anybody) owns it; False if it was not owned so."""
        with self._lock:
            if self.owner is None or (token is not None and self.owner is not token):
                return False
            self.owner, self.retained_since = None, time.monotonic()
        self.wake()
        return True

    def close(self) -> None:
        """The service shuts down: the owner ends; the queue and its events are kept."""
        with self._lock:
            self.closed = True
        self.wake()

    def expired(self, now: float, retain: float) -> bool:
        """Retained for more than `retain` seconds."""
        with self._lock:
            return self.owner is None and self.retained_since is not None and now - self.retained_since > retain

    # --- consumer side ---
    def take(self, token: object, timeout: float) -> list[Event] | None:
        """Everything pending, waiting up to `timeout` seconds for something (then []).

        None when `token` must stop: it no longer owns the queue, or the service shuts down
        (pending events then stay queued, to be persisted and resumed).
        """
        batch = self._drain(token, sleep=True)
        if batch is None or batch:
            return batch
        with suppress(Empty):  # woken up, or timed out
            self._wake.get(timeout=timeout)
        return self._drain(token, sleep=False)

    def _drain(self, token: object, *, sleep: bool) -> list[Event] | None:
        with self._lock:
            self._sleeping = False
            if self.owner is not token or self.closed:
                return None
            events = self.events
            if not events:
                # Announce the sleep under the lock: any push or wake() after this point puts a token
                self._sleeping = sleep
                return []
            batch = list(events)
            events.clear()
            dropped, self.dropped = self.dropped, 0
        if dropped:
            self._logger.warning("Event queue %s dropped %s of its oldest events while full", self.client_id, dropped)
        return batch

    def refilter(self, names: frozenset[str]) -> int:
        """Replace the filter by a non-empty `names`, dropping pending events it does not accept; how many."""
        with self._lock:
            self.names = names
            events = self.events
            kept = [e for e in events if e.name in names]
            dropped = len(events) - len(kept)
            if dropped:
                events.clear()
                events.extend(kept)
        return dropped

    # --- persistence ---
    def events_json(self) -> list[dict[str, Any]]:
        """The pending events, in order: `[{"name": ..., "properties": [[name, value], ...]}, ...]`."""
        with self._lock:
            events = list(self.events)  # the (cheap) copy under the lock; conversion outside it
        return [{"name": e.name, "properties": [[p.name, p.value] for p in e.properties]} for e in events]

    @classmethod
    def from_json(
        cls, client_id: int, events: Any, names: Any = (), logger: logging.Logger | None = None
    ) -> EventQueue:
        """Inverse of `events_json`, with the filter `names` (kept apart); ValueError if malformed."""
        if not isinstance(events, list):
            raise ValueError(f"queue {client_id}: expected a list of events, got {type(events).__name__}")
        if not isinstance(names, (list, tuple)) or not all(isinstance(n, str) for n in names):
            raise ValueError(f"queue {client_id}: the filter must be a list of event names")
        return cls(client_id, names, [_event_from_json(e) for e in events], logger)


def _event_from_json(data: Any) -> Event:
    if not isinstance(data, dict) or not isinstance(data.get("name"), str):
        raise ValueError(f"invalid event {data!r}")
    props = data.get("properties", [])
    if not isinstance(props, list) or not all(
        isinstance(p, list) and len(p) == 2 and all(isinstance(x, str) for x in p) for p in props
    ):
        raise ValueError(f"invalid properties in event {data!r}")
    return Event(name=data["name"], properties=[EventProperty(name=k, value=v) for k, v in props])
