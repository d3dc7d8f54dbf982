"""Still images from outside (uploads): recognise a JPEG or PNG, read its size from the
header, and decode it with FFmpeg (PyAV), refusing what is not really such an image.

:func:`probe_image` is cheap and reads only the header, so an image that declares too many
pixels (a "decompression bomb": a tiny PNG of 100000 x 100000) is refused before a single
pixel buffer is allocated. :func:`decode_image` is blocking (run it on a worker thread).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import av
import numpy as np
from av.error import FFmpegError
from av.video.codeccontext import VideoCodecContext

from pytrickle_worker.media.frames import RgbArray

__all__ = [
    "MAX_JPEG_SCANS",
    "ImageError",
    "ImageFormat",
    "ImageInfo",
    "ImageLimitError",
    "UnsupportedImageError",
    "decode_image",
    "probe_image",
]

ImageFormat = Literal["jpeg", "png"]

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_JPEG_SOI = b"\xff\xd8\xff"
_JPEG_EOI = b"\xff\xd9"
_JPEG_SOS = b"\xff\xda"
#: Start-of-frame markers (they carry the size): every SOFn but DHT (C4), JPG (C8), DAC (CC).
_JPEG_SOF = frozenset(
    {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}
)
#: Markers without a length field: TEM, RST0..7, SOI.
_JPEG_STANDALONE = frozenset({0x01, 0xD0, 0xD1, 0xD2, 0xD3, 0xD4, 0xD5, 0xD6, 0xD7, 0xD8})
_DECODERS: dict[ImageFormat, str] = {"jpeg": "mjpeg", "png": "png"}
#: Walking a header is a Python loop per segment or chunk: a file of millions of empty
#: comment segments (or PNG chunks) would take seconds. Real files have a few dozen segments
#: before the frame header, and a few thousand chunks at most (IDAT of 8-64 kB).
MAX_JPEG_HEADER_SEGMENTS = 512
MAX_PNG_CHUNKS = 65_536
#: A progressive JPEG has about 10 scans; FFmpeg decodes each whole, so a small file of
#: thousands of scans costs minutes of CPU (measured: 2.2 ms a scan of a 12000x12000 image).
MAX_JPEG_SCANS = 100


class ImageError(ValueError):
    """The bytes are not a usable image; the message says why."""


class ImageLimitError(ImageError):
    """The image asks for more work than any real one does (too many scans, segments or
    chunks): refused whatever else is right with it."""


class UnsupportedImageError(ImageError):
    """The bytes are neither a JPEG nor a PNG."""


@dataclass(frozen=True)
class ImageInfo:
    """What an image's header says."""

    format: ImageFormat
    width: int
    height: int

    @property
    def pixels(self) -> int:
        return self.width * self.height


def probe_image(data: bytes) -> ImageInfo:
    """The format and size an image declares; :class:`UnsupportedImageError` when it is not
    a JPEG or PNG, :class:`ImageError` when its header is broken or truncated.

    Checks structure only (a PNG's chunks up to IEND, a JPEG's markers up to its frame header
    and an end-of-image marker); whether the pixels decode is :func:`decode_image`'s business.
    """
    if not data:
        raise ImageError("image is empty")
    if data.startswith(_PNG_SIGNATURE):
        return _probe_png(data)
    if data.startswith(_JPEG_SOI):
        return _probe_jpeg(data)
    raise UnsupportedImageError(f"image is not a JPEG or PNG (it starts with {data[:8].hex(' ')})")


def _probe_png(data: bytes) -> ImageInfo:
    pos = len(_PNG_SIGNATURE)
    width = height = -1
    for _ in range(MAX_PNG_CHUNKS):
        if pos + 8 > len(data):
            raise ImageError("PNG is truncated (no IEND chunk)")
        length = int.from_bytes(data[pos : pos + 4], "big")
        kind = data[pos + 4 : pos + 8]
        end = pos + 12 + length
        if length > 0x7FFFFFFF or end > len(data):
            raise ImageError(f"PNG is truncated (chunk {kind!r} at byte {pos} runs past the end)")
        if width < 0:
            if kind != b"IHDR" or length != 13:
                raise ImageError("PNG does not start with an IHDR chunk")
            width = int.from_bytes(data[pos + 8 : pos + 12], "big")
            height = int.from_bytes(data[pos + 12 : pos + 16], "big")
        if kind == b"IEND":
            return ImageInfo("png", width, height)
        pos = end
    raise ImageLimitError(f"PNG has more than {MAX_PNG_CHUNKS} chunks")


def _probe_jpeg(data: bytes) -> ImageInfo:
    pos, segments = 2, 0
    while pos + 4 <= len(data):
        segments += 1
        if segments > MAX_JPEG_HEADER_SEGMENTS:
            raise ImageLimitError(
                f"JPEG has more than {MAX_JPEG_HEADER_SEGMENTS} segments before its frame header"
            )
        if data[pos] != 0xFF:
            raise ImageError(f"JPEG is malformed (no marker at byte {pos})")
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte before a marker
            pos += 1
            continue
        if marker in _JPEG_STANDALONE:
            pos += 2
            continue
        if marker in (0xD9, 0xDA):  # end of image or start of scan before any frame header
            break
        length = int.from_bytes(data[pos + 2 : pos + 4], "big")
        if length < 2:
            raise ImageError(f"JPEG is malformed (segment length {length} at byte {pos})")
        if marker in _JPEG_SOF:
            if pos + 9 > len(data):
                break
            height = int.from_bytes(data[pos + 5 : pos + 7], "big")
            width = int.from_bytes(data[pos + 7 : pos + 9], "big")
            # The entropy-coded data cannot contain FF D9 (an FF there is followed by 00 or
            # a restart marker), so a JPEG without one after its header was cut short.
            if data.rfind(_JPEG_EOI, pos) < 0:
                raise ImageError("JPEG is truncated (no end-of-image marker)")
            # Nor can it contain FF DA: each one up to the image's end starts a scan (what
            # follows the end, such as a phone's "motion photo" video, is not counted).
            scans = data.count(_JPEG_SOS, pos, data.find(_JPEG_EOI, pos))
            if scans > MAX_JPEG_SCANS:
                raise ImageLimitError(f"JPEG has {scans} scans (at most {MAX_JPEG_SCANS})")
            return ImageInfo("jpeg", width, height)
        pos += 2 + length
    raise ImageError("JPEG is truncated or malformed (no frame header with its size)")


def decode_image(data: bytes, info: ImageInfo) -> RgbArray:
    """The image's pixels as RGB (blocking). :class:`ImageError` when FFmpeg cannot decode
    it cleanly (any corrupt data is an error, not a grey patch) or it does not have the
    size its header declared."""
    codec = av.CodecContext.create(_DECODERS[info.format], "r")
    if not isinstance(codec, VideoCodecContext):  # pragma: no cover - FFmpeg's own decoders
        raise ImageError(f"FFmpeg has no {info.format} image decoder")
    # "explode": stop at the first damaged block instead of concealing it.
    codec.options = {"err_detect": "explode"}
    codec.thread_count = 1
    try:
        frames = codec.decode(av.Packet(data))
        frames += codec.decode(None)
        if not frames:
            raise ImageError(f"{info.format.upper()} decodes to no picture")
        frame = frames[0]
        if (frame.width, frame.height) != (info.width, info.height):
            raise ImageError(
                f"{info.format.upper()} decodes to {frame.width}x{frame.height}, not the "
                f"{info.width}x{info.height} its header declares"
            )
        rgb = frame.to_ndarray(format="rgb24")
    except FFmpegError as exc:
        raise ImageError(f"{info.format.upper()} does not decode: {exc.strerror}") from None
    return np.ascontiguousarray(rgb, dtype=np.uint8)
