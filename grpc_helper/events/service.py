"""The events service: named events fanned out to per-listener queues.

Threads and locking:
- `send` (worker pool, or a plain call from other managers) walks an immutable tuple of the queues
  (replaced, never mutated, under `self.lock` when queues come and go), so it takes no manager
  lock: per accepting queue, one short queue lock, an append, and a task for the delivery threads
  if its listener has none scheduled yet.
  O(listeners), never blocking: a full queue drops its oldest event with a warning.
- `listen` is a pushed stream (`calls.pushed_stream`): the call opens or resumes its queue, sends the
  first status and returns; it holds no thread while it lasts. Its events are sent by two delivery
  threads (`threads.Deliveries`), which take the listeners that have something to send from one queue
  and send everything pending at once: an event for 500 listeners keeps two threads busy instead of
  waking 500, which would starve every other call of the GIL (bench/fanout_load.py). A delivery
  thread stuck on a listener that stopped reading (its flow-control window full) is relieved by a new
  one within about a second. A stream ends on `interrupt`, on a take-over (another stream resuming
  the same id), on client disconnect (a gRPC callback retains the queue), and with
  ERROR_STREAM_SHUTDOWN at shutdown; the janitor has idle listeners send their keep-alives.
- `self.lock` guards the id -> queue map, id allocation and ownership changes.
- One background thread (`events-janitor`) drops expired retained queues, compacts the journal into
  `queues.json`, and asks for keep-alives; another (`events-journal`) writes the journal.

Retention: a queue whose stream went away (interrupt or disconnect) is *retained* for
`rpc-event-retain-timeout` seconds, still collecting the events its filter accepts, and resumed
by a `listen` with its `client_id`. A `listen` with the id of a queue that is still being listened
to takes it over: the previous stream ends normally (no error), as if interrupted, and the new one
gets everything pending. A non-empty filter given when resuming replaces the queue's filter, and
drops the pending events it does not accept.

Logged at INFO, once each: `Starting new event listening queue #<id>` (a `listen` creating a
queue), `Resuming interrupted event listening queue #<id>` (a `listen` given a known id), and
`Event listening queue #<id> interrupted` when a listen stream ends, whatever the reason.

Persistence, in the workspace (files written atomically, see below).
`queues.json` has the shape grpc-helper 2.x reads and writes, so either generation picks the
workspace up: every queue id (live or retained) as a decimal string, with its pending events in
order (the original writes empty lists, and reads only the keys: no other top-level key)::

    {"3": [{"name": "A", "properties": [["k", "v"]]}], "5": []}

The filters can't go there: they are in `queues-filters.json`, `{"3": ["A", "B"]}`, only for the
queues that have one (a missing file or id accepts every name, e.g. a queue created by 2.x).
At restore, every id becomes a retained queue, and the next id to hand out is the largest id + 1.
While running, ids go up and are never reused while a queue holds them (wrapping around the
uint32 range). Older files are read too, and rewritten in the current shape on the next write:
what this module wrote before (`{"next_id": 12, "queues": {"3": {"names": ["A"], "events": [...]}}}`,
its `next_id` kept) and a plain list of ids. A malformed file stops the start with
ERROR_MODEL_INVALID and is left as it is.

When it is written, i.e. crash safety vs cost (issue 20): changes go to an append-only journal
(`journal.py`: queue made, retained with what it holds, resumed, refiltered, dropped; an event sent to
retained queues, once), written and fsync'ed by its own thread within 50 ms; a `listen` creating a queue
has its record on disk before the status carrying the id is sent. Never on the hot path: `send` appends
a tuple to a list (nothing when no retained queue accepts the event). The janitor compacts the journal
into queues.json (streamed, off every lock) once the journal reaches a quarter of the snapshot's size or a
minute after a change, at most ~10% of its time. At shutdown queues.json is written last, with the events
still pending for live listeners. So a crash loses at most the last ~50 ms of changes to retained queues,
and the events in flight to live listeners; their ids survive.

Delivery is at most once: an event taken from a queue is gone, even if the stream then breaks.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

from grpc_helper import tracing
from grpc_helper.api import (
    Empty,
    Event,
    EventFilter,
    EventInterrupt,
    EventQueueStatus,
    EventStatus,
    ResultCode,
    ResultStatus,
)
from grpc_helper.api.events_pb2_grpc import EventServiceServicer
from grpc_helper.auth import check_owner, current_identity
from grpc_helper.calls import PushStream, pushed_stream
from grpc_helper.config.static import RpcStaticConfig
from grpc_helper.errors import RpcException
from grpc_helper.events.journal import Journal, QueueState, generations, read_journals, replay
from grpc_helper.events.queues import EventQueue, Listener, Pending, check_name, pending_of
from grpc_helper.events.snapshot import events_from_json, snapshot_chunks
from grpc_helper.limits import check_request, quote
from grpc_helper.manager import RpcManager
from grpc_helper.metrics import (
    DROPPED_MAX_RETAINED,
    DROPPED_MAX_RETAINED_BYTES,
    DROPPED_RETAIN_TIMEOUT,
    EVENT_QUEUES,
    EVENTS_SENT,
)
from grpc_helper.persist import file_stamp, read_json, read_json_object, write_json, write_stream
from grpc_helper.threads import Deliveries

QUEUES_FILE = "queues.json"
FILTERS_FILE = "queues-filters.json"  # {"<id>": [names]}: the filters, which queues.json can't hold
OWNERS_FILE = "queues-owners.json"  # {"<id>": identity}: who created each queue, with a policy on
MAX_CLIENT_ID = 0xFFFFFFFF  # client_id is a uint32; 0 means "none"
_SAVE_DUTY = 0.1  # at most this share of the janitor's time spent compacting the journal into queues.json
# Compact once the journal is this share of the snapshot (amortized: a snapshot costs what changed since the
# last one); a small snapshot also after this many seconds with changes (queues.json, which 2.x reads, stays
# recent while that is cheap; a big one is never rewritten for the time that passed)
_COMPACT_SHARE = 0.25
_COMPACT_PERIOD = 60.0
_COMPACT_SMALL = 1 << 20  # bytes
_EXPIRE_PERIOD = 0.5  # seconds between two checks for expired retained queues (and for keep-alives)
# Threads sending to listeners (more only while some are stuck on a listener that stopped reading): on 2
# cores, 1-2 threads keep 500 listeners at 10 events/s under 20 ms p99 for everybody else (bench/fanout_load.py)
_DELIVERY_THREADS = 2


class EventsManager(EventServiceServicer, RpcManager):
    """The `events` service: listen / interrupt / send / inspect (see the module doc)."""

    _long_lived_methods = ("listen",)

    def __init__(self) -> None:
        super().__init__()
        self._queues: dict[int, EventQueue] = {}
        self._fanout: tuple[EventQueue, ...] = ()  # what send walks; replaced under self.lock
        self._next_id = 1
        self._closing = False
        self._path: Path | None = None  # queues.json
        self._filters_path: Path | None = None  # queues-filters.json
        self._journal: Journal | None = None  # what changed since queues.json (None: no workspace)
        self._snapshot_size = 0  # bytes of the last queues.json written
        self._compacted_at = time.monotonic()
        self._save_lock = threading.Lock()  # serializes compactions (janitor, start, shutdown)
        self._stopping = threading.Event()
        self._janitor: threading.Thread | None = None
        self._deliveries: Deliveries | None = None
        self._tracing: tracing.Tracing | None = None  # set at load when configured: events carry the trace

    # --- lifecycle ---
    def _load(self) -> None:
        super()._load()
        wks = self.folders.workspace
        self._path = wks / QUEUES_FILE if wks is not None else None
        self._filters_path = wks / FILTERS_FILE if wks is not None else None
        self._deliveries = Deliveries(_DELIVERY_THREADS, RpcStaticConfig.MAX_STREAMS.int_val, "events-delivery")
        self._tracing = tracing.configured()
        self._restore()
        self._janitor = threading.Thread(target=self._background, name="events-janitor", daemon=True)
        self._janitor.start()
        EVENT_QUEUES.add(self)  # its queues counted when scraped, until shut down

    def queue_sizes(self) -> list[tuple[bool, int]]:
        """(retained, bytes pending) of each queue (`metrics.EventQueues`): read without locks, a moment's view."""
        return [(q.owner is None, q.size) for q in self._fanout]

    def _shutdown(self) -> None:
        EVENT_QUEUES.discard(self)
        with self.lock:
            self._closing = True
            queues = list(self._queues.values())
        for q in queues:
            q.close()  # their streams end with ERROR_STREAM_SHUTDOWN; the queues are kept
        self._stopping.set()
        if self._janitor is not None:
            self._janitor.join(30)
        self._compact()  # everything, the events pending for live listeners too
        if self._journal is not None:
            self._journal.close()
        if self._deliveries is not None:
            self._deliveries.stop()  # once the last statuses queued by q.close() above are sent
        super()._shutdown()

    # --- persistence ---
    def _restore(self) -> None:
        """The queues from queues.json and the journals after it; then a fresh journal (and snapshot)."""
        if self._path is None:
            return
        data = read_json(self._path, None)
        filters = self._read_filters()
        assert self._deliveries is not None
        wks = self._path.parent
        try:
            entries, next_id = self._parse(data, filters) if data is not None else ({}, 1)
            shared: dict[int, Pending] = {}  # events several queues hold, written once (see snapshot.py)
            interned: dict[bytes, Pending] = {}  # every event once, by content
            states: dict[int, QueueState] = {}
            for cid, (events, names) in entries.items():
                if not isinstance(names, (list, tuple)) or not all(isinstance(n, str) for n in names):
                    raise ValueError(f"queue {cid}: the filter must be a list of event names")
                states[cid] = QueueState(list(names), events=events_from_json(cid, events, shared, interned))
            for key, owner in read_json_object(wks / OWNERS_FILE, (str,), "event queue owners").items():
                st = states.get(_queue_id(key)) if key.isdecimal() else None
                if st is not None:
                    st.creator = owner
            replay(read_journals(wks, file_stamp(self._path), self.logger), states, interned)
        except (TypeError, ValueError) as exc:
            msg = f"Invalid event queues file {self._path} (or its journal): {exc}"
            raise RpcException(msg, ResultCode.ERROR_MODEL_INVALID) from exc
        limit, max_bytes = RpcStaticConfig.EVENT_QUEUE_MAX.int_val, RpcStaticConfig.EVENT_QUEUE_MAX_BYTES.int_val
        queues = {}
        for cid, st in states.items():
            q = EventQueue(cid, st.names, _newest(st.events, limit, max_bytes), self.logger, self._deliveries.put)
            q.creator = st.creator
            queues[cid] = q
        with self.lock:
            self._queues = queues
            self._fanout = tuple(queues.values())
            self._next_id = max([next_id, *(cid + 1 for cid in queues)])
        gens = generations(wks)
        self._journal = Journal(wks, (gens[-1] if gens else 0) + 1, self.logger)
        if gens:
            self._compact()  # the journals read become one snapshot, and go
        else:
            self._journal.append(("base", list(file_stamp(self._path))))
            self._journal.sync()
        if queues:
            self.logger.info("Restored event queues %s from %s", sorted(queues), self._path)

    def _read_filters(self) -> dict[int, list[str]]:
        """The filters of queues.json's queues, from their own file: {id: names}."""
        data = read_json_object(self._filters_path, (list,), "event queue filters")
        try:
            filters = {_queue_id(key): names for key, names in data.items()}
            for names in filters.values():
                if not all(isinstance(n, str) for n in names):
                    raise ValueError(f"a filter must be a list of event names: {names!r}")
        except ValueError as exc:
            msg = f"Invalid event queue filters file {self._filters_path}: {exc}"
            raise RpcException(msg, ResultCode.ERROR_MODEL_INVALID) from exc
        return filters

    @staticmethod
    def _parse(data: Any, filters: dict[int, list[str]]) -> tuple[dict[int, tuple[Any, Any]], int]:
        """({id: (events, filter names)}, next id) from queues.json in any of its shapes (see the module doc)."""
        if isinstance(data, list):  # the oldest shape: the ids only
            ids = [_queue_id(key) for key in data]
            return {cid: ([], filters.get(cid, [])) for cid in ids}, 1
        if not isinstance(data, dict):
            raise ValueError("expected an object of queue ids to lists of events")
        if "queues" not in data and "next_id" not in data:  # the current shape
            entries: dict[int, tuple[Any, Any]] = {}
            for key, events in data.items():
                cid = _queue_id(key)
                entries[cid] = (events, filters.get(cid, []))
            return entries, 1
        # The previous shape: {"next_id": N, "queues": {id: {"names": [...], "events": [...]}}}
        next_id = data.get("next_id", 1)
        if not isinstance(next_id, int) or isinstance(next_id, bool) or not 0 < next_id <= MAX_CLIENT_ID + 1:
            raise ValueError(f"invalid next_id {next_id!r}")
        queues = data.get("queues", {})
        if not isinstance(queues, dict):
            raise ValueError("'queues' must be an object")
        entries = {}
        for key, value in queues.items():
            if not isinstance(value, dict):
                raise ValueError(f"queue {key}: expected an object, got {type(value).__name__}")
            entries[_queue_id(key)] = (value.get("events", []), value.get("names", []))
        return entries, next_id

    def _compact(self) -> None:
        """Write the whole state as queues.json (and its filters and owners), then drop the journals it holds.

        Off every lock but the queues' own, one at a time: the journal goes on in a new file first, so what
        changes meanwhile is in the new file (maybe in the snapshot too: replayed twice, an event is
        duplicated, never lost). The new file names the snapshot (its base) before the snapshot replaces
        the previous one: a crash at any point leaves a snapshot and the journals that follow it."""
        journal, path, filters_path = self._journal, self._path, self._filters_path
        if journal is None or path is None or filters_path is None:
            return
        with self._save_lock:
            old = journal.rotate()
            with self.lock:
                queues = sorted(self._queues.values(), key=lambda q: q.client_id)
            snapshot = [(q.client_id, q.pending()) for q in queues]
            filters = {str(q.client_id): sorted(q.names) for q in queues if q.names}
            owners = {str(q.client_id): q.creator for q in queues if q.creator is not None}
            owners_path = path.with_name(OWNERS_FILE)

            def name_base(stamp: tuple[int, int, int]) -> None:
                journal.append(("base", list(stamp)))
                journal.sync()

            try:
                # Filters and owners first: one whose queue is not written yet is ignored at restore. A
                # workspace that never had one gets no such file.
                if filters or filters_path.exists():
                    write_json(filters_path, filters)
                if owners or owners_path.exists():
                    write_json(owners_path, owners)
                self._snapshot_size = write_stream(path, snapshot_chunks(snapshot), before_rename=name_base)
            except OSError as exc:
                # The previous snapshot and every journal stay: nothing is lost, the next compaction retries
                self.logger.error("Can't persist event queues in %s: %s", path, exc)
                return
            journal.remove_through(old)
            self._compacted_at = time.monotonic()

    def _compaction_due(self, now: float) -> bool:
        journal = self._journal
        if journal is None or not journal.changes:
            return False
        if journal.size >= _COMPACT_SHARE * self._snapshot_size:
            return True
        return self._snapshot_size < _COMPACT_SMALL and now - self._compacted_at >= _COMPACT_PERIOD

    def _background(self) -> None:
        """The janitor: drop expired retained queues, keep-alives, compact the journal when due."""
        next_compaction = 0.0
        while not self._stopping.wait(_EXPIRE_PERIOD):
            self._expire()
            self._keepalives()
            now = time.monotonic()
            if now >= next_compaction and self._compaction_due(now):
                self._compact()
                spent = time.monotonic() - now
                next_compaction = now + spent / _SAVE_DUTY  # at most ~10% of the janitor's time

    def _journal_keep(self, q: EventQueue) -> None:
        """Journal that `q` is retained, with what it holds (taken after it was detached: a send after that
        journals its event for it)."""
        if self._journal is not None:
            self._journal.append(("keep", q.client_id, q.pending()))

    def _keepalives(self) -> None:
        """Each queue's periodic work (`EventQueue.tick`: live listeners that sent nothing for
        `rpc-event-keepalive-timeout` send a keep-alive, ...); a delivery thread stuck on a listener that
        stopped reading is relieved by another one."""
        now, timeout = time.monotonic(), RpcStaticConfig.EVENT_KEEPALIVE_TIMEOUT.int_val
        for q in self._fanout:
            q.tick(now, timeout)
        if self._deliveries is not None:
            self._deliveries.check_stalls()

    # --- queues ---
    def _alloc_id(self) -> int:
        """A non-zero uint32 id no queue holds (caller holds self.lock); ids go up, wrapping around."""
        cid = self._next_id
        for _ in range(len(self._queues) + 1):
            if not 0 < cid <= MAX_CLIENT_ID:
                cid = 1
            if cid not in self._queues:
                self._next_id = cid + 1
                return cid
            cid += 1
        raise RpcException("No event queue id left", ResultCode.ERROR_STATE_UNREACHABLE)  # 2**32 - 1 queues

    def _expire(self) -> None:
        """Drop the retained queues not resumed in time, then the longest retained beyond `rpc-event-max-retained`
        queues or `rpc-event-max-retained-bytes` of events (a client can open any number of queues and walk
        away: what is kept for absent listeners is bounded)."""
        retain = RpcStaticConfig.EVENT_RETAIN_TIMEOUT.int_val
        most = RpcStaticConfig.EVENT_MAX_RETAINED.int_val
        max_bytes = RpcStaticConfig.EVENT_MAX_RETAINED_BYTES.int_val
        now = time.monotonic()
        with self.lock:
            expired = [cid for cid, q in self._queues.items() if q.expired(now, retain)]
            for cid in expired:
                DROPPED_RETAIN_TIMEOUT.inc(len(self._queues.pop(cid).events))
            # Newest retained first: keep them while within both bounds, drop the rest
            retained = sorted(
                ((since, q) for q in self._queues.values() if (since := q.retained_since) is not None),
                key=lambda entry: entry[0],
                reverse=True,
            )
            excess, kept_bytes = [], 0
            for n, (_, q) in enumerate(retained):
                kept_bytes += q.size
                if n >= most or kept_bytes > max_bytes:
                    excess.append(q.client_id)
                    # The events it held go with it, dropped by the bound it broke
                    (DROPPED_MAX_RETAINED if n >= most else DROPPED_MAX_RETAINED_BYTES).inc(len(q.events))
            for cid in excess:
                del self._queues[cid]
            if expired or excess:
                self._fanout = tuple(self._queues.values())
        if expired:
            self.logger.info("Dropped event queues %s (not resumed within %ss)", quote(expired), retain)
        if excess:
            self.logger.warning(
                "Dropped event queues %s (more than rpc-event-max-retained=%s queues or"
                " rpc-event-max-retained-bytes=%s bytes retained)",
                quote(excess),
                most,
                max_bytes,
            )
        if (expired or excess) and self._journal is not None:
            self._journal.append(("drop", [*expired, *excess]))

    def _gone(self, q: EventQueue, listener: Listener) -> None:
        """gRPC callback at the end of a listen call: if the client went away, retain its queue."""
        # At shutdown the stream ended with a last status sent after its events: nothing to send again (the
        # restored queue numbers its events anew, so a resuming listener could not skip them: duplicates)
        if q.detach(listener, lost=not q.closed) and not q.closed:
            self.logger.info("Event queue %s retained: its listener went away", q.client_id)
            self._journal_keep(q)

    # --- service ---
    def send(self, request: Event) -> ResultStatus:
        """Queue `request` for every live or retained queue accepting its name (the event is shared, not copied)."""
        check_request(request)
        check_name(request.name)
        EVENTS_SENT.inc()
        name = request.name
        limit, max_bytes = RpcStaticConfig.EVENT_QUEUE_MAX.int_val, RpcStaticConfig.EVENT_QUEUE_MAX_BYTES.int_val
        if self._tracing is not None:
            request = self._tracing.carry(request)  # the sender's context, as properties every listener gets
        item = pending_of(request)  # one object, however many queues hold it
        retained = False
        for q in self._fanout:
            names = q.names
            if (not names or name in names) and q.push(item, limit, max_bytes):
                retained = True
        if retained and self._journal is not None:
            self._journal.append(("ev", item))  # kept for an absent listener: worth persisting (encoded later)
        return ResultStatus()

    def inspect(self, request: Empty) -> EventQueueStatus:
        check_request(request)  # nothing to bound today: checked like every request of a default service
        self._expire()
        caller = current_identity()
        with self.lock:
            if caller is None:
                return EventQueueStatus(client_ids=sorted(self._queues))
            # With a policy on, a caller sees its own queues only (and those nobody owns, e.g. restored from 2.x)
            return EventQueueStatus(
                client_ids=sorted(cid for cid, q in self._queues.items() if q.creator in (None, caller.name))
            )

    def interrupt(self, request: EventInterrupt) -> ResultStatus:
        check_request(request)
        with self.lock:
            q = self._queues.get(request.client_id)
            if q is None:
                raise RpcException(f"Unknown event queue: {request.client_id}", ResultCode.ERROR_ITEM_UNKNOWN)
            check_owner(q.creator, f"Event queue {request.client_id}")
            if not q.detach():
                raise RpcException(
                    f"Event queue {request.client_id} is already interrupted", ResultCode.ERROR_STATE_UNEXPECTED
                )
        self._journal_keep(q)  # the stream's end logs the interruption
        return ResultStatus()

    @pushed_stream
    def listen(self, request: EventFilter, stream: PushStream) -> None:
        """Open (or resume) a queue and send its id; its events follow from the delivery threads."""
        check_request(request)
        names = list(request.names)
        for name in names:
            check_name(name)
        q, dropped, listener, took_over = self._open_queue(request.client_id, names, stream)
        if request.client_id and request.last_seq:
            skipped = q.skip_through(request.last_seq)  # before anything is sent: the listener got them
            if skipped:
                self.logger.info(
                    "Event queue %s: %s events sent again skipped (the listener got them)", q.client_id, skipped
                )
        journal = self._journal
        if journal is not None:
            if request.client_id:
                if dropped:
                    journal.append(("filter", q.client_id, sorted(q.names)))
                journal.append(("live", q.client_id))
            else:
                # A new id is on disk before the status carrying it is sent: a client may rely on it after a
                # crash (issue 17). One short append per listen start
                journal.append(("new", q.client_id, sorted(q.names), q.creator))
                journal.sync()
        cid = q.client_id
        if request.client_id:
            self.logger.info("Resuming interrupted event listening queue #%s", cid)
        else:
            self.logger.info("Starting new event listening queue #%s", cid)
        if dropped:
            self.logger.info("Event queue %s: dropped %s pending events its new filter does not accept", cid, dropped)
        if took_over:
            self.logger.info("Event queue %s resumed by a new stream: the previous one ends", cid)
        # From here on the stream ends exactly once, whatever the reason (listener.finish)
        if not stream.context.add_callback(lambda: self._gone(q, listener)):
            self._gone(q, listener)  # the call is already over
        stream.send(EventStatus(client_id=cid))
        listener.run()  # what is pending already; then it runs on the delivery threads

    def _open_queue(
        self, client_id: int, names: list[str], stream: PushStream
    ) -> tuple[EventQueue, int, Listener, bool]:
        """The queue a `listen` resumes (`client_id`) or creates, now owned by a new listener on `stream`:
        (queue, events dropped by a new filter, the listener, whether it took the queue over from another)."""
        with self.lock:
            if self._closing:
                raise RpcException("The events service is shutting down", ResultCode.ERROR_STREAM_SHUTDOWN)
            dropped = 0
            q = self._queues.get(client_id) if client_id else None
            if client_id and q is None:
                raise RpcException(f"Unknown event queue: {client_id}", ResultCode.ERROR_ITEM_UNKNOWN)
            if q is not None:
                check_owner(q.creator, f"Event queue {client_id}")
            if q is None or q.owner is None:  # one more live listener (a take-over replaces one)
                self._check_live_limit()
            if q is not None:
                if names:
                    dropped = q.refilter(frozenset(names))
            else:
                assert self._deliveries is not None  # made by _load
                q = EventQueue(self._alloc_id(), names, logger=self.logger, schedule=self._deliveries.put)
                caller = current_identity()
                q.creator = caller.name if caller is not None else None
                self._queues[q.client_id] = q
                self._fanout = (*self._fanout, q)
            listener = Listener(q, stream, self._ended)
            return q, dropped, listener, q.attach(listener)

    def _check_live_limit(self) -> None:
        """Live listeners hold no thread, but memory (a queue of up to `rpc-event-queue-max-bytes`): at most
        `rpc-max-streams` of them (caller holds self.lock)."""
        most = RpcStaticConfig.MAX_STREAMS.int_val
        if sum(1 for q in self._queues.values() if q.owner is not None) >= most:
            raise RpcException(f"Too many event listeners (rpc-max-streams={most})", ResultCode.ERROR_ITEM_BUSY)

    def _ended(self, listener: Listener) -> None:
        self.logger.info("Event listening queue #%s interrupted", listener.queue.client_id)


def _queue_id(key: Any) -> int:
    """A queue id from a file: a JSON integer or a decimal string, in 1..2**32-1; ValueError otherwise."""
    if isinstance(key, int) and not isinstance(key, bool):
        cid = key
    elif isinstance(key, str) and key.isascii() and key.isdecimal():
        cid = int(key)
    else:
        raise ValueError(f"invalid queue id {key!r}")
    if not 0 < cid <= MAX_CLIENT_ID:
        raise ValueError(f"invalid queue id {key!r}")
    return cid


def _newest(events: list[Pending], limit: int, max_bytes: int) -> list[Pending]:
    """The newest of `events` within a queue's bounds (what `EventQueue.push` would have kept of them)."""
    size, n = 0, 0
    for _, data in reversed(events):
        if n and (n + 1 > limit or size + len(data) > max_bytes):
            break
        size, n = size + len(data), n + 1
    return events[len(events) - n :]
