"""Event queues: one per listener id, bounded, persisted while nobody is listening."""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Iterable
from typing import Any

from grpc_helper.api import Event, EventProperty

_log = logging.getLogger("grpc_helper.events")


class EventQueue:
    """Events waiting for one listener.

    `listener` is a token of the stream currently attached (None: interrupted or disconnected,
    the queue is then *retained* since `retained_since`). A new stream attaching with the same id
    takes over: the previous stream sees its token replaced and ends.
    """

    def __init__(self, client_id: int, names: Iterable[str] = (), events: Iterable[Event] = ()) -> None:
        self.client_id = client_id
        self.names: frozenset[str] = frozenset(names)
        self.events: deque[Event] = deque(events)
        self.cond = threading.Condition()
        self.listener: object | None = None
        self.retained_since: float | None = time.monotonic()
        self.dropped = 0

    def accepts(self, name: str) -> bool:
        return not self.names or name in self.names

    def push(self, event: Event, limit: int) -> None:
        """Append, dropping the oldest event when full: a sender is never blocked."""
        with self.cond:
            if len(self.events) >= limit:
                while len(self.events) >= limit:
                    self.events.popleft()
                self.dropped += 1
                if self.dropped == 1 or self.dropped % 1000 == 0:
                    _log.warning(
                        "Event queue %s is full (%s events): dropped its oldest event (%s dropped so far)",
                        self.client_id,
                        limit,
                        self.dropped,
                    )
            self.events.append(event)
            self.cond.notify()

    # --- persistence shape: {"names": [...], "events": [{"name": ..., "properties": [[k, v], ...]}]} ---
    def to_json(self) -> dict[str, Any]:
        with self.cond:
            events = [{"name": e.name, "properties": [[p.name, p.value] for p in e.properties]} for e in self.events]
        return {"names": sorted(self.names), "events": events}

    @classmethod
    def from_json(cls, client_id: int, data: Any) -> EventQueue:
        if not isinstance(data, dict):  # legacy queues.json: ids only
            return cls(client_id)
        events = [
            Event(
                name=str(e["name"]), properties=[EventProperty(name=str(k), value=str(v)) for k, v in e["properties"]]
            )
            for e in data.get("events", [])
        ]
        return cls(client_id, [str(n) for n in data.get("names", [])], events)
