"""Exponential backoff between attempts: the one retry pacing of the library (client retries,
event listener reconnections, proxied calls waiting for a backend, the samples' event sender)."""

from __future__ import annotations

import time

FIRST_DELAY = 0.05  # seconds before the first retry
MAX_DELAY = 1.0  # ... doubling up to this


class Backoff:
    """Delays between attempts: `first` seconds, doubling up to `cap`, optionally within `timeout`.

    `next_delay()` gives the wait before the next attempt, cut to what is left of the deadline;
    `expired` tells when the deadline has passed (give up). The caller waits as it likes (a sleep,
    an event's `wait` to be woken up early...). `reset()` starts again from `first` (e.g. after a
    success). The deadline, when there is one, counts from construction.
    """

    def __init__(self, first: float = FIRST_DELAY, cap: float = MAX_DELAY, timeout: float | None = None) -> None:
        self.first, self.cap = first, cap
        self.delay = first  # the next wait, before any cut to the deadline
        self.deadline = None if timeout is None else time.monotonic() + timeout

    @property
    def expired(self) -> bool:
        """Whether the deadline has passed (never, without one)."""
        return self.deadline is not None and time.monotonic() >= self.deadline

    def next_delay(self) -> float:
        """The wait before the next attempt, cut to the time left before the deadline; then the delay doubles."""
        delay = self.delay
        if self.deadline is not None:
            delay = max(0.0, min(delay, self.deadline - time.monotonic()))
        self.delay = min(self.delay * 2, self.cap)
        return delay

    def reset(self) -> None:
        """Start again from the first delay (the deadline stays)."""
        self.delay = self.first
