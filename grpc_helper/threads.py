"""IdlePool: a thread pool whose threads end once idle, and which tells how many tasks it holds.

The stdlib's ThreadPoolExecutor keeps every thread it ever started until shut down: after a burst
of 500 event listeners, 500 threads stay. This one starts threads on demand (up to `max_workers`)
and ends each one after `idle_timeout` seconds without work. It subclasses ThreadPoolExecutor
only because grpcio runs a behavior on `behavior.experimental_thread_pool` solely when that is a
ThreadPoolExecutor (see `generated.run_on`): none of the parent's machinery is used.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, TypeVar

T = TypeVar("T")

IDLE_TIMEOUT = 2.0  # seconds a thread waits for work before it ends


class IdlePool(ThreadPoolExecutor):
    """`submit`/`shutdown` of a ThreadPoolExecutor, with threads ended after `idle_timeout` idle seconds.

    `pending` is the number of tasks submitted and not finished (queued or running): the server
    reads it to bound the calls waiting for its workers.
    """

    def __init__(self, max_workers: int, thread_name_prefix: str = "", idle_timeout: float = IDLE_TIMEOUT) -> None:
        super().__init__(max_workers, thread_name_prefix)  # starts nothing: kept for isinstance checks
        self._limit = max_workers
        self._prefix = thread_name_prefix or "idle-pool"
        self._idle_timeout = idle_timeout
        self._cond = threading.Condition(threading.Lock())
        self._tasks: deque[tuple[Future[Any], Callable[..., Any], tuple[Any, ...], dict[str, Any]]] = deque()
        self._workers: set[threading.Thread] = set()
        self._idle = 0  # threads waiting for a task
        self._pending = 0  # tasks submitted, not finished
        self._closed = False
        self._seq = 0

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
        with self._cond:
            if self._closed:
                raise RuntimeError("cannot schedule new futures after shutdown")
            self._tasks.append((future, fn, args, kwargs))
            self._pending += 1
            # An idle thread takes it (each queued task needs its own); else a new thread, if allowed
            if self._idle >= len(self._tasks):
                self._cond.notify()
            elif len(self._workers) < self._limit:
                self._seq += 1
                thread = threading.Thread(target=self._work, name=f"{self._prefix}_{self._seq}", daemon=True)
                self._workers.add(thread)
                thread.start()
        return future

    def _work(self) -> None:
        me = threading.current_thread()
        while True:
            with self._cond:
                while not self._tasks:
                    if self._closed:
                        self._workers.discard(me)
                        return
                    self._idle += 1
                    woken = self._cond.wait(self._idle_timeout)
                    self._idle -= 1
                    if not woken and not self._tasks and not self._closed:  # idle for a whole timeout: end
                        self._workers.discard(me)
                        return
                future, fn, args, kwargs = self._tasks.popleft()
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
                with self._cond:
                    self._pending -= 1
            if run:
                if error is None:
                    future.set_result(result)
                else:
                    future.set_exception(error)
            del future, fn, args, kwargs, result, error  # don't keep the last task's objects alive while idle

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:  # noqa: FBT001, FBT002
        """No new tasks; queued ones still run unless `cancel_futures`; `wait`: until all threads end."""
        with self._cond:
            self._closed = True
            if cancel_futures:
                while self._tasks:
                    future = self._tasks.popleft()[0]
                    future.cancel()
                    self._pending -= 1
            self._cond.notify_all()
            threads = list(self._workers)
        if wait:
            for thread in threads:
                if thread is not threading.current_thread():
                    thread.join()
