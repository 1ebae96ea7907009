"""The live view of a server's calls (`srv.stat`, `grpc-helper stat` and `top`): a sliding window per method.

Each registered method of a server has one `MethodWindow`: a ring of `MAX_WINDOW` one-second buckets, each
counting the calls that ended in that second, those that failed, and their durations in a small histogram of
logarithmic bins (each `GROWTH` times as wide as the one before: DDSketch's mapping, without its dependencies).
Memory is bounded by construction: registered methods only (never a name a caller sends), a fixed number of
buckets, a fixed number of bins; a bucket is made when the first call of its second ends, and reused a window
later. A quantile read from the bins is within `GROWTH` of the true value (interpolated inside its bin, as
Prometheus' `histogram_quantile` does).

Recording a call (`MethodWindow.record`) takes a lock, a clock reading, a logarithm and three increments: it
runs on every served call, from the metrics wrapper (`metrics.instrument`).
"""

from __future__ import annotations

import math
import threading
import time
from array import array
from collections.abc import Iterable
from dataclasses import dataclass

__all__ = ["DEFAULT_WINDOW", "MAX_WINDOW", "LiveStats", "MethodFigures", "MethodWindow"]

DEFAULT_WINDOW = 30
"""Seconds a stat looks back when not told."""
MAX_WINDOW = 300
"""Seconds a server keeps: the longest window a stat may ask for."""

# Latency bins: bin 0 holds durations under _LOWEST, bin i >= 1 those in [_LOWEST * GROWTH**(i-1), _LOWEST *
# GROWTH**i); the last one everything longer (over ~4.5 minutes here)
_LOWEST = 1e-5  # 10 us: nothing a Python server answers is shorter
_PER_DOUBLING = 4  # bins per doubling of the duration
GROWTH = 2 ** (1 / _PER_DOUBLING)  # ~1.19: a quantile is within ~9% of the truth (bin middle)
_BINS = 100
QUANTILES = (0.5, 0.95, 0.99)
# The clock of the buckets (a module global, so a test can set the time)
_now = time.monotonic
_SCALE = 1 / _LOWEST
_log2 = math.log2


def _bounds(index: int) -> tuple[float, float]:
    """The durations bin `index` covers."""
    if index == 0:
        return 0.0, _LOWEST
    return _LOWEST * GROWTH ** (index - 1), _LOWEST * GROWTH**index


class _Bucket:
    """The calls that ended in one second (of `_now()`: monotonic)."""

    __slots__ = ("bins", "calls", "failures", "second")

    def __init__(self, second: int) -> None:
        self.second = second
        self.calls = 0
        self.failures = 0
        self.bins = array("I", bytes(_BINS * array("I").itemsize))


@dataclass(frozen=True)
class MethodFigures:
    """One method's calls over a window."""

    service: str
    method: str
    seconds: float  # the span the window covered
    calls: int
    failures: int
    quantiles: tuple[float, ...]  # durations at `QUANTILES` (seconds; 0 without calls)


class MethodWindow:
    """The sliding window of one method's calls (see the module doc)."""

    __slots__ = ("_lock", "_ring", "method", "service")

    def __init__(self, service: str, method: str) -> None:
        self.service, self.method = service, method
        self._lock = threading.Lock()
        self._ring: list[_Bucket | None] = [None] * MAX_WINDOW

    def record(self, duration: float, *, ok: bool) -> None:
        """Count one call that just ended, after `duration` seconds; `ok`: it succeeded."""
        # The bin of `duration` (see `_bounds`), computed inline: this runs on every served call
        if duration < _LOWEST:
            index = 0
        else:
            index = int(_log2(duration * _SCALE) * _PER_DOUBLING) + 1
            if index >= _BINS:
                index = _BINS - 1
        second = int(_now())
        ring = self._ring
        slot = second % MAX_WINDOW
        with self._lock:
            bucket = ring[slot]
            if bucket is None or bucket.second != second:
                bucket = ring[slot] = _Bucket(second)
            bucket.calls += 1
            if not ok:
                bucket.failures += 1
            bucket.bins[index] += 1

    def figures(self, window: int, now: float, seconds: float) -> MethodFigures:
        """The calls of the last `window` seconds before `now` (monotonic), which cover `seconds`."""
        newest = int(now)
        calls = failures = 0
        bins = [0] * _BINS
        with self._lock:
            for bucket in self._ring:
                if bucket is not None and newest - window < bucket.second <= newest:
                    calls += bucket.calls
                    failures += bucket.failures
                    bins = [a + b for a, b in zip(bins, bucket.bins, strict=True)]
        quantiles = tuple(_quantile(bins, calls, q) for q in QUANTILES)
        return MethodFigures(self.service, self.method, seconds, calls, failures, quantiles)


def _quantile(bins: list[int], total: int, q: float) -> float:
    """The duration at quantile `q` of the calls counted in `bins`, interpolated inside its bin (0 if none)."""
    if total == 0:
        return 0.0
    rank = q * total
    seen = 0
    for index, n in enumerate(bins):
        if n and seen + n >= rank:
            low, high = _bounds(index)
            return low + (high - low) * max(rank - seen, 0) / n
        seen += n
    return _bounds(_BINS - 1)[1]  # not reached: the ranks add up to `total`


class LiveStats:
    """The windows of one server's registered methods, by service (its `info` name) and method."""

    def __init__(self) -> None:
        self._started = _now()
        self._windows: dict[tuple[str, str], MethodWindow] = {}
        self._names: dict[str, str] = {}  # a service's name, and its full gRPC name -> its name
        self._lock = threading.Lock()

    def window(self, service: str, method: str, grpc_service: str = "") -> MethodWindow:
        """The window of `service`/`method`, made on first use (when the method is registered); `grpc_service`:
        the service's full gRPC name, which `service_of` knows it by too."""
        with self._lock:
            self._names[service] = service
            if grpc_service:
                self._names.setdefault(grpc_service, service)
            found = self._windows.get((service, method))
            if found is None:
                found = self._windows[service, method] = MethodWindow(service, method)
            return found

    def service_of(self, name: str) -> str | None:
        """The service `name` is (its name, or its full gRPC name), None if no method of it has a window."""
        with self._lock:
            return self._names.get(name)

    def figures(self, window: int, services: Iterable[str] | None = None, *, idle: bool = False) -> list[MethodFigures]:
        """The last `window` seconds (at most `MAX_WINDOW`) of every method of `services` (None: all), sorted by
        service and method; those without calls only with `idle`."""
        now = _now()
        # The current second's bucket is partial: the window covers `window - 1` full seconds and that part, and
        # never more than the server has been up
        covered = min(window - 1 + (now - int(now)), now - self._started)
        wanted = None if services is None else set(services)
        with self._lock:
            windows = sorted(self._windows.items())
        out = []
        for (service, _), method_window in windows:
            if wanted is not None and service not in wanted:
                continue
            figures = method_window.figures(window, now, max(covered, 1e-3))
            if figures.calls or idle:
                out.append(figures)
        return out
