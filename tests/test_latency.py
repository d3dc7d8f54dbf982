"""core.latency: the capture→result latency histogram behind ``ptw_stream_latency_seconds``
and the status' ``latency_ms_p50``/``latency_ms_p95``."""

from __future__ import annotations

import math
import threading

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pytrickle_worker.core.latency import (
    DEFAULT_LATENCY_BUCKETS,
    LatencyHistogram,
)


def test_empty_histogram_has_no_percentiles() -> None:
    snap = LatencyHistogram().snapshot()
    assert snap.bounds == DEFAULT_LATENCY_BUCKETS
    assert snap.cumulative == (0,) * len(DEFAULT_LATENCY_BUCKETS)
    assert (snap.count, snap.sum_s, snap.window) == (0, 0.0, 0)
    assert snap.p50_s is None and snap.p95_s is None and snap.max_s is None


def test_buckets_are_inclusive_upper_bounds_and_percentiles_nearest_rank() -> None:
    histogram = LatencyHistogram(buckets=(0.1, 1.0), window=100)
    for seconds in (0.1, 0.5, 1.0, 3.0):
        histogram.observe(seconds)
    snap = histogram.snapshot()
    assert snap.cumulative == (1, 3)  # 0.1 <= 0.1; 0.5 and 1.0 <= 1.0; 3.0 only in +Inf
    assert snap.count == 4 and snap.sum_s == pytest.approx(4.6)
    assert (snap.p50_s, snap.p95_s, snap.max_s) == (0.5, 3.0, 3.0)
    histogram = LatencyHistogram(window=100)
    for i in range(1, 101):
        histogram.observe(i / 100)
    snap = histogram.snapshot()
    assert (snap.p50_s, snap.p95_s) == (0.5, 0.95)


def test_odd_values_window_and_bad_arguments() -> None:
    histogram = LatencyHistogram(window=3)
    histogram.observe(-0.2)  # the wall clock stepped back: counts as 0
    histogram.observe(math.nan)
    histogram.observe(math.inf)
    assert histogram.snapshot().count == 1 and histogram.snapshot().max_s == 0.0
    for seconds in (7.0, 8.0, 9.0):
        histogram.observe(seconds)
    snap = histogram.snapshot()
    assert snap.count == 4 and snap.window == 3 and snap.p50_s == 8.0  # 0.0 left the window
    for bad in ((), (0.5, 0.1), (0.0, 1.0), (1.0, math.inf)):
        with pytest.raises(ValueError):
            LatencyHistogram(buckets=bad)
    with pytest.raises(ValueError):
        LatencyHistogram(window=0)


def test_threads_observe_while_another_reads() -> None:
    histogram = LatencyHistogram()

    def feed() -> None:
        for i in range(2000):
            histogram.observe((i % 50) / 100)

    threads = [threading.Thread(target=feed) for _ in range(4)]
    for thread in threads:
        thread.start()
    while any(t.is_alive() for t in threads):
        snap = histogram.snapshot()
        assert list(snap.cumulative) == sorted(snap.cumulative)
        assert snap.cumulative[-1] <= snap.count
    for thread in threads:
        thread.join()
    assert histogram.snapshot().count == 8000


latencies = st.floats(min_value=0.0, max_value=60.0, allow_nan=False)


@given(samples=st.lists(latencies, max_size=400), window=st.integers(1, 300))
def test_histogram_properties(samples: list[float], window: int) -> None:
    histogram = LatencyHistogram(window=window)
    for seconds in samples:
        histogram.observe(seconds)
    snap = histogram.snapshot()
    assert snap.count == len(samples)
    assert snap.sum_s == pytest.approx(math.fsum(samples))
    # Cumulative: monotone, each bucket the samples at or under its bound, within the count.
    assert list(snap.cumulative) == sorted(snap.cumulative)
    for bound, cumulative in zip(snap.bounds, snap.cumulative, strict=True):
        assert cumulative == sum(1 for s in samples if s <= bound)
    assert not snap.cumulative or snap.cumulative[-1] <= snap.count
    # The window: bounded, the most recent samples.
    assert snap.window == min(window, len(samples))
    if samples:
        recent = samples[-window:]
        assert snap.p50_s is not None and snap.p95_s is not None
        assert min(recent) <= snap.p50_s <= snap.p95_s <= max(recent) == snap.max_s
        assert snap.p50_s in recent and snap.p95_s in recent
    else:
        assert snap.p50_s is None and snap.p95_s is None
