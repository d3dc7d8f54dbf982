"""GET /camera/{id}/image's JPEG cache (frontdoors/cms/snapshots.py): one encode per camera
frame however many ask, a bounded number at once, nothing cached from a failure."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import pytest

from pytrickle_worker.frontdoors.cms.snapshots import FrameJpegs


class Encoder:
    """An encode callable that counts its calls and how many run at once."""

    def __init__(self, delay_s: float = 0.02) -> None:
        self.delay_s = delay_s
        self.calls = 0
        self.running = 0
        self.peak = 0
        self.fail = False

    def for_frame(self, name: str) -> Callable[[], Awaitable[bytes]]:
        async def encode() -> bytes:
            self.calls += 1
            self.running += 1
            self.peak = max(self.peak, self.running)
            try:
                await asyncio.sleep(self.delay_s)
                if self.fail:
                    raise RuntimeError("encoder failed")
                return name.encode()
            finally:
                self.running -= 1

        return encode


async def test_requests_for_one_frame_share_one_encode() -> None:
    jpegs, encoder = FrameJpegs(), Encoder()
    bodies = await asyncio.gather(
        *(jpegs.get("cam", 1, encoder.for_frame("f1")) for _ in range(10))
    )
    assert bodies == [b"f1"] * 10 and encoder.calls == 1
    assert await jpegs.get("cam", 1, encoder.for_frame("other")) == b"f1"  # cached
    assert await jpegs.get("cam", 2, encoder.for_frame("f2")) == b"f2"  # a newer frame
    assert encoder.calls == 2


async def test_a_failed_encode_fails_its_waiters_and_is_tried_again() -> None:
    jpegs, encoder = FrameJpegs(), Encoder()
    encoder.fail = True
    results = await asyncio.gather(
        *(jpegs.get("cam", 1, encoder.for_frame("f1")) for _ in range(3)), return_exceptions=True
    )
    assert all(isinstance(r, RuntimeError) for r in results) and encoder.calls == 1
    encoder.fail = False
    assert await jpegs.get("cam", 1, encoder.for_frame("f1")) == b"f1"
    assert encoder.calls == 2


async def test_a_cancelled_encode_is_tried_again() -> None:
    jpegs = FrameJpegs()

    async def cancelled() -> bytes:
        raise asyncio.CancelledError

    with pytest.raises(asyncio.CancelledError):
        await jpegs.get("cam", 1, cancelled)
    encoder = Encoder()
    assert await jpegs.get("cam", 1, encoder.for_frame("f1")) == b"f1"
    assert encoder.calls == 1


async def test_encodes_run_two_at_a_time_and_a_leaving_caller_cancels_nothing() -> None:
    jpegs, encoder = FrameJpegs(concurrency=2), Encoder(delay_s=0.05)
    leaving = asyncio.ensure_future(jpegs.get("cam-0", 1, encoder.for_frame("c0")))
    await asyncio.sleep(0)
    leaving.cancel()
    bodies = await asyncio.gather(
        *(jpegs.get(f"cam-{i}", 1, encoder.for_frame(f"c{i}")) for i in range(6))
    )
    assert bodies == [f"c{i}".encode() for i in range(6)]
    assert encoder.peak == 2
    assert encoder.calls == 6  # cam-0's encode went on for the others


async def test_the_cache_keeps_at_most_max_cameras() -> None:
    jpegs, encoder = FrameJpegs(max_cameras=2), Encoder(delay_s=0)
    for name in ("a", "b", "a", "c"):  # c pushes out b, the least recently asked
        await jpegs.get(name, 1, encoder.for_frame(name))
    assert encoder.calls == 3
    await jpegs.get("a", 1, encoder.for_frame("a"))
    assert encoder.calls == 3  # still there
    await jpegs.get("b", 1, encoder.for_frame("b"))
    assert encoder.calls == 4  # gone, made again
    with pytest.raises(ValueError, match="at least 1"):
        FrameJpegs(max_cameras=0)
