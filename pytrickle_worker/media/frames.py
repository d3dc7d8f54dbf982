"""RGB frames as numpy arrays, and their hand-over to PyAV."""

from __future__ import annotations

import av
import numpy as np
import numpy.typing as npt

__all__ = ["RgbArray", "check_rgb_frame", "wrap_rgb_frame"]

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
