"""The one frame type every source produces and every processor receives."""

from __future__ import annotations

from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from fractions import Fraction
from typing import TYPE_CHECKING, Protocol

import numpy as np
import numpy.typing as npt

if TYPE_CHECKING:
    import av

__all__ = ["FramePixels", "VideoFrame"]


class FramePixels(Protocol):
    """A decoded frame whose RGB array is made only when something asks for it.

    The CMS door's camera frames are these: the detector letterboxes the decoder's frame
    straight to its input size (one swscale call) and the full-resolution RGB is converted
    only for a crop, an action's image, a snapshot or a drawing. :meth:`to_rgb` converts once
    and caches a read-only array; it blocks, so call it off the event loop.
    """

    @property
    def width(self) -> int: ...

    @property
    def height(self) -> int: ...

    def to_rgb(self) -> npt.NDArray[np.uint8]: ...

    def decoded(self) -> AbstractContextManager[av.VideoFrame | None]:
        """The decoder's frame, held exclusively while the context is open (PyAV retags a
        frame while it converts it); ``None`` once the source no longer holds it."""
        ...


@dataclass
class VideoFrame:
    """One decoded video frame.

    ``image`` is an ``(H, W, 3)`` uint8 RGB array, or :class:`FramePixels` that make one on
    first use of :attr:`rgb` (a blocking conversion: touch ``rgb`` off the event loop when
    ``image`` is not an array). ``pts`` is in ``time_base`` units. ``capture_time`` is the
    wall clock (UTC epoch seconds) when the frame was decoded, the start of the
    capture→result latency; ``stream_id`` names the stream it belongs to (the CMS camera
    identifier, or the StreamServer request id).
    """

    image: npt.NDArray[np.uint8] | FramePixels
    pts: int
    time_base: Fraction
    capture_time: float | None = field(default=None, kw_only=True)
    stream_id: str = field(default="", kw_only=True)

    def __post_init__(self) -> None:
        image = self.image
        if isinstance(image, np.ndarray) and (
            image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8
        ):
            raise ValueError(
                f"VideoFrame.rgb must be an H×W×3 uint8 array, got {image.shape} {image.dtype}"
            )
        if self.time_base <= 0:
            raise ValueError(f"VideoFrame.time_base must be positive, got {self.time_base}")

    @property
    def rgb(self) -> npt.NDArray[np.uint8]:
        """The ``(H, W, 3)`` uint8 RGB pixels (converted now if ``image`` is lazy)."""
        image = self.image
        return image if isinstance(image, np.ndarray) else image.to_rgb()

    @property
    def width(self) -> int:
        image = self.image
        return int(image.shape[1]) if isinstance(image, np.ndarray) else image.width

    @property
    def height(self) -> int:
        image = self.image
        return int(image.shape[0]) if isinstance(image, np.ndarray) else image.height

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
