"""Thread pools: `IdlePool`, whose threads end once idle and which tells how many tasks it holds, and
`Deliveries`, a few threads sending the messages of pushed streams.

The stdlib's ThreadPoolExecutor keeps every thread it ever started until shut down: after a burst
of 500 event listeners, 500 threads stay. This one starts threads on demand (up to `max_workers`)
and ends each one after `idle_timeout` seconds without work. It subclasses ThreadPoolExecutor
only because grpcio runs a behavior on `behavior.experimental_thread_pool` solely when that is a
ThreadPoolExecutor (see `generated.run_on`): none of the parent's machinery is used.
"""

from __future__ import annotations

import ctypes
import gc
import logging
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from queue import Empty, SimpleQueue
from types import FrameType
from typing import Any, TypeVar

T = TypeVar("T")

_log = logging.getLogger("grpc_helper.threads")


def current_frames() -> dict[int, FrameType]:
    """`sys._current_frames()` with the garbage collector paused.

    CPython builds that dict holding its thread-state lock; a collection run meanwhile may call a grpcio
    channel's `__del__`, whose close waits for a thread that can't get its thread state without that
    lock: the process hangs (seen in a test looking at every thread's stack)."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        return sys._current_frames()
    finally:
        if enabled:
            gc.enable()


IDLE_TIMEOUT = 2.0  # seconds a thread waits for work before it ends
_TRIM_INTERVAL = 1.0  # seconds between two returns of freed memory to the system, at least
# A pool this many threads smaller than at its peak has seen a burst end (a probe's thread coming and going has not)
_BURST = 4


def _malloc_trim() -> Callable[[int], int] | None:
    """glibc's `malloc_trim`, or None (another C library)."""
    try:
        trim: Callable[[int], int] = ctypes.CDLL(None).malloc_trim
    except (AttributeError, OSError):
        return None
    return trim


_trim = _malloc_trim()
_trimmed = 0.0  # when memory was last given back (monotonic)


def release_memory() -> bool:
    """Give the heap memory freed by a burst back to the system (glibc's `malloc_trim`; a few ms), at most once a
    second; True if done. Called as a burst's threads end: glibc keeps what a burst's threads freed in their
    arenas, so the RSS of a server that served 16 unread proxied streams stayed ~50 MB up after they left."""
    global _trimmed  # one process-wide rate limit (two threads racing here only trim twice)
    now = time.monotonic()
    if _trim is None or now - _trimmed < _TRIM_INTERVAL:
        return False
    _trimmed = now
    _trim(0)
    return True


_Task = tuple[Future[Any], Callable[..., Any], tuple[Any, ...], dict[str, Any]]


class IdlePool(ThreadPoolExecutor):
    """`submit`/`shutdown` of a ThreadPoolExecutor, with threads ended after `idle_timeout` idle seconds.

    `pending` is the number of tasks submitted and not finished (queued or running): the server
    reads it to bound the calls waiting for its workers.

    Tasks go through one `SimpleQueue`: threads wait for work in C, as the stdlib pool's do, instead of
    a Python `Condition` allocating a lock per wait and per wake-up on every call. The counts under `_lock`
    say who takes a task: `_idle` threads are waiting with nothing promised to them, so a task
    submitted meanwhile is theirs (one fewer idle); else a new thread starts, up to `max_workers`;
    else the task is `_backlog`, taken by the next thread to finish its task.
    """

    def __init__(self, max_workers: int, thread_name_prefix: str = "", idle_timeout: float = IDLE_TIMEOUT) -> None:
        super().__init__(max_workers, thread_name_prefix)  # starts nothing: kept for isinstance checks
        self._limit = max_workers
        self._prefix = thread_name_prefix or "idle-pool"
        self._idle_timeout = idle_timeout
        self._queue: SimpleQueue[_Task | None] = SimpleQueue()  # None: a thread's end, at shutdown
        self._lock = threading.Lock()
        self._workers: set[threading.Thread] = set()
        self._idle = 0  # threads waiting for a task, none promised to them
        self._backlog = 0  # tasks queued while every thread was busy and no more could start
        self._pending = 0  # tasks submitted, not finished
        self._closed = False
        self._seq = 0
        self._peak = 0  # most threads alive since memory was last given back

    @property
    def pending(self) -> int:
        """Tasks submitted and not finished yet (queued or running)."""
        return self._pending

    @property
    def thread_count(self) -> int:
        """Threads alive in the pool (busy or idle)."""
        return len(self._workers)

    def submit(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> Future[T]:
        future: Future[T] = Future()
        with self._lock:
            if self._closed:
                raise RuntimeError("cannot schedule new futures after shutdown")
            if self._idle:
                self._idle -= 1  # an idle thread takes it
            elif len(self._workers) >= self._limit or not self._start_thread():
                self._backlog += 1  # the next thread to finish a task takes it
            self._pending += 1
            self._queue.put((future, fn, args, kwargs))
        return future

    def _start_thread(self) -> bool:
        """One more thread (under `_lock`); False when the system refuses one while others run (the task
        then waits for them), RuntimeError when no thread at all would ever run it."""
        self._seq += 1
        thread = threading.Thread(target=self._work, name=f"{self._prefix}_{self._seq}", daemon=True)
        try:
            thread.start()
        except RuntimeError:  # "can't start new thread": out of threads or memory
            if not self._workers:
                raise
            running = len(self._workers)
            _log.warning("%s: can't start a thread (%d running): the task waits for one", self._prefix, running)
            return False
        self._workers.add(thread)
        self._peak = max(self._peak, len(self._workers))
        return True

    def _work(self) -> None:
        me = threading.current_thread()
        get, lock = self._queue.get, self._lock
        while True:
            try:
                task = get(timeout=self._idle_timeout)
            except Empty:
                with lock:
                    ending = self._idle > 0  # idle for a whole timeout, and no task promised to an idle thread
                    burst_over = False
                    if ending:
                        self._idle -= 1
                        self._workers.discard(me)
                        burst_over = self._peak - len(self._workers) >= _BURST
                if ending:
                    if burst_over and release_memory():
                        with lock:
                            self._peak = len(self._workers)
                    return
                continue  # a task was just promised to an idle thread (this one): it is on its way
            if task is None:  # shutdown
                with lock:
                    self._workers.discard(me)
                return
            future, fn, args, kwargs = task
            result: Any = None
            error: BaseException | None = None
            run = future.set_running_or_notify_cancel()
            try:
                if run:
                    result = fn(*args, **kwargs)
            except BaseException as exc:
                error = exc
            finally:
                # Counted done before the future resolves: whoever waits on it sees `pending` without it
                with lock:
                    self._pending -= 1
                    if self._backlog:
                        self._backlog -= 1  # this thread takes a queued task next
                    else:
                        self._idle += 1
            if run:
                if error is None:
                    future.set_result(result)
                else:
                    future.set_exception(error)
            del task, future, fn, args, kwargs, result, error  # don't keep the last task's objects alive while idle

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:  # noqa: FBT001, FBT002
        """No new tasks; queued ones still run unless `cancel_futures`; `wait`: until all threads end."""
        with self._lock:
            self._closed = True
            if cancel_futures:
                while True:
                    try:
                        task = self._queue.get_nowait()
                    except Empty:
                        break
                    if task is not None:
                        task[0].cancel()
                        self._pending -= 1
            threads = list(self._workers)
            for _ in threads:
                self._queue.put(None)  # after the queued tasks: they run first
        if wait:
            for thread in threads:
                if thread is not threading.current_thread():
                    thread.join()


class Deliveries:
    """Short tasks run in order of submission by a few threads: how pushed streams get their messages sent.

    `threads` threads take tasks from one queue, so a burst of work (an event for 500 listeners) keeps
    a few threads busy instead of waking hundreds. A task may block, e.g. sending to a listener that
    stopped reading once its flow-control window is full: `check_stalls()` (called regularly) starts
    one more thread for each one busy in the same task for more than `stall` seconds, up to `limit`
    threads, so that one stuck listener never holds up the others; threads beyond `threads` end after
    `idle_timeout` seconds without work.
    """

    def __init__(
        self, threads: int, limit: int, name: str, stall: float = 1.0, idle_timeout: float = IDLE_TIMEOUT
    ) -> None:
        self._base, self._limit, self._name = threads, max(threads, limit), name
        self._stall, self._idle_timeout = stall, idle_timeout
        self._tasks: SimpleQueue[Callable[[], object] | None] = SimpleQueue()
        self._lock = threading.Lock()
        self._threads: set[threading.Thread] = set()
        self._busy: dict[threading.Thread, float] = {}  # thread -> when it started its current task
        self._seq = 0
        self._stopped = False
        with self._lock:
            for _ in range(threads):
                self._start(extra=False)

    @property
    def thread_count(self) -> int:
        return len(self._threads)

    def put(self, task: Callable[[], object]) -> None:
        """Run `task()` on one of the threads, after those queued before it (exceptions are logged)."""
        self._tasks.put(task)

    def check_stalls(self) -> None:
        """Start a thread for each one stuck in a task for more than `stall` seconds (up to `limit`)."""
        now = time.monotonic()
        with self._lock:
            stalled = sum(1 for start in self._busy.values() if now - start > self._stall)
            while not self._stopped and len(self._threads) - stalled < self._base and len(self._threads) < self._limit:
                self._start(extra=True)

    def stop(self) -> None:
        """The threads end once the tasks already queued have run (a stuck one when its task returns)."""
        with self._lock:
            self._stopped = True
            count = len(self._threads)
        for _ in range(count):
            self._tasks.put(None)

    def _start(self, *, extra: bool) -> None:  # caller holds self._lock
        self._seq += 1
        thread = threading.Thread(target=self._run, args=(extra,), name=f"{self._name}_{self._seq}", daemon=True)
        self._threads.add(thread)
        thread.start()

    def _run(self, extra: bool) -> None:  # noqa: FBT001 - a thread target's argument
        me = threading.current_thread()
        while True:
            try:
                task = self._tasks.get(timeout=self._idle_timeout if extra else None)
            except Empty:  # an extra thread, idle for a whole timeout
                task = None
            if task is None:
                with self._lock:
                    self._threads.discard(me)
                if extra:
                    release_memory()  # stuck listeners gone
                return
            self._busy[me] = time.monotonic()
            try:
                task()
            except Exception:
                _log.exception("A task of %s failed", self._name)
            finally:
                del self._busy[me]
