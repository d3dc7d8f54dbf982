"""``demo publish``: a video file as a live trickle input, read back like the worker reads it."""

from __future__ import annotations

import asyncio
import io
import logging
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest

from pytrickle_worker.cli import main
from pytrickle_worker.core.errors import WorkerError
from pytrickle_worker.devtools.publish import publish_video
from pytrickle_worker.devtools.trickle_server import TrickleServer
from pytrickle_worker.transport.trickle import TrickleSubscriber

FPS = 30


def write_clip(path: Path, frames: int) -> None:
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=FPS)
        stream.width, stream.height, stream.pix_fmt = 160, 96, "yuv420p"
        for i in range(frames):
            rgb = np.full((96, 160, 3), (i * 8) % 256, dtype=np.uint8)
            frame = av.VideoFrame.from_ndarray(rgb, format="rgb24")
            frame.pts, frame.time_base = i, Fraction(1, FPS)
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)


async def test_publishes_live_segments_with_increasing_timestamps(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="pytrickle_worker.media.segment_encoder")
    clip = tmp_path / "clip.mp4"
    write_clip(clip, 45)  # 1.5 s: shorter than a 2 s segment, so one segment per pass
    server = TrickleServer()
    port = await server.start("127.0.0.1", 0)
    url = f"http://127.0.0.1:{port}/cam"
    server.create_channel("cam", "video/mp2t")
    try:
        received: list[bytes] = []

        async def read() -> None:
            async with TrickleSubscriber(url, start_seq=0, read_timeout_s=5) as subscriber:
                while (segment := await subscriber.next_segment()) is not None:
                    received.append(await segment.read_all(16 * 1024 * 1024))

        reader = asyncio.ensure_future(read())
        loop = asyncio.get_running_loop()
        started = loop.time()
        assert await publish_video(url, clip, loops=2) == 2
        elapsed = loop.time() - started
        await asyncio.wait_for(reader, 5)  # the DELETE ended the channel
    finally:
        await server.stop()
    assert 2.8 <= elapsed < 6.0  # real time: two passes of 1.5 s
    pts: list[int] = []
    for data in received:
        with av.open(io.BytesIO(data), format="mpegts") as container:
            frames = list(container.decode(video=0))
        assert frames[0].key_frame and (frames[0].width, frames[0].height) == (160, 96)
        pts.extend(frame.pts for frame in frames if frame.pts is not None)
    assert len(pts) == 90
    assert pts == sorted(pts) and len(set(pts)) == 90  # increasing across the loop
    # One encoder per segment: the choice is logged at INFO once, later opens at DEBUG.
    opens = [r.levelno for r in caplog.records if r.getMessage().startswith("encoder open")]
    assert opens == [logging.INFO, logging.DEBUG], opens


async def test_unreadable_video_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(WorkerError, match="cannot read"):
        await publish_video("http://127.0.0.1:9/cam", tmp_path / "missing.mp4", loops=1)


async def test_an_unreachable_server_is_a_clear_error_not_a_loop(tmp_path: Path) -> None:
    clip = tmp_path / "clip.mp4"
    write_clip(clip, 3)  # one tiny segment per pass: the refusals come quickly
    with pytest.raises(WorkerError, match="refused 5 segments in a row"):
        await asyncio.wait_for(publish_video("http://127.0.0.1:9/cam", clip), 30)


def test_cli_reports_an_unreachable_channel_and_exits_1(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    clip = tmp_path / "clip.mp4"
    write_clip(clip, 3)
    code = main(["demo", "publish", "http://user:pw@127.0.0.1:9/cam", "--video", str(clip)])
    assert code == 1
    err = capsys.readouterr().err
    assert "error: http://user:***@127.0.0.1:9/cam refused 5 segments in a row" in err
    assert "pw@" not in err
