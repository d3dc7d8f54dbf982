"""Image preprocessing for ultralytics models (numpy + PyAV swscale, no OpenCV).

Resizing goes through swscale via PyAV, except for an exact odd integer downscale (1080p to
640 is 3×), where ``cv2.INTER_LINEAR`` reads exactly one source pixel per output pixel and a
strided numpy view reproduces it bit for bit. Otherwise the letterbox uses ``SWS_AREA``: for
upscaling it is bilinear and matches ``cv2.INTER_LINEAR`` to ±1 grey level, for an exact 2×
downscale it matches to ±1 too, and for other downscales it is the closest of swscale's
filters (all of them low-pass filter, which ``INTER_LINEAR`` does not). ``SWS_FAST_BILINEAR``
is faster but has a half-pixel phase error (mean error 2–5 levels, box shift), so it is not
used. swscale writes planar ``gbrp`` so the float conversion reads contiguous planes.

Frames are ``(H, W, 3)`` ``uint8`` RGB arrays, except that :func:`letterbox` also takes the
decoder's own frame (YUV): one swscale call then converts and scales it to the model's size,
instead of converting the whole frame to RGB and scaling that (issue 13: about a third of the
CPU). A decoded frame with a lazy RGB (``core.frame.FramePixels``) goes that way through
:func:`letterbox_pixels`.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any, Final

import av
import numpy as np
import numpy.typing as npt
from av.video.reformatter import Interpolation, VideoReformatter

from pytrickle_worker.core.frame import FramePixels
from pytrickle_worker.media.frames import check_rgb_frame, wrap_rgb_frame

__all__ = [
    "PAD_VALUE",
    "LetterboxBuffer",
    "LetterboxInfo",
    "crop",
    "letterbox",
    "letterbox_geometry",
    "letterbox_pixels",
    "resize_center_crop",
    "scale_boxes_to_frame",
]

logger = logging.getLogger(__name__)

#: ultralytics' letterbox padding grey.
PAD_VALUE: Final = 114
_INV255: Final = 1.0 / 255.0
#: Letterbox resize filter (see module docstring for the measurements behind it).
LETTERBOX_INTERPOLATION: Final = Interpolation.AREA
#: Classification resize: torchvision's PIL bilinear resize is antialiased, like swscale's.
CLASSIFY_INTERPOLATION: Final = Interpolation.BILINEAR
# gbrp planes are G, B, R: destination channel (RGB order) of each plane.
_GBRP_TO_RGB: Final = ((0, 1), (1, 2), (2, 0))  # (plane index, rgb channel)

FloatArray = npt.NDArray[np.floating]
UInt8Array = npt.NDArray[np.uint8]


@dataclass(frozen=True, slots=True)
class LetterboxInfo:
    """How a frame was placed in the model input: ``input = frame * ratio + pad``."""

    ratio: float
    pad_left: int
    pad_top: int
    #: ``(height, width)`` of the resized frame inside the input.
    resized: tuple[int, int] = (0, 0)


def letterbox_geometry(
    frame_hw: tuple[int, int], new_shape: tuple[int, int]
) -> tuple[LetterboxInfo, int, int, int, int]:
    """ultralytics ``LetterBox(auto=False, scaleup=True, center=True)`` arithmetic.

    Returns ``(info, top, bottom, left, right)`` paddings for a ``(H, W)`` frame placed in a
    ``(h, w)`` input.
    """
    height, width = frame_hw
    new_h, new_w = new_shape
    r = min(new_h / height, new_w / width)
    unpad_w, unpad_h = round(width * r), round(height * r)
    dw, dh = (new_w - unpad_w) / 2, (new_h - unpad_h) / 2
    top, bottom = round(dh - 0.1), round(dh + 0.1)
    left, right = round(dw - 0.1), round(dw + 0.1)
    return LetterboxInfo(r, left, top, (unpad_h, unpad_w)), top, bottom, left, right


class LetterboxBuffer:
    """A reusable model-input tensor plus the swscale context that fills it.

    Not thread-safe: keep one per thread (``OnnxModel`` does, with ``threading.local``).
    The padding is written once and again only when the image region moves (frames of a
    different aspect ratio), so a steady stream writes just the image each frame.
    """

    __slots__ = ("_region", "array", "reformatter")

    def __init__(self, shape: tuple[int, int], dtype: npt.DTypeLike = np.float32) -> None:
        h, w = shape
        self.array: FloatArray = np.empty((1, 3, h, w), dtype=dtype)
        self.array.fill(PAD_VALUE * _INV255)
        self.reformatter = VideoReformatter()
        self._region: tuple[int, int, int, int] = (0, 0, 0, 0)

    @property
    def shape(self) -> tuple[int, int]:
        return int(self.array.shape[2]), int(self.array.shape[3])

    def claim(self, region: tuple[int, int, int, int]) -> None:
        """Re-pad the whole tensor if ``region`` (top, left, h, w) differs from the last one."""
        if region != self._region:
            self.array.fill(PAD_VALUE * _INV255)
            self._region = region


def _resize_planar(
    frame: UInt8Array | av.VideoFrame,
    height: int,
    width: int,
    interpolation: Interpolation,
    reformatter: VideoReformatter | None,
) -> av.VideoFrame:
    """Resize (and convert, for a decoder's frame) to ``gbrp`` (planar G, B, R) with swscale."""
    worker = reformatter if reformatter is not None else VideoReformatter()
    return worker.reformat(
        frame if isinstance(frame, av.VideoFrame) else wrap_rgb_frame(frame),
        width=width,
        height=height,
        format="gbrp",
        interpolation=interpolation,
    )


def _plane(vframe: av.VideoFrame, index: int) -> UInt8Array:
    plane = vframe.planes[index]
    h, w, stride = vframe.height, vframe.width, plane.line_size
    buffer: Any = plane  # av.Plane implements the buffer protocol; its stubs do not say so
    flat = np.frombuffer(buffer, dtype=np.uint8)
    return flat[: h * stride].reshape(h, stride)[:, :w]


def _write_planes(
    vframe: av.VideoFrame, dest: FloatArray, rows: slice, cols: slice, *, y0: int = 0, x0: int = 0
) -> None:
    """``dest[0, c, rows, cols] = plane_c[y0:, x0:] / 255`` for the three planes."""
    h = rows.stop - rows.start
    w = cols.stop - cols.start
    scale = dest.dtype.type(_INV255)
    for plane_index, channel in _GBRP_TO_RGB:
        src = _plane(vframe, plane_index)[y0 : y0 + h, x0 : x0 + w]
        np.multiply(src, scale, out=dest[0, channel, rows, cols], casting="unsafe")


def letterbox(
    frame: npt.NDArray[np.uint8] | av.VideoFrame,
    new_shape: tuple[int, int],
    out: LetterboxBuffer | FloatArray | None = None,
) -> tuple[FloatArray, LetterboxInfo]:
    """Letterbox an RGB frame into a ``(1, 3, h, w)`` float tensor in ``[0, 1]``.

    ``frame`` may also be a decoder's frame in any pixel format (YUV): swscale converts and
    resizes it in one step. The geometry is the same; the pixels differ from the RGB path's
    by the rounding of the two conversions and the chroma's subsampling (a grey level or two
    on average).

    Exactly ultralytics ``LetterBox(auto=False, scaleup=True, center=True)`` geometry with pad
    value 114. ``out`` may be a :class:`LetterboxBuffer` (fastest: the padding is only
    rewritten when the image region moves, and the swscale context is reused), a
    ``(1, 3, h, w)`` float array (the padding is rewritten every call) or ``None`` (a new
    tensor). The returned tensor *is* the buffer's array when one is given.
    """
    image: UInt8Array | None = None
    if isinstance(frame, av.VideoFrame):
        frame_hw = (frame.height, frame.width)
    else:
        image = check_rgb_frame(frame)
        frame_hw = (int(image.shape[0]), int(image.shape[1]))
    h, w = new_shape
    info, top, bottom, left, right = letterbox_geometry(frame_hw, (h, w))
    new_h, new_w = info.resized
    region = (top, left, new_h, new_w)
    reformatter: VideoReformatter | None = None
    if isinstance(out, LetterboxBuffer):
        if out.shape != (h, w):
            raise ValueError(f"letterbox buffer is {out.shape}, input is {(h, w)}")
        out.claim(region)
        tensor = out.array
        reformatter = out.reformatter
    elif out is None:
        tensor = np.full((1, 3, h, w), PAD_VALUE * _INV255, dtype=np.float32)
    else:
        if out.shape != (1, 3, h, w):
            raise ValueError(f"letterbox output must have shape {(1, 3, h, w)}, not {out.shape}")
        tensor = out
        pad = PAD_VALUE * _INV255
        tensor[:, :, :top] = pad
        tensor[:, :, h - bottom :] = pad
        tensor[:, :, top : h - bottom, :left] = pad
        tensor[:, :, top : h - bottom, w - right :] = pad
    rows, cols = slice(top, top + new_h), slice(left, left + new_w)
    factor = _odd_decimation(frame_hw[0], frame_hw[1], new_h, new_w)
    if image is not None and factor:
        # cv2.INTER_LINEAR samples source pixel k*i + (k-1)/2 exactly for an odd integer
        # factor k (1080p -> 640 is k = 3): a strided view is bit-exact and ~5x faster.
        offset = (factor - 1) // 2
        sampled = image[offset::factor, offset::factor]
        scale = tensor.dtype.type(_INV255)
        np.multiply(
            sampled.transpose(2, 0, 1), scale, out=tensor[0, :, rows, cols], casting="unsafe"
        )
        return tensor, info
    interpolation = LETTERBOX_INTERPOLATION
    if factor:
        # A decoder's frame at an odd integer factor: swscale's nearest neighbour reads the
        # same centre pixel cv2.INTER_LINEAR does (the chroma differs by its subsampling).
        interpolation = Interpolation.POINT
    source = frame if image is None else image
    resized = _resize_planar(source, new_h, new_w, interpolation, reformatter)
    _write_planes(resized, tensor, rows, cols)
    return tensor, info


def letterbox_pixels(
    pixels: FramePixels, new_shape: tuple[int, int], out: LetterboxBuffer
) -> tuple[FloatArray, LetterboxInfo]:
    """:func:`letterbox` for a frame whose RGB is lazy: straight from the decoder's frame
    while the source still holds it (one swscale call, under the source's lock since PyAV
    retags the source frame while it converts), else from its RGB."""
    with pixels.decoded() as decoded:
        if decoded is not None:
            return letterbox(decoded, new_shape, out)
    return letterbox(pixels.to_rgb(), new_shape, out)


def _odd_decimation(height: int, width: int, new_h: int, new_w: int) -> int:
    """The odd integer factor ``k >= 3`` with ``(height, width) == k * (new_h, new_w)``, or 0."""
    if new_h < 1 or new_w < 1 or height % new_h or width % new_w:
        return 0
    factor = height // new_h
    if factor < 3 or factor % 2 == 0 or width // new_w != factor:
        return 0
    return factor


def scale_boxes_to_frame(
    boxes: npt.NDArray[np.floating], info: LetterboxInfo, frame_shape: tuple[int, ...]
) -> npt.NDArray[np.float32]:
    """Map ``(N, 4)`` xyxy boxes from model-input pixels to frame pixels, clipped to the frame.

    ``frame_shape`` is the frame's ``(H, W, ...)`` shape. Returns a new float32 array.
    """
    height, width = frame_shape[0], frame_shape[1]
    result = np.array(boxes, dtype=np.float32, copy=True).reshape(-1, 4)
    if result.size == 0:
        return result
    offset = np.array([info.pad_left, info.pad_top, info.pad_left, info.pad_top], np.float32)
    result -= offset
    result *= np.float32(1.0 / info.ratio)
    np.clip(result[:, 0::2], 0, width, out=result[:, 0::2])
    np.clip(result[:, 1::2], 0, height, out=result[:, 1::2])
    return result


def resize_center_crop(
    frame: npt.NDArray[np.uint8],
    size: int | tuple[int, int],
    out: FloatArray | None = None,
    *,
    reformatter: VideoReformatter | None = None,
) -> FloatArray:
    """ultralytics' classification transform: resize, centre crop, ``/255``, NCHW float32.

    With an ``int`` size, the shorter side is resized to ``size`` keeping the aspect ratio
    (torchvision ``Resize(size)``: the long side is ``int(size * long / short)``) and the
    centre ``size × size`` is cropped. A ``(h, w)`` size resizes to exactly that (as
    torchvision does for a tuple size). Returns ``(1, 3, h, w)``.
    """
    image = check_rgb_frame(frame)
    height, width = int(image.shape[0]), int(image.shape[1])
    if isinstance(size, int):
        crop_h = crop_w = size
        if width <= height:
            new_w, new_h = size, int(size * height / width)
        else:
            new_h, new_w = size, int(size * width / height)
    else:
        crop_h, crop_w = size
        new_h, new_w = size
    if crop_h < 1 or crop_w < 1:
        raise ValueError(f"crop size must be positive, not {size}")
    top = round((new_h - crop_h) / 2.0)
    left = round((new_w - crop_w) / 2.0)
    tensor = np.empty((1, 3, crop_h, crop_w), dtype=np.float32) if out is None else out
    if tensor.shape != (1, 3, crop_h, crop_w):
        raise ValueError(f"output must have shape {(1, 3, crop_h, crop_w)}, not {tensor.shape}")
    resized = _resize_planar(image, new_h, new_w, CLASSIFY_INTERPOLATION, reformatter)
    _write_planes(resized, tensor, slice(0, crop_h), slice(0, crop_w), y0=top, x0=left)
    return tensor


def crop(frame: npt.NDArray[np.uint8], box: npt.ArrayLike) -> npt.NDArray[np.uint8] | None:
    """The pixels of ``frame`` inside the xyxy ``box`` (float), as a contiguous copy.

    The box is widened to whole pixels (floor of the top-left, ceil of the bottom-right)
    and clipped to the frame, so any box that overlaps the frame gives at least 1×1 pixels.
    A box entirely outside the frame, empty after clipping, or not finite gives ``None``.
    """
    coords = np.asarray(box, dtype=np.float64).reshape(-1)
    if coords.size != 4 or not np.all(np.isfinite(coords)):
        return None
    height, width = frame.shape[0], frame.shape[1]
    x1, y1, x2, y2 = (float(v) for v in coords)
    x1, x2 = max(0.0, x1), min(float(width), x2)
    y1, y2 = max(0.0, y1), min(float(height), y2)
    if x2 <= x1 or y2 <= y1:
        return None
    ix1, iy1 = math.floor(x1), math.floor(y1)
    ix2, iy2 = max(math.ceil(x2), ix1 + 1), max(math.ceil(y2), iy1 + 1)
    return frame[iy1:iy2, ix1:ix2].copy()
