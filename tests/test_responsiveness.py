"""The wake-up probes (core/responsiveness.py): a thread's wait for the GIL, the loop's lag.

Real threads and a real event loop: the probes must see a thread that keeps the GIL and a
callback that keeps the loop, and stop when told.
"""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import Iterator

import pytest

from pytrickle_worker.core.responsiveness import LoopLagProbe, ThreadWakeupProbe


@pytest.fixture
def long_switch_interval() -> Iterator[float]:
    """A 50 ms GIL switch interval (CPython's is 5 ms), so that a thread that keeps the GIL
    delays the others by far more than timer slack or a busy machine's scheduling."""
    before = sys.getswitchinterval()
    sys.setswitchinterval(0.05)
    try:
        yield 0.05
    finally:
        sys.setswitchinterval(before)


def spin(seconds: float) -> int:
    """Pure Python for ``seconds``: it keeps the GIL but at the switch interval."""
    count, end = 0, time.perf_counter() + seconds
    while time.perf_counter() < end:
        count += 1
    return count


def wait_for_samples(probe: ThreadWakeupProbe, count: int) -> None:
    deadline = time.monotonic() + 10
    while probe.histogram.snapshot().count < count:
        assert time.monotonic() < deadline, "the probe recorded nothing"
        time.sleep(0.01)


def test_a_thread_that_keeps_the_gil_makes_the_probe_wake_late(
    long_switch_interval: float,
) -> None:
    probe = ThreadWakeupProbe(period_s=0.01)
    probe.start()
    try:
        wait_for_samples(probe, 5)
        idle = probe.histogram.snapshot()
        assert idle.p50_s is not None and idle.p50_s < long_switch_interval / 2
        spin(1.0)  # the test's thread keeps the GIL; the probe waits a switch interval
        busy = probe.histogram.snapshot()
    finally:
        probe.stop()
    late = busy.count - idle.count
    assert late >= 3, "the probe never woke while the GIL was held"
    # Each wake-up during the spin waited for the spinning thread to drop the GIL.
    assert (busy.sum_s - idle.sum_s) / late > long_switch_interval / 2


def test_the_probe_stops_and_can_start_again() -> None:
    probe = ThreadWakeupProbe(period_s=0.005)
    try:
        probe.start()
        wait_for_samples(probe, 2)
        probe.stop()
        stopped = probe.histogram.snapshot().count
        time.sleep(0.05)
        assert probe.histogram.snapshot().count == stopped
        probe.start()
        wait_for_samples(probe, stopped + 2)
    finally:
        probe.stop()


async def test_a_callback_that_keeps_the_loop_shows_as_lag() -> None:
    probe = LoopLagProbe(period_s=0.01)
    probe.start()
    try:
        await asyncio.sleep(0.1)
        before = probe.histogram.snapshot()
        assert before.count >= 1
        time.sleep(0.3)  # noqa: ASYNC251 - blocking the loop is what the test shows
        await asyncio.sleep(0.05)
        after = probe.histogram.snapshot()
    finally:
        await probe.stop()
    assert after.max_s is not None and after.max_s >= 0.25
    stopped = probe.histogram.snapshot().count
    await asyncio.sleep(0.05)
    assert probe.histogram.snapshot().count == stopped


@pytest.mark.parametrize("period", [0.0, -1.0, 11.0])
def test_a_period_out_of_range_is_refused(period: float) -> None:
    with pytest.raises(ValueError, match="period_s must be within"):
        ThreadWakeupProbe(period)
    with pytest.raises(ValueError, match="period_s must be within"):
        LoopLagProbe(period)
