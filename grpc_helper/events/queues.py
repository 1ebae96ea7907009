"""Event queues (one per listener id, bounded, resumable, persisted while nobody drains them) and the
listeners that drain them."""

from __future__ import annotations

import logging
import sys
import time
from collections import deque
from collections.abc import Callable, Iterable
from contextlib import suppress
from itertools import repeat
from threading import Lock
from typing import TypeAlias

from grpc_helper.api import Event, EventStatus, Result, ResultCode
from grpc_helper.calls import PushStream
from grpc_helper.errors import RpcException
from grpc_helper.limits import quote
from grpc_helper.metrics import DROPPED_QUEUE_MAX, DROPPED_QUEUE_MAX_BYTES, EVENT_LISTENERS, EVENTS_DELIVERED
from grpc_helper.options import keepalive_bound

_log = logging.getLogger("grpc_helper.events")

# While a queue overflows, warn at its first drop and then every this many drops (not on each one)
_DROP_WARN_EVERY = 1000
# Events a live queue keeps after sending them, to send again if its stream turns out lost (see
# `EventQueue.requeue_recent`): those sent within the last `redeliver_window()` seconds, at most this many
REDELIVER_MAX = 1000

# An event pending in a queue: (its name, its serialized bytes), made once by `send` and shared by every queue
# that holds it (a queue entry is one 8-byte reference). Bytes, not an `Event`: a small event costs ~90 bytes
# of RSS this way, ~520 as a protobuf object; and a listener parses them faster than it copies a message.
Pending: TypeAlias = tuple[str, bytes]


def pending_of(event: Event) -> Pending:
    """The shared form of `event` (its name interned: every event of a name shares one string)."""
    return sys.intern(event.name), event.SerializeToString()


# The head of an `EventStatus`'s `event` field (field 2, length-delimited) for events under 128 bytes
_EVENT_HEADS = [bytes((0x12, size)) for size in range(0x80)]


def event_field(data: bytes) -> bytes:
    """`EventStatus.event` on the wire, for the serialized event `data`: followed by the status's other
    fields (client_id, seq: numbers 3 and 4, after 2 as protobuf writes them), a whole `EventStatus`.

    Deliveries are built so, without a message per listener (parsing the event into one, then serializing
    it again, cost more than a third of a delivery)."""
    size = len(data)
    if size < 0x80:
        return _EVENT_HEADS[size] + data
    head = bytearray(b"\x12")
    while size > 0x7F:  # a varint: 7 bits a byte, least significant first
        head.append(size & 0x7F | 0x80)
        size >>= 7
    head.append(size)
    return bytes(head) + data


def _run_now(task: Callable[[], None]) -> None:
    task()


def redeliver_window() -> float:
    """How long after sending an event a queue keeps it to send again: twice the time a vanished peer takes
    to be noticed (keepalive), so that whatever was sent to a stream already dead is covered."""
    return 2 * keepalive_bound()


def check_name(name: str) -> None:
    """An event name (sent, or in a filter) must be non-empty and have no space."""
    if not name:
        raise RpcException("Missing event name", ResultCode.ERROR_PARAM_MISSING)
    if " " in name:
        raise RpcException(f"Invalid event name (contains a space): {quote(name)}", ResultCode.ERROR_PARAM_INVALID)


class Listener:
    """The stream draining a queue: a `listen` call, answered through a `PushStream`.

    All its work (sending what is pending, a keep-alive, ending the stream) is done by `run`, on the
    events service's delivery threads, one run at a time: `scheduled` (guarded by the queue's lock)
    is True from the moment a run is asked for until it finds nothing left to do.
    """

    __slots__ = (
        "_ended",
        "_numbered",
        "delivered",
        "keepalive_due",
        "last_sent",
        "on_end",
        "queue",
        "reported",
        "scheduled",
        "stream",
    )

    def __init__(self, queue: EventQueue, stream: PushStream, on_end: Callable[[Listener], None]) -> None:
        self.queue = queue
        self.stream = stream
        self.on_end = on_end  # called once, when the stream is over
        self.scheduled = True  # the `listen` call itself runs first (see EventQueue.attach)
        self.keepalive_due = False
        self.last_sent = time.monotonic()
        self._ended = False
        # The fields after the event in each status sent (client id, the event's number): one message per
        # listener, only its `seq` set per event (by `run`, one at a time)
        self._numbered = EventStatus(client_id=queue.client_id)
        # Events written to the stream (by `run` only), and how many of them are counted in EVENTS_DELIVERED (under
        # the queue's lock: by the janitor while this listener owns its queue, then by `finish`): the metric
        # lags by up to a janitor's period instead of costing a locked increment per delivery
        self.delivered = 0
        self.reported = 0
        EVENT_LISTENERS.inc()  # until `finish`

    def run(self) -> None:
        """Send everything pending; end the stream if this listener no longer owns its queue (interrupted,
        taken over, client gone) or the service shuts down (then with a last ERROR_STREAM_SHUTDOWN)."""
        q = self.queue
        cid = q.client_id
        stream = self.stream
        numbered = self._numbered
        while True:
            batch, seq, keepalive, must_end = q._work_for(self)
            if must_end:
                break
            if not batch and not keepalive:
                return  # no longer scheduled
            for n, (_, data) in enumerate(batch, seq):
                numbered.seq = n
                if not stream.send(event_field(data) + numbered.SerializeToString()):
                    self.delivered += n - seq
                    break  # the client is gone: its callback detaches the queue, ending this listener
            else:
                self.delivered += len(batch)
            if keepalive and not batch:
                # An empty event, present on the wire (as 2.x sends it)
                stream.send(EventStatus(client_id=cid, event=Event()))
            self.last_sent = time.monotonic()
        self.finish()

    def unreported(self) -> int:
        """The deliveries not counted in EVENTS_DELIVERED yet, now counted (caller holds the queue's lock)."""
        delivered = self.delivered  # read once: `run` may be adding to it
        unreported, self.reported = delivered - self.reported, delivered
        return unreported

    def finish(self) -> None:
        """End the stream, once (a last ERROR_STREAM_SHUTDOWN status if the service shuts down)."""
        with self.queue._lock:
            if self._ended:
                return
            self._ended = True
            shutting_down = self.queue.closed and self.queue.owner is self
            unreported = self.unreported()
        EVENTS_DELIVERED.inc(unreported)
        EVENT_LISTENERS.dec()
        last = None
        if shutting_down:
            # The queue is kept (and persisted) so that the listener resumes it on the next server
            result = Result(code=ResultCode.ERROR_STREAM_SHUTDOWN, msg="The events service is shutting down")
            last = EventStatus(r=result, client_id=self.queue.client_id)
        self.on_end(self)  # logged before the client sees the end (2.x's order)
        self.stream.end(last)


class EventQueue:
    """Events waiting for one listener id.

    `owner` is the `Listener` currently draining the queue. None means nobody: the queue is
    *retained* (since `retained_since`) until a stream resumes it or the retain timeout expires.
    A stream attaching with the same id takes the queue over: the previous owner ends.

    Hot path: `push` is one short lock and an append, plus, only if the owner has no delivery
    scheduled, one task handed to the delivery threads (`schedule`), which then sends everything
    pending at once.

    Deliveries are numbered (`EventStatus.seq`): `next_seq` is the number of the next event sent, starting
    from the microseconds since the epoch when the queue is made or restored, so that numbers only grow,
    across restarts too. What was sent lately stays in `recent` (shared, not copied), to be queued again
    if the stream it went to is lost (`requeue_recent`; when each was sent in `recent_times`): sending
    on a stream only hands the event to the connection, and a connection whose peer vanished takes events
    until keepalive closes it. A listener
    resuming says the last number it got (`skip_through`): it gets each event once, and a 2.x client, which
    does not say, at least once.
    """

    __slots__ = (
        "_lock",
        "_logger",
        "_schedule",
        "client_id",
        "closed",
        "creator",
        "dropped",
        "events",
        "names",
        "next_seq",
        "owner",
        "recent",
        "recent_times",
        "redeliver",
        "retained_since",
        "size",
    )

    def __init__(
        self,
        client_id: int,
        names: Iterable[str] = (),
        events: Iterable[Pending] = (),
        logger: logging.Logger | None = None,
        schedule: Callable[[Callable[[], None]], None] | None = None,
    ) -> None:
        self.client_id = client_id
        self.creator: str | None = None  # the identity that created it (with a policy on): only it may use it
        self.names: frozenset[str] = frozenset(names)
        self.events: deque[Pending] = deque(events)
        self.size = sum(len(data) for _, data in self.events)  # bytes of the pending events
        self.owner: Listener | None = None
        self.retained_since: float | None = time.monotonic()
        self.closed = False  # the service shuts down: the owner must end (the queue itself is kept)
        self.dropped = 0  # events dropped since the queue was last drained
        self.next_seq = time.time_ns() // 1000  # see the class doc
        # The last sent, oldest first, and when each was sent: at most REDELIVER_MAX, dropped from the left by the
        # deques themselves (in lockstep); those older than the window are forgotten by the janitor (`tick`) and
        # before a redelivery. Nothing in them is tracked by the garbage collector (a tuple or list per batch here,
        # ~100k objects in all at 500 listeners, made its full collections take 45 ms instead of 15: a pause for
        # every call)
        self.recent: deque[Pending] = deque(maxlen=REDELIVER_MAX)
        self.recent_times: deque[float] = deque(maxlen=REDELIVER_MAX)
        self.redeliver = redeliver_window()  # read once: static items
        self._logger = logger or _log
        self._lock = Lock()
        self._schedule = schedule or _run_now

    def accepts(self, name: str) -> bool:
        return not self.names or name in self.names

    # --- producer side ---
    def push(self, item: Pending, limit: int, max_bytes: int) -> bool:
        """Append `item` (shared by every queue it goes to); a queue holding more than `limit` events or
        `max_bytes` bytes drops its oldest ones (a sender is never blocked). The newest event is always
        kept. True if the queue is retained (nobody listens: the event is worth persisting)."""
        dropped = by_count = by_bytes = 0
        task = None
        with self._lock:
            events = self.events
            events.append(item)
            self.size += len(item[1])
            if len(events) > limit or self.size > max_bytes:
                while len(events) > 1 and (len(events) > limit or self.size > max_bytes):
                    if len(events) > limit:
                        by_count += 1
                    else:
                        by_bytes += 1
                    self.size -= len(events.popleft()[1])
                    self.dropped += 1
                dropped = self.dropped
            owner = self.owner
            if owner is not None and not owner.scheduled:
                owner.scheduled = True
                task = owner.run
        if task is not None:
            self._schedule(task)
        if by_count:
            DROPPED_QUEUE_MAX.inc(by_count)
        if by_bytes:
            DROPPED_QUEUE_MAX_BYTES.inc(by_bytes)
        if dropped and (dropped == 1 or dropped % _DROP_WARN_EVERY == 0):
            self._logger.warning(
                "Event queue %s is full (rpc-event-queue-max=%s, rpc-event-queue-max-bytes=%s): dropped its oldest"
                " events (%s so far)",
                self.client_id,
                limit,
                max_bytes,
                dropped,
            )
        return owner is None

    def _kick(self, listener: Listener | None) -> None:
        """Have `listener` run (caller holds self._lock; the task is handed over at once, a cheap put)."""
        if listener is not None and not listener.scheduled:
            listener.scheduled = True
            self._schedule(listener.run)

    def tick(self, now: float, keepalive_timeout: float) -> None:
        """The janitor's periodic work on the queue, without its lock in the common case: the owner sends a
        keep-alive if it sent nothing for `keepalive_timeout` seconds, its deliveries are counted, and what
        was sent before the redelivery window is forgotten."""
        owner = self.owner
        times = self.recent_times
        with suppress(IndexError):  # empty (a deque's operations are atomic: read without the lock)
            if times[0] < now - self.redeliver:
                with self._lock:
                    self._forget(now - self.redeliver)
        if owner is None:
            return
        if owner.delivered != owner.reported:
            with self._lock:
                unreported = owner.unreported() if self.owner is owner else 0  # else counted by `finish`
            EVENTS_DELIVERED.inc(unreported)
        if owner.scheduled or now - owner.last_sent < keepalive_timeout:
            return
        with self._lock:
            if self.owner is owner and not owner.scheduled:
                owner.keepalive_due = True
                self._kick(owner)

    # --- ownership ---
    def attach(self, listener: Listener) -> bool:
        """Make `listener` the owner; True if it took the queue over from a live stream (which ends).

        The new owner counts as scheduled: its `listen` call sends the first status, then calls its
        `run` for whatever is pending."""
        with self._lock:
            previous = self.owner
            self.owner, self.retained_since = listener, None
            self._kick(previous)
        return previous is not None

    def detach(self, listener: Listener | None = None, *, lost: bool = False) -> bool:
        """Retain the queue if `listener` (or, for None, anybody) owns it; False if it was not owned so.
        The owner ends. `lost`: its stream went away (not interrupted): what was sent to it lately is
        queued again (`requeue_recent`)."""
        with self._lock:
            owner = self.owner
            if owner is None or (listener is not None and owner is not listener):
                return False
            self.owner, self.retained_since = None, time.monotonic()
            if lost:
                self._requeue_recent()
            # An interrupted listener got what was sent; a retained queue keeps no `recent` (it costs memory)
            self.recent.clear()
            self.recent_times.clear()
            self._kick(owner)
        return True

    def _requeue_recent(self) -> None:
        """Put back in front of the pending events those sent within `redeliver_window()`, with the numbers
        they were sent with (caller holds self._lock): they may never have reached a listener that vanished."""
        self._forget(time.monotonic() - self.redeliver)
        recent = self.recent
        self.next_seq -= len(recent)  # `recent` is the tail of what was sent: the same numbers again
        self.events.extendleft(reversed(recent))
        self.size += sum(len(data) for _, data in recent)
        recent.clear()
        self.recent_times.clear()

    def _forget(self, oldest: float) -> None:
        """Drop from `recent` the events sent before `oldest` (caller holds self._lock)."""
        recent, times = self.recent, self.recent_times
        while times and times[0] < oldest:
            times.popleft()
            recent.popleft()

    def skip_through(self, seq: int) -> int:
        """Drop the pending events numbered up to `seq` (a resuming listener got them already); how many."""
        skipped = 0
        with self._lock:
            events = self.events
            while events and self.next_seq <= seq:
                self.size -= len(events.popleft()[1])
                self.next_seq += 1
                skipped += 1
        return skipped

    def close(self) -> None:
        """The service shuts down: the owner ends; the queue and its events are kept."""
        with self._lock:
            self.closed = True
            self._kick(self.owner)

    def expired(self, now: float, retain: float) -> bool:
        """Retained for more than `retain` seconds."""
        with self._lock:
            return self.owner is None and self.retained_since is not None and now - self.retained_since > retain

    # --- consumer side ---
    def _work_for(self, listener: Listener) -> tuple[list[Pending], int, bool, bool]:
        """(everything pending, the number of its first event, a keep-alive is due, the listener must end)
        for the running `listener`; when there is nothing to do, it is no longer scheduled."""
        with self._lock:
            seq = self.next_seq
            if self.owner is not listener or self.closed:
                return [], seq, False, True
            keepalive, listener.keepalive_due = listener.keepalive_due, False
            events = self.events
            if not events:
                if not keepalive:
                    listener.scheduled = False
                return [], seq, keepalive, False
            batch = list(events)
            self._remember(batch)
            events.clear()
            self.size = 0
            self.next_seq += len(batch)
            dropped, self.dropped = self.dropped, 0
        if dropped:
            self._logger.warning("Event queue %s dropped %s of its oldest events while full", self.client_id, dropped)
        return batch, seq, keepalive, False

    def _remember(self, sent: list[Pending]) -> None:
        """Keep what is being sent in `recent` (caller holds self._lock)."""
        self.recent.extend(sent)
        self.recent_times.extend(repeat(time.monotonic(), len(sent)))

    def refilter(self, names: frozenset[str]) -> int:
        """Replace the filter by a non-empty `names`, dropping pending events it does not accept; how many."""
        with self._lock:
            self.names = names
            events = self.events
            kept = [item for item in events if item[0] in names]
            dropped = len(events) - len(kept)
            if dropped:
                events.clear()
                events.extend(kept)
                self.size = sum(len(data) for _, data in kept)
        return dropped

    # --- persistence ---
    def pending(self) -> list[Pending]:
        """The pending events, in order (a copy of the references: 8 bytes each)."""
        with self._lock:
            return list(self.events)
