"""The bottom-layer helpers: backoff, frame-rate sampling, thread-to-loop wake-ups."""

from __future__ import annotations

import asyncio
import random
import threading

import pytest

from pytrickle_worker.core.backoff import Backoff
from pytrickle_worker.core.rate import RateSampler
from pytrickle_worker.core.wakeup import call_on_loop, resolve_waiter

# -- backoff ----------------------------------------------------------------------------------


def test_backoff_without_jitter_doubles_up_to_the_cap_and_restarts_after_reset() -> None:
    backoff = Backoff(0.5, 3.0, jitter=False)
    assert [backoff.failed() for _ in range(5)] == [0.5, 1.0, 2.0, 3.0, 3.0]
    assert backoff.failures == 5
    backoff.reset()
    assert backoff.failed() == 0.5


def test_backoff_with_jitter_stays_under_the_ceiling() -> None:
    backoff = Backoff(0.5, 4.0, rng=random.Random(7))
    for failures in range(1, 8):
        delay = backoff.failed()
        assert 0.0 <= delay <= backoff.ceiling(failures)


def test_backoff_failed_never_gives_up_but_next_delay_does() -> None:
    bounded = Backoff(0.1, 1.0, max_retries=1, jitter=False)
    assert bounded.next_delay() == 0.1
    assert bounded.next_delay() is None
    assert bounded.failed() == 0.4  # a caller that never gives up still gets a delay


# -- rate sampling ----------------------------------------------------------------------------


def test_sampler_on_a_grid_takes_every_third_frame_of_30_fps_at_10() -> None:
    sampler = RateSampler(10)
    taken = [i for i in range(30) if sampler.due(i / 30)]
    assert taken == list(range(0, 30, 3))


def test_sampler_on_a_grid_does_not_sag_when_frames_arrive_late() -> None:
    sampler = RateSampler(2)
    # Frames at 0.0, then late ones: 0.55 (due 0.5), then 1.0 is due on the grid.
    assert [sampler.due(t) for t in (0.0, 0.55, 0.9, 1.0)] == [True, True, False, True]


def test_sampler_with_minimum_spacing_waits_from_the_last_frame_taken() -> None:
    sampler = RateSampler(2, on_grid=False)
    assert sampler.due(0.0)
    assert sampler.due(0.55)
    assert sampler.wait_s(1.0) == pytest.approx(0.05)
    assert not sampler.due(1.0)
    assert sampler.due(1.05)


def test_sampler_restarts_after_a_gap_and_when_the_clock_goes_back() -> None:
    sampler = RateSampler(10)
    assert sampler.due(0.0)
    assert sampler.due(5.0)  # a gap: no catching up
    assert not sampler.due(5.05)
    assert sampler.due(1.0)  # the clock went back: start over
    assert not sampler.due(1.05)


def test_sampler_without_a_rate_takes_everything() -> None:
    sampler = RateSampler(None)
    assert all(sampler.due(t / 1000) for t in range(10))
    sampler.fps = 0
    assert sampler.due(1.0) and sampler.due(1.0)


# -- wake-ups ---------------------------------------------------------------------------------


async def test_a_thread_wakes_a_waiter_and_calls_back_on_the_loop() -> None:
    loop = asyncio.get_running_loop()
    waiter: asyncio.Future[None] = loop.create_future()
    called = asyncio.Event()

    def wake_twice_then_call_back() -> None:
        resolve_waiter(waiter)
        resolve_waiter(waiter)  # already woken: no InvalidStateError on the loop
        call_on_loop(loop, called.set)

    thread = threading.Thread(target=wake_twice_then_call_back)
    thread.start()
    await asyncio.wait_for(waiter, 2)
    await asyncio.wait_for(called.wait(), 2)
    thread.join()


def test_a_closed_loop_drops_the_wake_up() -> None:
    loop = asyncio.new_event_loop()
    waiter: asyncio.Future[None] = loop.create_future()
    loop.close()
    assert not call_on_loop(loop, lambda: None)
    assert not resolve_waiter(waiter)
