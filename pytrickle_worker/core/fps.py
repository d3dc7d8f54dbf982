"""A thread-safe sliding-window frame-rate meter."""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable

__all__ = ["FpsMeter"]


class FpsMeter:
    """Counts events in the last ``window_s`` seconds (at most ``max_samples`` of them).

    ``fps`` is ``(n - 1) / span`` over the samples still in the window, 0.0 with fewer than
    two. ``tick`` may be called from any thread.
    """

    def __init__(
        self,
        window_s: float = 10.0,
        max_samples: int = 600,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.window_s = window_s
        self.total = 0
        self._clock = clock
        self._samples: deque[float] = deque(maxlen=max_samples)
        self._lock = threading.Lock()

    def tick(self, count: int = 1) -> None:
        now = self._clock()
        with self._lock:
            self.total += count
            for _ in range(count):
                self._samples.append(now)

    @property
    def fps(self) -> float:
        now = self._clock()
        with self._lock:
            samples = self._samples
            while samples and now - samples[0] > self.window_s:
                samples.popleft()
            if len(samples) < 2:
                return 0.0
            span = samples[-1] - samples[0]
            return (len(samples) - 1) / span if span > 0 else 0.0
