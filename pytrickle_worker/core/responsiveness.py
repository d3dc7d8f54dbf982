"""How long the process keeps ready work waiting: a thread's and the event loop's wake-ups.

Every native call the worker makes releases the GIL (``session.run``, a decode, a swscale
pass, a socket read) and must take it back to return. When Python code on other threads
holds the GIL most of the time, each return waits, and a 5 ms inference run can look like a
100 ms one while the GPU and the cores sit idle. That was the open question of the density
benchmark on a 16-core GPU host (bench/RESULTS.md, "GPU"): these probes measure it in the
worker itself.

* :class:`ThreadWakeupProbe`: a thread that sleeps ``period_s`` again and again and records
  how late it wakes. On a host with spare cores the lateness is the wait for the GIL (on a
  saturated one, the wait for a core too); a returning native call pays the same wait.
* :class:`LoopLagProbe`: a task that does the same on the event loop: how long the callbacks
  ahead of it held the loop (and the GIL they need).

Both record into a :class:`~pytrickle_worker.core.latency.LatencyHistogram` (``/metrics``:
``ptw_thread_wakeup_lateness_seconds``, ``ptw_event_loop_lag_seconds``). One wake-up every
50 ms costs nothing measurable.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from typing import Final

from pytrickle_worker.core.latency import LatencyHistogram

__all__ = ["LATENESS_BUCKETS", "PROBE_PERIOD_S", "LoopLagProbe", "ThreadWakeupProbe"]


#: Upper bounds (seconds): a thread's timer slack is ~0.1 ms (the loop's ~1 ms: selectors
#: round their timeouts up to whole milliseconds); one GIL switch interval is 5 ms.
LATENESS_BUCKETS: Final = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0)
PROBE_PERIOD_S: Final = 0.05


def _check_period(period_s: float) -> None:
    if not 0 < period_s <= 10:
        raise ValueError(f"period_s must be within (0, 10], got {period_s}")


class ThreadWakeupProbe:
    """How late a sleeping thread wakes (see the module docs). ``start``/``stop``."""

    def __init__(self, period_s: float = PROBE_PERIOD_S) -> None:
        _check_period(period_s)
        self.period_s = period_s
        self.histogram = LatencyHistogram(LATENESS_BUCKETS)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        if self._thread is None:
            self._stop.clear()
            self._thread = threading.Thread(target=self._run, name="wakeup-probe", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        thread, self._thread = self._thread, None
        if thread is not None:
            self._stop.set()
            thread.join(self.period_s + 1.0)

    def _run(self) -> None:
        period, stop = self.period_s, self._stop
        while True:
            started = time.perf_counter()
            if stop.wait(period):  # a timed lock wait: the GIL is released while it sleeps
                return
            self.histogram.observe(time.perf_counter() - started - period)


class LoopLagProbe:
    """How late a task sleeping on the event loop resumes (see the module docs)."""

    def __init__(self, period_s: float = PROBE_PERIOD_S) -> None:
        _check_period(period_s)
        self.period_s = period_s
        self.histogram = LatencyHistogram(LATENESS_BUCKETS)
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Start on the running loop."""
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run(), name="loop-lag")

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        period = self.period_s
        while True:
            started = loop.time()
            await asyncio.sleep(period)
            self.histogram.observe(loop.time() - started - period)
