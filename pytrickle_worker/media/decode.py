"""Sequential PyAV decoding of one source (file, image, URL) with fps sampling.

This is the simple, single-consumer reader behind ``mpta run``; the shared camera hub builds on
the same PyAV options.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import av
import av.container
import numpy as np
from av.error import FFmpegError

from pytrickle_worker.core.errors import WorkerError
from pytrickle_worker.core.logutil import mask_text, mask_url
from pytrickle_worker.media.options import open_options

logger = logging.getLogger(__name__)


class SourceError(WorkerError):
    """A media source could not be opened or decoded."""


@dataclass(frozen=True)
class DecodedFrame:
    index: int
    pts_time: float
    rgb: np.ndarray
    stream_fps: float


def iter_frames(
    source: str, fps: float | None = None, max_frames: int | None = None, timeout_s: float = 10.0
) -> Iterator[DecodedFrame]:
    """Yield RGB frames of ``source``, at most ``fps`` per second of media time."""
    target = source
    if source.startswith("file://"):
        target = source[len("file://") :]
    if "://" not in target and not Path(target).exists():
        raise SourceError(f"source {target!r} does not exist")
    try:
        container: av.container.InputContainer = av.open(
            target, options=open_options(source, timeout_s), timeout=timeout_s
        )
    except (FFmpegError, OSError) as exc:
        raise SourceError(f"cannot open {mask_url(source)}: {mask_text(str(exc))}") from exc
    with container:
        if not container.streams.video:
            raise SourceError(f"{mask_url(source)} has no video stream")
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        rate = stream.average_rate or stream.guessed_rate
        stream_fps = float(rate) if rate else 0.0
        interval = 1.0 / fps if fps and fps > 0 else 0.0
        next_time = 0.0
        emitted = 0
        decoded = 0
        try:
            for frame in container.decode(stream):
                pts_time = frame.time if frame.pts is not None else decoded / 30.0
                decoded += 1
                if interval:
                    if pts_time + 1e-6 < next_time:
                        continue
                    # Stay on the fps grid (0, 1/fps, 2/fps, ...) so sampling does not drift;
                    # after a gap in the stream, restart the grid at this frame.
                    next_time += interval
                    if next_time <= pts_time:
                        next_time = pts_time + interval
                yield DecodedFrame(emitted, pts_time, frame.to_ndarray(format="rgb24"), stream_fps)
                emitted += 1
                if max_frames is not None and emitted >= max_frames:
                    return
        except FFmpegError as exc:
            raise SourceError(f"decoding {mask_url(source)} failed: {mask_text(str(exc))}") from exc
