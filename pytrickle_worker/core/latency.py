"""Capture→result latency of a stream: a fixed-bucket histogram plus recent percentiles."""

from __future__ import annotations

import bisect
import itertools
import math
import threading
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass

__all__ = [
    "DEFAULT_LATENCY_BUCKETS",
    "DEFAULT_LATENCY_WINDOW",
    "LatencyHistogram",
    "LatencySnapshot",
]

#: Upper bounds (seconds) for capture→result latency: from a fast GPU pipeline's tens of
#: milliseconds to an overloaded CPU's seconds.
DEFAULT_LATENCY_BUCKETS: tuple[float, ...] = (
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
)
#: Recent samples the percentiles are taken over.
DEFAULT_LATENCY_WINDOW = 256


@dataclass(frozen=True, slots=True)
class LatencySnapshot:
    """One reading of a :class:`LatencyHistogram`.

    ``bounds`` are the buckets' upper bounds (seconds, ascending, +Inf left out) and
    ``cumulative[i]`` the samples ``<= bounds[i]`` since the histogram was created; ``count``
    (the +Inf bucket) and ``sum_s`` cover the same samples. ``p50_s``/``p95_s`` are
    nearest-rank percentiles, and ``max_s`` the largest, of the last ``window`` samples only
    (None before the first).
    """

    bounds: tuple[float, ...]
    cumulative: tuple[int, ...]
    count: int
    sum_s: float
    window: int
    p50_s: float | None
    p95_s: float | None
    max_s: float | None


def _nearest_rank(ordered: Sequence[float], q: float) -> float:
    """The ``q`` quantile of the sorted, non-empty ``ordered`` (nearest rank: a sample)."""
    rank = max(1, math.ceil(q * len(ordered)))
    return ordered[rank - 1]


class LatencyHistogram:
    """Latencies in seconds: cumulative bucket counts, sum and count since creation, and
    percentiles over the last ``window`` samples (memory bounded by the buckets and window).

    Thread-safe: :meth:`observe` and :meth:`snapshot` take a lock, so a processing thread
    may observe while the event loop reads. A negative latency (the wall clock stepped back
    between capture and result) counts as 0; a NaN or infinite one is ignored.
    """

    def __init__(
        self,
        buckets: Sequence[float] = DEFAULT_LATENCY_BUCKETS,
        window: int = DEFAULT_LATENCY_WINDOW,
    ) -> None:
        bounds = tuple(float(b) for b in buckets)
        if not bounds or any(not math.isfinite(b) or b <= 0 for b in bounds):
            raise ValueError(f"buckets must be positive finite bounds, got {buckets!r}")
        if any(a >= b for a, b in itertools.pairwise(bounds)):
            raise ValueError(f"buckets must be strictly ascending, got {buckets!r}")
        if window < 1:
            raise ValueError(f"window must be at least 1, got {window}")
        self._bounds = bounds
        self._counts = [0] * len(bounds)  # per bucket, not cumulative (one increment each)
        self._count = 0
        self._sum = 0.0
        self._recent: deque[float] = deque(maxlen=window)
        self._lock = threading.Lock()

    @property
    def bounds(self) -> tuple[float, ...]:
        return self._bounds

    def observe(self, seconds: float) -> None:
        """Record one latency."""
        if not math.isfinite(seconds):
            return
        seconds = max(0.0, seconds)
        index = bisect.bisect_left(self._bounds, seconds)  # first bound >= seconds
        with self._lock:
            if index < len(self._counts):
                self._counts[index] += 1
            self._count += 1
            self._sum += seconds
            self._recent.append(seconds)

    def snapshot(self) -> LatencySnapshot:
        with self._lock:
            counts = list(self._counts)
            count, total = self._count, self._sum
            recent = sorted(self._recent)
        cumulative: list[int] = []
        running = 0
        for n in counts:
            running += n
            cumulative.append(running)
        return LatencySnapshot(
            bounds=self._bounds,
            cumulative=tuple(cumulative),
            count=count,
            sum_s=total,
            window=len(recent),
            p50_s=_nearest_rank(recent, 0.50) if recent else None,
            p95_s=_nearest_rank(recent, 0.95) if recent else None,
            max_s=recent[-1] if recent else None,
        )
