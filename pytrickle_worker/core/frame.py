"""The one frame type every source produces and every processor receives."""

from __future__ import annotations

from dataclasses import dataclass, field
from fractions import Fraction

import numpy as np
import numpy.typing as npt

__all__ = ["VideoFrame"]


@dataclass
class VideoFrame:
    """One decoded video frame.

    ``rgb`` is ``(H, W, 3)`` uint8; ``pts`` is in ``time_base`` units. ``capture_time`` is
    the wall clock (UTC epoch seconds) when the frame was decoded, the start of the
    capture→result latency; ``stream_id`` names the stream it belongs to (the CMS camera
    identifier, or the StreamServer request id).
    """

    rgb: npt.NDArray[np.uint8]
    pts: int
    time_base: Fraction
    capture_time: float | None = field(default=None, kw_only=True)
    stream_id: str = field(default="", kw_only=True)

    def __post_init__(self) -> None:
        rgb = self.rgb
        if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
            raise ValueError(
                f"VideoFrame.rgb must be an H×W×3 uint8 array, got {rgb.shape} {rgb.dtype}"
            )
        if self.time_base <= 0:
            raise ValueError(f"VideoFrame.time_base must be positive, got {self.time_base}")

    @property
    def width(self) -> int:
        return int(self.rgb.shape[1])

    @property
    def height(self) -> int:
        return int(self.rgb.shape[0])

    @property
    def time_s(self) -> float:
        """Presentation time in seconds."""
        return float(self.pts * self.time_base)

    def with_rgb(self, rgb: npt.NDArray[np.uint8]) -> VideoFrame:
        """The same frame (timing, capture time, stream) with other pixels."""
        return VideoFrame(
            rgb,
            self.pts,
            self.time_base,
            capture_time=self.capture_time,
            stream_id=self.stream_id,
        )
