"""A demo gateway input: a video file published to a trickle channel as live MPEG-TS segments.

``pytrickle-worker demo publish URL [--video FILE] [--loops N]`` decodes the video, encodes
it with the worker's own segment encoder (H.264, no B-frames, a 2 s GOP per segment, 90 kHz
timestamps that keep increasing across loops) and streams each segment's POST body over its
2 s of media, in real time, as a gateway forwards a live stream. On exit it DELETEs the
channel (end of stream).
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections.abc import Iterator
from fractions import Fraction
from pathlib import Path
from typing import cast

import av
import numpy as np
import numpy.typing as npt
from av.error import FFmpegError

from pytrickle_worker.core.errors import WorkerError
from pytrickle_worker.core.logutil import mask_url
from pytrickle_worker.media.mpegts import TS_TIME_BASE
from pytrickle_worker.media.segment_encoder import EncoderSettings, encode_segments
from pytrickle_worker.processing import VideoFrame
from pytrickle_worker.transport.trickle import TricklePublisher

__all__ = ["publish_video"]

logger = logging.getLogger(__name__)

SEGMENT_S = 2.0
_TS_PACKET = 188
#: Consecutive segments the server may refuse (or not be reached for) before giving up.
_MAX_REFUSED = 5


def _segments(video: Path, first_index: int) -> Iterator[tuple[bytes, int, float]]:
    """One pass over ``video`` as (MPEG-TS segment, frames in it, fps), one segment per
    ``SEGMENT_S`` of media, frames numbered from ``first_index`` (the frames published so
    far, so timestamps keep increasing across loops). Decodes lazily and hands frames to the
    encoder one by one, so memory does not grow with the resolution. Blocking."""
    try:
        with av.open(str(video)) as container:
            if not container.streams.video:
                raise WorkerError(f"{video} has no video stream")
            stream = container.streams.video[0]
            fps = float(stream.average_rate or stream.guessed_rate or Fraction(30))
            per_segment = max(1, round(fps * SEGMENT_S))
            settings = EncoderSettings(fps=fps, gop_seconds=SEGMENT_S)
            ticks = 90_000 / fps
            decoded = iter(container.decode(stream))
            index = first_index
            while True:
                start = index

                def frames(start: int = start) -> Iterator[VideoFrame]:
                    for offset, frame in enumerate(itertools.islice(decoded, per_segment)):
                        rgb = cast(npt.NDArray[np.uint8], frame.to_ndarray(format="rgb24"))
                        yield VideoFrame(rgb, round((start + offset) * ticks), TS_TIME_BASE)

                counted = _Counted(frames())
                # One segment per call: the encoder choice is logged at INFO only once (the
                # first segment of the first pass; later passes start at first_index > 0).
                data = b"".join(encode_segments(counted, settings, announce=start == 0))
                if counted.count == 0:
                    return
                index += counted.count
                yield data, counted.count, fps
    except FFmpegError as exc:
        raise WorkerError(f"cannot read {video}: {exc}") from exc


class _Counted:
    """An iterator that counts what it hands out."""

    def __init__(self, items: Iterator[VideoFrame]) -> None:
        self._items = items
        self.count = 0

    def __iter__(self) -> Iterator[VideoFrame]:
        for item in self._items:
            self.count += 1
            yield item


async def publish_video(url: str, video: Path, *, loops: int | None = None) -> int:
    """Publish ``video`` to the trickle channel ``url`` in real time, ``loops`` times
    (forever when None). Returns the number of segments published."""
    loop = asyncio.get_running_loop()
    publisher = TricklePublisher(url, "video/mp2t", reset_on_start=True)
    logger.info("publishing %s to %s in real time", video, mask_url(url))
    started = loop.time()
    published = frames = refused = 0
    media_s = 0.0  # media time published so far: the next segment is due then
    iteration = 0
    try:
        while loops is None or iteration < loops:
            segments = _segments(video, frames)
            while (item := await asyncio.to_thread(next, segments, None)) is not None:
                data, count, fps = item
                await asyncio.sleep(max(0.0, started + media_s - loop.time()))
                if await _stream_segment(publisher, data, count, started + media_s + count / fps):
                    refused = 0
                else:
                    refused += 1
                    if refused >= _MAX_REFUSED:
                        raise WorkerError(
                            f"{mask_url(url)} refused {refused} segments in a row "
                            "(is the trickle server running, and the channel open?)"
                        )
                published += 1
                frames += count
                media_s += count / fps
            if frames == 0:
                raise WorkerError(f"{video} has no decodable frames")
            iteration += 1
    finally:
        await publisher.close()
    return published


async def _stream_segment(
    publisher: TricklePublisher, data: bytes, frames: int, due_by: float
) -> bool:
    """Write one segment as an encoder would: its bytes spread over its media duration, one
    piece per frame, instead of in one burst (a burst makes the worker decode a whole
    segment's frames at once, and drop most of them to stay live). True when the server
    took it."""
    loop = asyncio.get_running_loop()
    writer = await publisher.next_segment()
    step = max(_TS_PACKET, -(-len(data) // max(1, frames) // _TS_PACKET) * _TS_PACKET)
    pieces = range(0, len(data), step)
    start = loop.time()
    interval = max(0.0, due_by - start) / max(1, len(pieces))
    for n, offset in enumerate(pieces):
        await writer.write(data[offset : offset + step])
        await asyncio.sleep(max(0.0, start + (n + 1) * interval - loop.time()))
    await writer.close()
    return writer.ok
