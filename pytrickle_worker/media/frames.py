"""RGB frames as numpy arrays, and their hand-over to PyAV."""

from __future__ import annotations

import av
import numpy as np
import numpy.typing as npt
from av.video.reformatter import Interpolation, VideoReformatter

__all__ = [
    "RgbArray",
    "check_rgb_frame",
    "fit_width",
    "resize_rgb",
    "wrap_rgb_frame",
    "yuv420_planes",
]

#: An ``(H, W, 3)`` ``uint8`` RGB image.
RgbArray = npt.NDArray[np.uint8]


def check_rgb_frame(frame: npt.NDArray[np.generic]) -> RgbArray:
    """``frame`` as a ``uint8`` RGB array; ValueError unless it is a non-empty ``(H, W, 3)``
    ``uint8`` array."""
    if frame.ndim != 3 or frame.shape[2] != 3 or frame.dtype != np.uint8:
        raise ValueError(
            f"expected an (H, W, 3) uint8 RGB frame, got shape {frame.shape} dtype {frame.dtype}"
        )
    if frame.shape[0] < 1 or frame.shape[1] < 1:
        raise ValueError(f"empty frame of shape {frame.shape}")
    return frame.view(np.uint8)


def wrap_rgb_frame(frame: RgbArray) -> av.VideoFrame:
    """An rgb24 ``av.VideoFrame`` over ``frame``'s memory, without copying the pixels
    (rows with padding are made contiguous first). The frame is only valid while ``frame``
    is, and must not be written through."""
    # from_numpy_buffer wraps the memory without a copy; it needs contiguous pixel rows.
    if frame.strides[1:] != (3, 1):
        frame = np.ascontiguousarray(frame)
    return av.VideoFrame.from_numpy_buffer(frame, format="rgb24")


def fit_width(width: int, height: int, max_width: int) -> tuple[int, int]:
    """``(width, height)`` scaled down to at most ``max_width`` wide, aspect kept (never up)."""
    if max_width < 1:
        raise ValueError(f"max_width must be >= 1, got {max_width}")
    if width <= max_width:
        return width, height
    return max_width, max(1, round(height * max_width / width))


def resize_rgb(
    frame: RgbArray,
    width: int,
    height: int,
    *,
    reformatter: VideoReformatter | None = None,
) -> RgbArray:
    """``frame`` scaled to ``width`` × ``height`` with swscale (area averaging when it
    shrinks); a new array. Blocking: call it from a worker thread for big frames."""
    image = check_rgb_frame(frame)
    if (int(image.shape[1]), int(image.shape[0])) == (width, height):
        return image.copy()
    worker = reformatter if reformatter is not None else VideoReformatter()
    scaled = worker.reformat(
        wrap_rgb_frame(image),
        width=width,
        height=height,
        format="rgb24",
        interpolation=Interpolation.AREA,
    )
    return scaled.to_ndarray().view(np.uint8)


def yuv420_planes(
    frame: av.VideoFrame,
) -> tuple[npt.NDArray[np.uint8], npt.NDArray[np.uint8], npt.NDArray[np.uint8]]:
    """Writable ``(Y, U, V)`` views of a 4:2:0 frame's planes (no copy): Y is ``H × W``,
    U and V ``ceil(H/2) × ceil(W/2)``; what is written shows in the frame."""
    if frame.format.name not in ("yuv420p", "yuvj420p"):
        raise ValueError(f"expected a yuv420p or yuvj420p frame, got {frame.format.name}")
    views: list[npt.NDArray[np.uint8]] = []
    for plane in frame.planes:
        rows = np.frombuffer(memoryview(plane), dtype=np.uint8).reshape(
            plane.height, plane.line_size
        )
        views.append(rows[:, : plane.width])
    y, u, v = views
    return y, u, v
