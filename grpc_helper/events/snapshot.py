"""queues.json, the snapshot of the event queues in the shape grpc-helper 2.x reads: read, and written as a stream.

`{"<id>": [event, ...], ...}`: an event is `{"name": ..., "properties": [[name, value], ...]}`; one that several
queues hold also has an `"id"` where it first appears and is `{"ref": <id>}` after (ids local to the file), so
the file is proportional to what is pending, not to events x queues.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

from grpc_helper.api import Event, EventProperty
from grpc_helper.events.queues import Pending, pending_of

# Events per chunk handed to the file: the writer releases the GIL between chunks (live calls go on)
_CHUNK_EVENTS = 4096


def event_json(item: Pending) -> dict[str, Any]:
    """`{"name": ..., "properties": [[k, v], ...]}` for a pending event."""
    event = Event.FromString(item[1])
    return {"name": event.name, "properties": [[p.name, p.value] for p in event.properties]}


def snapshot_chunks(queues: list[tuple[int, list[Pending]]]) -> Iterator[bytes]:
    """queues.json as chunks of bytes, for `persist.write_stream`: no document is built in memory (a dict per
    entry cost ~250 bytes each, i.e. hundreds of MB for a million entries, and json.dumps held the GIL for
    seconds). Memory: one counter per distinct event, and one chunk."""
    held: dict[int, int] = {}  # id(item) -> in how many places (items are alive: the lists hold them)
    for _, items in queues:
        for item in items:
            key = id(item)
            held[key] = held.get(key, 0) + 1
    refs: dict[int, str] = {}  # id(item) -> its reference, once written: `{"ref": n}`
    yield b"{"
    for n, (cid, items) in enumerate(queues):
        yield f'{", " if n else ""}\n"{cid}": ['.encode()
        parts: list[str] = []
        first = True  # no chunk of this list written yet
        for item in items:
            key = id(item)
            ref = refs.get(key)
            if ref is not None:
                parts.append(ref)
            else:
                entry = event_json(item)
                if held[key] > 1:
                    entry["id"] = len(refs) + 1
                    refs[key] = f'{{"ref": {entry["id"]}}}'
                parts.append(json.dumps(entry))
            if len(parts) >= _CHUNK_EVENTS:
                yield _join(parts, first=first)
                parts, first = [], False
        if parts:
            yield _join(parts, first=first)
        yield b"]"
    yield b"\n}\n"


def events_from_json(
    client_id: int, events: Any, shared: dict[int, Pending], interned: dict[bytes, Pending]
) -> list[Pending]:
    """The pending events of queue `client_id` in queues.json; ValueError if malformed. `shared`: the events
    with an "id" met so far in the file; `interned`: every event read so far, by content (each kept once)."""
    if not isinstance(events, list):
        raise ValueError(f"queue {client_id}: expected a list of events, got {type(events).__name__}")
    return [_pending_from_json(e, shared, interned) for e in events]


def intern_pending(item: Pending, interned: dict[bytes, Pending]) -> Pending:
    """The one shared `Pending` for this content."""
    return interned.setdefault(item[1], item)


def _pending_from_json(data: Any, shared: dict[int, Pending], interned: dict[bytes, Pending]) -> Pending:
    if isinstance(data, dict) and set(data) == {"ref"}:
        item = shared.get(data["ref"]) if isinstance(data["ref"], int) else None
        if item is None:
            raise ValueError(f"unknown event reference {data!r}")
        return item
    if not isinstance(data, dict) or not isinstance(data.get("name"), str):
        raise ValueError(f"invalid event {data!r}")
    props = data.get("properties", [])
    if not isinstance(props, list) or not all(
        isinstance(p, list) and len(p) == 2 and all(isinstance(x, str) for x in p) for p in props
    ):
        raise ValueError(f"invalid properties in event {data!r}")
    event = Event(name=data["name"], properties=[EventProperty(name=k, value=v) for k, v in props])
    item = intern_pending(pending_of(event), interned)
    if "id" in data:
        if not isinstance(data["id"], int) or data["id"] in shared:
            raise ValueError(f"invalid event id in {data!r}")
        shared[data["id"]] = item
    return item


def _join(parts: list[str], *, first: bool) -> bytes:
    """Entries of a list, comma-separated; a chunk after the first one of its list starts with a comma."""
    return (("" if first else ", ") + ", ".join(parts)).encode()
