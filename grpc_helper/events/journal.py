"""The event queues' journal: what changed since queues.json was written, appended as it happens.

Persistence costs what changes, not what is kept: a send to retained queues appends one line (its event,
once), and the whole state is written (compacted into queues.json, the snapshot 2.x reads) in the background,
off every lock, only once the journal has grown to a share of the snapshot (see `EventsManager._compact`).

Files, in the workspace: `queues-journal-<gen>.jsonl`, one JSON list per line:

- `["base", [mtime_ns, size, inode]]`: the queues.json this journal follows (its `persist.file_stamp`), written
  just before that snapshot replaces the previous one;
- `["new", id, [names], creator]`: a queue made (listened to);
- `["ev", name, base64]`: an event (serialized) queued for every retained queue accepting `name`;
- `["keep", id, [[name, base64], ...]]`: the queue is retained (interrupted, or its stream lost), holding these;
- `["live", id]`: the queue is listened to again (what it held is being delivered: not persisted any more);
- `["filter", id, [names]]`: its filter replaced (pending events it does not accept dropped);
- `["drop", [ids]]`: queues dropped (expired, or beyond the retained bounds).

At load: queues.json, then the journals from the newest one whose base is the present queues.json on (none
matches: queues.json was written by another program, e.g. 2.x, after ours: the journals are obsolete). A
torn last line (a crash in the middle of an append) is ignored. Records are written by a thread within
`FLUSH_PERIOD` (fsync'ed), or at once by `sync` (a new queue id is on disk before its status is sent).
Replaying a record twice only duplicates an event (at-least-once across a crash), never loses one.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import re
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from grpc_helper.events.queues import Pending
from grpc_helper.events.snapshot import intern_pending

PREFIX = "queues-journal-"
SUFFIX = ".jsonl"
FLUSH_PERIOD = 0.05  # seconds: records appended are on disk (written and fsync'ed) within this
_NAME = re.compile(rf"{re.escape(PREFIX)}(\d+){re.escape(SUFFIX)}")

Record = tuple[Any, ...]


def journal_path(folder: Path, gen: int) -> Path:
    return folder / f"{PREFIX}{gen}{SUFFIX}"


def generations(folder: Path) -> list[int]:
    """The journals present in `folder`, oldest first."""
    gens = [int(m.group(1)) for p in folder.glob(f"{PREFIX}*{SUFFIX}") if (m := _NAME.fullmatch(p.name))]
    return sorted(gens)


@dataclass
class QueueState:
    """A queue as the files say, while they are read."""

    names: list[str]
    creator: str | None = None
    events: list[Pending] = field(default_factory=list)
    retained: bool = True


def _read_lines(path: Path) -> list[list[Any]]:
    """The records of a journal; a torn last line is ignored, any other unreadable line is a ValueError."""
    lines = path.read_bytes().split(b"\n")
    records = []
    for n, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            if not isinstance(record, list) or not record or not isinstance(record[0], str):
                raise ValueError(f"not a record: {line[:80]!r}")
        except ValueError as exc:
            if n == len(lines) - 1:  # the last line, not ended: an append cut by a crash
                break
            raise ValueError(f"{path.name}, line {n + 1}: {exc}") from exc
        records.append(record)
    return records


def read_journals(folder: Path, stamp: tuple[int, int, int], logger: logging.Logger) -> list[list[Any]]:
    """The records that follow the queues.json of `stamp`, in order (see the module doc)."""
    gens = generations(folder)
    found = [(gen, _read_lines(journal_path(folder, gen))) for gen in gens]
    start = None
    for i, (_, records) in enumerate(found):
        if any(r[0] == "base" and r[1:] == [list(stamp)] for r in records):
            start = i
    if start is None:
        if found:
            logger.warning("Event queue journals %s ignored: queues.json was written after them", gens)
        return []
    return [r for _, records in found[start:] for r in records]


def _pending(value: Any, interned: dict[bytes, Pending]) -> Pending:
    name, data = value
    if not isinstance(name, str) or not isinstance(data, str):
        raise ValueError(f"invalid event {value!r}")
    return intern_pending((name, base64.b64decode(data, validate=True)), interned)


def replay(records: list[list[Any]], queues: dict[int, QueueState], interned: dict[bytes, Pending]) -> None:
    """Apply journal records to the queues read from queues.json; ValueError on a malformed record."""
    for record in records:
        try:
            _apply(record, queues, interned)
        except (TypeError, ValueError, IndexError) as exc:
            raise ValueError(f"invalid journal record {str(record)[:200]}: {exc}") from exc


def _apply(record: list[Any], queues: dict[int, QueueState], interned: dict[bytes, Pending]) -> None:
    op = record[0]
    if op == "ev":
        item = _pending(record[1:3], interned)
        for q in queues.values():
            if q.retained and (not q.names or item[0] in q.names):
                q.events.append(item)
    elif op == "new":
        _, cid, names, creator = record
        known = queues.get(cid)
        if known is None:
            queues[cid] = QueueState(list(names), creator, retained=False)
        else:
            known.names, known.creator = list(names), creator
    elif op == "keep":
        _, cid, events = record
        kept = queues.setdefault(cid, QueueState([]))
        kept.events, kept.retained = [_pending(e, interned) for e in events], True
    elif op in ("live", "filter"):
        _set_live_or_filter(record, queues.get(record[1]))
    elif op == "drop":
        for cid in record[1]:
            queues.pop(cid, None)
    elif op != "base":
        raise ValueError(f"unknown record {op!r}")


def _set_live_or_filter(record: list[Any], q: QueueState | None) -> None:
    if q is None:
        return
    if record[0] == "live":
        q.events, q.retained = [], False
    else:
        q.names = list(record[2])
        q.events = [item for item in q.events if item[0] in q.names]


def _encode(record: Record) -> bytes:
    op = record[0]
    out: list[Any]
    if op == "ev":
        name, data = record[1]
        out = ["ev", name, base64.b64encode(data).decode()]
    elif op == "keep":
        out = ["keep", record[1], [[name, base64.b64encode(data).decode()] for name, data in record[2]]]
    else:
        out = list(record)
    return json.dumps(out, separators=(",", ":")).encode() + b"\n"


class Journal:
    """The journal being written: `append` is a list append (the hot path: no I/O, no encoding); a thread
    encodes, writes and fsyncs what was appended every `FLUSH_PERIOD`."""

    def __init__(self, folder: Path, gen: int, logger: logging.Logger) -> None:
        self.folder = folder
        self.gen = gen
        self.size = 0  # bytes written to the present file
        self.changes = 0  # records appended since the present file was opened (its base excluded)
        self._logger = logger
        self._buffer: list[Record] = []
        self._buffer_lock = threading.Lock()  # the hot path's: held for an append or a swap
        self._file_lock = threading.Lock()  # one writer (flush, rotation) at a time
        self._fd = self._open(gen)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="events-journal", daemon=True)
        self._thread.start()

    def _open(self, gen: int) -> int:
        return os.open(journal_path(self.folder, gen), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)

    def append(self, record: Record) -> None:
        with self._buffer_lock:
            self._buffer.append(record)
            if record[0] != "base":
                self.changes += 1

    def sync(self) -> None:
        """Write and fsync what was appended, now."""
        with self._file_lock:
            self._flush()

    def _flush(self) -> None:
        """(caller holds self._file_lock)"""
        with self._buffer_lock:
            records, self._buffer = self._buffer, []
        if not records:
            return
        data = b"".join(_encode(r) for r in records)
        try:
            os.write(self._fd, data)  # one append: a crash leaves at most its last line torn
            os.fsync(self._fd)
            self.size += len(data)
        except OSError as exc:
            self._logger.error("Can't write the event queue journal %s: %s", journal_path(self.folder, self.gen), exc)

    def rotate(self) -> int:
        """Go on in a new file (the next generation); the previous generation, whose records are all written."""
        with self._file_lock:
            self._flush()
            old, fd = self.gen, self._fd
            self.gen += 1
            self._fd = self._open(self.gen)
            os.close(fd)
            with self._buffer_lock:
                self.size, self.changes = 0, len([r for r in self._buffer if r[0] != "base"])
        return old

    def remove_through(self, gen: int) -> None:
        """Delete the journals up to generation `gen` (a snapshot holds what they say)."""
        for old in generations(self.folder):
            if old <= gen:
                journal_path(self.folder, old).unlink(missing_ok=True)

    def _run(self) -> None:
        while not self._stop.wait(FLUSH_PERIOD):
            self.sync()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(10)
        with self._file_lock:
            self._flush()
            os.close(self._fd)
