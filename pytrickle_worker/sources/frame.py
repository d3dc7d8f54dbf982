"""The latest-frame slot a reader publishes into, and the frames subscribers receive."""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable, Generator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import cast

import av
import numpy as np
from numpy.typing import NDArray

__all__ = ["PUBLISH_HISTORY", "CameraFrame", "DecodedFrame", "LatestFrame", "RgbArray"]

RgbArray = NDArray[np.uint8]


class DecodedFrame:
    """One decoded frame as published by a reader (a ``core.frame.FramePixels``).

    :meth:`to_rgb` converts it once, whoever asks first and however many ask at the same
    time (a per-frame lock), and caches the read-only result. It blocks: call it from a
    worker thread, never on the event loop. :meth:`decoded` lends the decoder's frame itself
    (under the same lock), so a detector can scale and convert it to its input size in one
    step without the full-resolution RGB.
    """

    __slots__ = (
        "_frame",
        "_lock",
        "_on_convert",
        "_rgb",
        "capture_time",
        "height",
        "pts_time",
        "seq",
        "width",
    )

    def __init__(
        self,
        seq: int,
        capture_time: float,
        pts_time: float | None,
        frame: av.VideoFrame,
        on_convert: Callable[[], None] | None = None,
    ) -> None:
        self.seq = seq
        self.capture_time = capture_time
        self.pts_time = pts_time
        self.width = frame.width
        self.height = frame.height
        # Kept after the RGB conversion: a scaled conversion from it is still cheaper than
        # from the RGB. Only the newest frame and the ones being processed are alive.
        self._frame: av.VideoFrame = frame
        self._on_convert = on_convert
        self._rgb: RgbArray | None = None
        self._lock = threading.Lock()

    @property
    def rgb_ready(self) -> RgbArray | None:
        """The cached RGB image, or None when it has not been converted yet."""
        return self._rgb

    def to_rgb(self) -> RgbArray:
        rgb = self._rgb
        if rgb is not None:
            return rgb
        with self._lock:
            if self._rgb is None:
                converted = cast(RgbArray, self._frame.to_ndarray(format="rgb24"))
                converted.flags.writeable = False
                self._rgb = converted
                if self._on_convert is not None:
                    self._on_convert()
            return self._rgb

    @contextmanager
    def decoded(self) -> Generator[av.VideoFrame | None]:
        """The decoder's frame, while no other thread converts it (read it, never write)."""
        with self._lock:
            yield self._frame


@dataclass(frozen=True, slots=True)
class CameraFrame:
    """A frame as a subscriber receives it.

    :attr:`rgb` is ``height x width x 3`` uint8, already cropped, and **read-only**: it is
    shared with every other subscriber of the camera (``rgb.copy()`` before writing into it).
    A frame taken with ``convert=False`` (and no crop) is not converted yet: ``pixels`` is the
    decoded frame and :attr:`rgb` converts it on first use (blocking: off the event loop).
    ``capture_time`` is the wall clock (UTC epoch seconds) when the frame was decoded;
    ``pts_time`` is the stream's presentation time in seconds (None when it has none).
    """

    seq: int
    capture_time: float
    pts_time: float | None
    width: int
    height: int
    source_width: int
    source_height: int
    converted: RgbArray | None = None
    pixels: DecodedFrame | None = None

    @property
    def rgb(self) -> RgbArray:
        return self.converted if self.converted is not None else self._pixels().to_rgb()

    @property
    def image(self) -> RgbArray | DecodedFrame:
        """What a ``VideoFrame`` takes: the decoded frame when uncropped (a detector scales
        it in one step even when its RGB exists), else the cropped RGB."""
        if self.pixels is not None:
            return self.pixels
        return self.rgb

    def _pixels(self) -> DecodedFrame:
        if self.pixels is None:
            raise ValueError("a CameraFrame needs its RGB or its decoded frame")
        return self.pixels


#: Publish times the slot remembers (the last this many frames'), for
#: :meth:`LatestFrame.newest_after`.
PUBLISH_HISTORY = 1024


class LatestFrame:
    """Holds only the newest frame of a source (drop-oldest by construction).

    ``publish`` runs on the reader's thread and calls ``notify``, which must be thread-safe
    (the hub's wakes waiting subscribers with ``core.wakeup.call_on_loop``). The slot also
    remembers when (``clock``, monotonic seconds) each of the last :data:`PUBLISH_HISTORY`
    frames was published, so a subscriber can tell which frames it missed were still the
    newest after a given moment (:meth:`newest_after`).
    """

    def __init__(
        self,
        notify: Callable[[], None],
        on_convert: Callable[[], None] | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._lock = threading.Lock()
        self._latest: DecodedFrame | None = None
        self._seq = 0
        self._notify = notify
        self._on_convert = on_convert
        self._clock = clock
        #: Publish times of frames ``_seq - len + 1 .. _seq``.
        self._published: deque[float] = deque(maxlen=PUBLISH_HISTORY)

    @property
    def latest(self) -> DecodedFrame | None:
        return self._latest

    def publish(self, frame: av.VideoFrame, pts_time: float | None) -> DecodedFrame:
        with self._lock:
            self._seq += 1
            slot = DecodedFrame(self._seq, time.time(), pts_time, frame, self._on_convert)
            self._latest = slot
            self._published.append(self._clock())
        self._notify()
        return slot

    def newest_after(self, after_seq: int, before_seq: int, since: float) -> int:
        """How many frames with ``after_seq < seq < before_seq`` were still the newest
        frame at some moment at or after ``since`` (``clock`` seconds).

        A frame is the newest from its own publish until the next one's, so it counts when
        its successor was published after ``since``. Frames whose successor is older than
        the remembered history are not counted.
        """
        with self._lock:
            times = self._published
            first_seq = self._seq - len(times) + 1  # the oldest remembered frame
            count = 0
            for seq in range(before_seq - 1, after_seq, -1):
                successor = seq + 1
                if successor < first_seq or times[successor - first_seq] <= since:
                    break  # publish times only grow: every older frame is older still
                count += 1
            return count
