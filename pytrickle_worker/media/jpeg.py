"""JPEG encoding of RGB frames with FFmpeg's mjpeg encoder (no OpenCV, no Pillow)."""

from __future__ import annotations

from fractions import Fraction
from typing import Any, cast

import av
import numpy as np
import numpy.typing as npt
from av.packet import Packet
from av.video.reformatter import Interpolation, VideoReformatter

from pytrickle_worker.media.frames import check_rgb_frame, wrap_rgb_frame

__all__ = ["JpegEncoder", "encode_jpeg", "encode_jpeg_frame", "jpeg_qscale", "scale_for_jpeg"]

#: The pixel format FFmpeg's mjpeg encoder takes: 4:2:0, full range (JPEG's).
JPEG_PIX_FMT = "yuvj420p"
#: The encoder's time base (a JPEG has no timing; the encoder wants increasing pts).
_TIME_BASE = Fraction(1, 25)


def jpeg_qscale(quality: int) -> int:
    """Map a JPEG quality (1–100, libjpeg style) to an FFmpeg mjpeg ``qscale`` (1–31).

    FFmpeg's mjpeg quantiser is the MPEG-1 intra matrix × qscale / 8; libjpeg's is its
    luminance table × S / 100 with ``S = 5000 / q`` below 50 and ``200 - 2q`` above. Matching
    the tables' mean gives ``qscale ≈ 0.149 S``: quality 90 → 3, 75 → 7, 50 → 15.
    """
    if not 1 <= quality <= 100:
        raise ValueError(f"JPEG quality must be 1..100, not {quality}")
    scale = 5000 / quality if quality < 50 else 200 - 2 * quality
    return int(min(31, max(1, round(0.149 * scale))))


def encode_jpeg(
    frame: npt.NDArray[np.uint8],
    quality: int = 90,
    *,
    reformatter: VideoReformatter | None = None,
) -> bytes:
    """Encode an RGB frame as a baseline JPEG (4:2:0, full range) with FFmpeg's mjpeg encoder.

    ``quality`` is 1–100 like libjpeg's (see :func:`jpeg_qscale`). Single-threaded with the
    default Huffman tables: about 1–2 ms for 640×360.
    """
    image = check_rgb_frame(frame)
    height, width = int(image.shape[0]), int(image.shape[1])
    yuv = scale_for_jpeg(image, width, height, reformatter=reformatter)
    return encode_jpeg_frame(yuv, quality)


def scale_for_jpeg(
    frame: npt.NDArray[np.uint8] | av.VideoFrame,
    width: int,
    height: int,
    *,
    reformatter: VideoReformatter | None = None,
) -> av.VideoFrame:
    """An RGB frame, or a decoder's frame as it is (no RGB made on the way), scaled to
    ``width`` × ``height`` and converted for :func:`encode_jpeg_frame`, in one swscale pass
    (area averaging when it shrinks).

    Scaling and converting together costs about what the conversion alone does; the planes
    of the new frame may be drawn on (``media.frames.yuv420_planes``) before encoding. One
    swscale thread: callers already run this off the event loop, and swscale's own slice
    threads (its default) cost a quarter more CPU for the same pixels (bench/bench_live.py).
    """
    is_decoded = isinstance(frame, av.VideoFrame)
    source = frame if is_decoded else wrap_rgb_frame(check_rgb_frame(frame))
    worker = reformatter if reformatter is not None else VideoReformatter()
    same_size = (source.width, source.height) == (width, height)
    return worker.reformat(
        source,
        width=width,
        height=height,
        format=JPEG_PIX_FMT,
        interpolation=Interpolation.BILINEAR if same_size else Interpolation.AREA,
        threads=1,
    )


def encode_jpeg_frame(frame: av.VideoFrame, quality: int = 90) -> bytes:
    """Encode a ``yuvj420p`` frame (see :func:`scale_for_jpeg`) as a baseline JPEG with an
    encoder opened for it; a thread that encodes many frames keeps a :class:`JpegEncoder`."""
    return JpegEncoder().encode(frame, quality)


class JpegEncoder:
    """FFmpeg's mjpeg encoder kept open between frames of one size and quality.

    Opening the encoder costs about a sixth of encoding a 960×540 frame (2.14 → 1.80 ms
    with it kept, bench/RESULTS.md); its JPEGs are byte-identical either way (each is a
    whole intra picture). A new size or quality opens a new encoder. Not thread-safe: one
    per thread. It numbers the frames it is given (their ``pts`` and ``time_base`` are
    overwritten), which the encoder requires to increase.
    """

    def __init__(self) -> None:
        self._codec: av.VideoCodecContext | None = None
        self._key: tuple[int, int, int] | None = None
        self._pts = 0

    def encode(self, frame: av.VideoFrame, quality: int = 90) -> bytes:
        if frame.format.name != JPEG_PIX_FMT:
            raise ValueError(f"expected a {JPEG_PIX_FMT} frame, got {frame.format.name}")
        key = (frame.width, frame.height, quality)
        codec = self._codec
        if codec is None or key != self._key:
            codec = self._codec = _open_encoder(frame.width, frame.height, quality)
            self._key, self._pts = key, 0
        # Numbered in the encoder's own time base: PyAV rescales a frame's pts from the time
        # base it carries (a decoder's), which could map consecutive numbers onto one.
        frame.pts, frame.time_base = self._pts, _TIME_BASE
        self._pts += 1
        try:
            packets = cast("list[Packet[Any]]", codec.encode(frame))
        except Exception:
            self._codec = None  # whatever state it is in, the next frame gets a fresh one
            raise
        if not packets:  # the encoder never holds a picture back; if it did, flush it
            packets = cast("list[Packet[Any]]", codec.encode(None))
            self._codec = None
        return b"".join(bytes(packet) for packet in packets)


def _open_encoder(width: int, height: int, quality: int) -> av.VideoCodecContext:
    qscale = jpeg_qscale(quality)
    codec = av.CodecContext.create("mjpeg", "w")
    codec.width = width
    codec.height = height
    codec.pix_fmt = JPEG_PIX_FMT
    codec.time_base = _TIME_BASE
    # A fixed quantiser: rate control pinned between qmin and qmax.
    codec.qmin = qscale
    codec.qmax = qscale
    codec.thread_count = 1
    codec.options = {"huffman": "default"}
    return codec
