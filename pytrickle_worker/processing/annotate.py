"""Draw detection boxes and labels on RGB frames with numpy only (no PIL, no OpenCV).

:func:`draw_annotations_yuv420` draws the same on the planes of a 4:2:0 frame (full range,
as JPEG), so a frame that is scaled and converted in one pass can be drawn on before it is
encoded, without a pass back to RGB.

Boxes are rectangle outlines drawn inward from the bbox edges; labels use a built-in 5×7
bitmap font (upper-case letters, digits and common punctuation; lower case is drawn as
upper case, anything else as ``?``), scaled by whole pixels, on a filled tag in the box
colour above the box (inside it when the box touches the top of the frame).

Everything here is plain, blocking numpy: call it from a worker thread for big frames.
"""

from __future__ import annotations

import functools
import zlib
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

__all__ = [
    "GLYPH_HEIGHT",
    "GLYPH_WIDTH",
    "PALETTE",
    "Annotation",
    "box_thickness",
    "class_colour",
    "detection_label",
    "draw_annotations",
    "draw_annotations_yuv420",
    "draw_box",
    "draw_label",
    "font_scale",
    "jpeg_ycbcr",
    "text_mask",
]

RGB = tuple[int, int, int]
Image = npt.NDArray[np.uint8]
BBox = tuple[int, int, int, int]
Plane = npt.NDArray[np.uint8]

GLYPH_WIDTH = 5
GLYPH_HEIGHT = 7

#: Saturated colours far from the demo scene's object colours; a class always gets the same.
PALETTE: tuple[RGB, ...] = (
    (255, 0, 255),
    (0, 255, 255),
    (255, 255, 0),
    (255, 128, 0),
    (0, 255, 0),
    (255, 0, 128),
    (128, 0, 255),
    (0, 128, 255),
)

# Rows top to bottom; bit 4 is the leftmost column.
_FONT_ROWS: dict[str, tuple[int, ...]] = {
    "0": (0x0E, 0x11, 0x13, 0x15, 0x19, 0x11, 0x0E),
    "1": (0x04, 0x0C, 0x04, 0x04, 0x04, 0x04, 0x0E),
    "2": (0x0E, 0x11, 0x01, 0x02, 0x04, 0x08, 0x1F),
    "3": (0x1F, 0x02, 0x04, 0x02, 0x01, 0x11, 0x0E),
    "4": (0x02, 0x06, 0x0A, 0x12, 0x1F, 0x02, 0x02),
    "5": (0x1F, 0x10, 0x1E, 0x01, 0x01, 0x11, 0x0E),
    "6": (0x06, 0x08, 0x10, 0x1E, 0x11, 0x11, 0x0E),
    "7": (0x1F, 0x01, 0x02, 0x04, 0x08, 0x08, 0x08),
    "8": (0x0E, 0x11, 0x11, 0x0E, 0x11, 0x11, 0x0E),
    "9": (0x0E, 0x11, 0x11, 0x0F, 0x01, 0x02, 0x0C),
    "A": (0x0E, 0x11, 0x11, 0x1F, 0x11, 0x11, 0x11),
    "B": (0x1E, 0x11, 0x11, 0x1E, 0x11, 0x11, 0x1E),
    "C": (0x0E, 0x11, 0x10, 0x10, 0x10, 0x11, 0x0E),
    "D": (0x1C, 0x12, 0x11, 0x11, 0x11, 0x12, 0x1C),
    "E": (0x1F, 0x10, 0x10, 0x1E, 0x10, 0x10, 0x1F),
    "F": (0x1F, 0x10, 0x10, 0x1E, 0x10, 0x10, 0x10),
    "G": (0x0E, 0x11, 0x10, 0x17, 0x11, 0x11, 0x0F),
    "H": (0x11, 0x11, 0x11, 0x1F, 0x11, 0x11, 0x11),
    "I": (0x0E, 0x04, 0x04, 0x04, 0x04, 0x04, 0x0E),
    "J": (0x07, 0x02, 0x02, 0x02, 0x02, 0x12, 0x0C),
    "K": (0x11, 0x12, 0x14, 0x18, 0x14, 0x12, 0x11),
    "L": (0x10, 0x10, 0x10, 0x10, 0x10, 0x10, 0x1F),
    "M": (0x11, 0x1B, 0x15, 0x15, 0x11, 0x11, 0x11),
    "N": (0x11, 0x11, 0x19, 0x15, 0x13, 0x11, 0x11),
    "O": (0x0E, 0x11, 0x11, 0x11, 0x11, 0x11, 0x0E),
    "P": (0x1E, 0x11, 0x11, 0x1E, 0x10, 0x10, 0x10),
    "Q": (0x0E, 0x11, 0x11, 0x11, 0x15, 0x12, 0x0D),
    "R": (0x1E, 0x11, 0x11, 0x1E, 0x14, 0x12, 0x11),
    "S": (0x0F, 0x10, 0x10, 0x0E, 0x01, 0x01, 0x1E),
    "T": (0x1F, 0x04, 0x04, 0x04, 0x04, 0x04, 0x04),
    "U": (0x11, 0x11, 0x11, 0x11, 0x11, 0x11, 0x0E),
    "V": (0x11, 0x11, 0x11, 0x11, 0x11, 0x0A, 0x04),
    "W": (0x11, 0x11, 0x11, 0x15, 0x15, 0x15, 0x0A),
    "X": (0x11, 0x11, 0x0A, 0x04, 0x0A, 0x11, 0x11),
    "Y": (0x11, 0x11, 0x11, 0x0A, 0x04, 0x04, 0x04),
    "Z": (0x1F, 0x01, 0x02, 0x04, 0x08, 0x10, 0x1F),
    " ": (0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00),
    ".": (0x00, 0x00, 0x00, 0x00, 0x00, 0x0C, 0x0C),
    ",": (0x00, 0x00, 0x00, 0x00, 0x0C, 0x04, 0x08),
    ":": (0x00, 0x0C, 0x0C, 0x00, 0x0C, 0x0C, 0x00),
    "-": (0x00, 0x00, 0x00, 0x1F, 0x00, 0x00, 0x00),
    "_": (0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x1F),
    "#": (0x0A, 0x0A, 0x1F, 0x0A, 0x1F, 0x0A, 0x0A),
    "/": (0x00, 0x01, 0x02, 0x04, 0x08, 0x10, 0x00),
    "%": (0x18, 0x19, 0x02, 0x04, 0x08, 0x13, 0x03),
    "(": (0x02, 0x04, 0x08, 0x08, 0x08, 0x04, 0x02),
    ")": (0x08, 0x04, 0x02, 0x02, 0x02, 0x04, 0x08),
    "<": (0x02, 0x04, 0x08, 0x10, 0x08, 0x04, 0x02),
    ">": (0x08, 0x04, 0x02, 0x01, 0x02, 0x04, 0x08),
    "+": (0x00, 0x04, 0x04, 0x1F, 0x04, 0x04, 0x00),
    "=": (0x00, 0x00, 0x1F, 0x00, 0x1F, 0x00, 0x00),
    "!": (0x04, 0x04, 0x04, 0x04, 0x04, 0x00, 0x04),
    "'": (0x04, 0x04, 0x08, 0x00, 0x00, 0x00, 0x00),
    "?": (0x0E, 0x11, 0x01, 0x02, 0x04, 0x00, 0x04),
}


def _glyph(rows: tuple[int, ...]) -> npt.NDArray[np.bool_]:
    bits = [
        [bool(row >> (GLYPH_WIDTH - 1 - col) & 1) for col in range(GLYPH_WIDTH)] for row in rows
    ]
    return np.array(bits, dtype=np.bool_)


_GLYPHS: dict[str, npt.NDArray[np.bool_]] = {ch: _glyph(rows) for ch, rows in _FONT_ROWS.items()}


@dataclass(frozen=True)
class Annotation:
    """One box to draw: ``bbox`` is ``(x1, y1, x2, y2)`` in pixel edges (x2/y2 exclusive)."""

    bbox: BBox
    label: str
    colour: RGB


def detection_label(name: str, confidence: float | None, track_id: object = None) -> str:
    """A box's tag: ``name 0.87 #12`` (the confidence and track id when there are any)."""
    text = name if confidence is None else f"{name} {float(confidence):.2f}"
    return text if track_id is None else f"{text} #{track_id}"


def class_colour(name: str) -> RGB:
    """The palette colour of a class name (stable across runs and processes)."""
    return PALETTE[zlib.crc32(name.encode("utf-8")) % len(PALETTE)]


def box_thickness(height: int, width: int) -> int:
    """Outline width for a frame size: 2 px at 360p, 6 px at 1080p."""
    return max(2, round(min(height, width) / 180))


def font_scale(height: int, width: int) -> int:
    """Pixels per font dot: 1 below 360p, 2 at 360p-540p, 4 at 1080p."""
    return max(1, round(min(height, width) / 240))


def text_mask(text: str, scale: int = 1) -> npt.NDArray[np.bool_]:
    """The dots of ``text``: a ``(7·scale, (6·len - 1)·scale)`` boolean array."""
    if scale < 1:
        raise ValueError(f"scale must be >= 1, got {scale}")
    if not text:
        return np.zeros((GLYPH_HEIGHT * scale, 0), dtype=np.bool_)
    glyphs = _scaled_glyphs(scale)
    unknown = glyphs["?"]
    mask = np.hstack([glyphs.get(char, unknown) for char in text.upper()])
    return mask[:, : mask.shape[1] - scale]  # no spacer after the last


@functools.lru_cache(maxsize=16)
def _scaled_glyphs(scale: int) -> dict[str, npt.NDArray[np.bool_]]:
    """Every glyph with its one-column spacer, blown up to ``scale``: a text is one
    ``hstack`` of these (a label costs a few numpy calls, not a few per character)."""
    return {
        char: np.pad(glyph, ((0, 0), (0, 1))).repeat(scale, axis=0).repeat(scale, axis=1)
        for char, glyph in _GLYPHS.items()
    }


def _clip_box(bbox: BBox, height: int, width: int) -> BBox | None:
    x1, y1, x2, y2 = bbox
    x1, x2 = max(0, min(width, x1)), max(0, min(width, x2))
    y1, y2 = max(0, min(height, y1)), max(0, min(height, y2))
    if x2 <= x1 or y2 <= y1:
        return None
    return (x1, y1, x2, y2)


def draw_box(image: Image, bbox: BBox, colour: RGB, thickness: int) -> None:
    """Draw a rectangle outline in place, ``thickness`` pixels inward from the bbox edges."""
    height, width = image.shape[:2]
    clipped = _clip_box(bbox, height, width)
    if clipped is None:
        return
    x1, y1, x2, y2 = clipped
    t = max(1, thickness)
    value = np.asarray(colour, dtype=np.uint8)
    image[y1 : min(y2, y1 + t), x1:x2] = value
    image[max(y1, y2 - t) : y2, x1:x2] = value
    image[y1:y2, x1 : min(x2, x1 + t)] = value
    image[y1:y2, max(x1, x2 - t) : x2] = value


def _text_colour(background: RGB) -> RGB:
    r, g, b = background
    luma = 0.299 * r + 0.587 * g + 0.114 * b
    return (0, 0, 0) if luma >= 128 else (255, 255, 255)


def _tag_rect(
    mask_shape: tuple[int, ...], bbox: BBox, height: int, width: int, pad: int
) -> BBox | None:
    """Where a label's tag goes: above the box when there is room, else just inside its top
    edge, shifted left to stay inside the frame; None when nothing of it is visible."""
    tag_h = mask_shape[0] + 2 * pad
    tag_w = mask_shape[1] + 2 * pad
    x1, y1 = bbox[0], bbox[1]
    top = y1 - tag_h if y1 - tag_h >= 0 else max(0, y1)
    left = max(0, min(x1, width - tag_w))
    bottom, right = min(height, top + tag_h), min(width, left + tag_w)
    if bottom <= top or right <= left:
        return None
    return (left, top, right, bottom)


def draw_label(image: Image, text: str, bbox: BBox, colour: RGB, scale: int) -> BBox | None:
    """Draw ``text`` on a tag filled with ``colour`` at the bbox's top-left corner, in place.

    The tag sits above the box when there is room, else just inside its top edge; it is
    shifted left to stay inside the frame. Returns the tag rectangle (pixel edges), or
    ``None`` when nothing was drawn.
    """
    height, width = image.shape[:2]
    if not text or height == 0 or width == 0:
        return None
    mask = text_mask(text, scale)
    pad = scale
    tag = _tag_rect(mask.shape, bbox, height, width, pad)
    if tag is None:
        return None
    left, top, right, bottom = tag
    image[top:bottom, left:right] = np.asarray(colour, dtype=np.uint8)
    visible = mask[: max(0, bottom - top - pad), : max(0, right - left - pad)]
    region = image[
        top + pad : top + pad + visible.shape[0], left + pad : left + pad + visible.shape[1]
    ]
    region[visible] = np.asarray(_text_colour(colour), dtype=np.uint8)
    return tag


def draw_annotations(
    image: Image, annotations: Sequence[Annotation], *, copy: bool = True
) -> Image:
    """Draw every annotation (boxes first, then labels, so labels stay readable).

    With ``copy`` (the default) the input is left untouched and a new array is returned.
    """
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"image must be an H×W×3 uint8 array, got {image.shape} {image.dtype}")
    out = image.copy() if copy else image
    if not annotations:
        return out
    height, width = out.shape[:2]
    thickness = box_thickness(height, width)
    scale = font_scale(height, width)
    for item in annotations:
        draw_box(out, item.bbox, item.colour, thickness)
    for item in annotations:
        draw_label(out, item.label, item.bbox, item.colour, scale)
    return out


# ---------------------------------------------------------------------- 4:2:0 planes


def jpeg_ycbcr(colour: RGB) -> RGB:
    """``colour`` in JPEG's full-range BT.601 Y, Cb, Cr (what swscale's yuvj420p holds)."""
    r, g, b = colour
    y = 0.299 * r + 0.587 * g + 0.114 * b
    cb = 128 - 0.168736 * r - 0.331264 * g + 0.5 * b
    cr = 128 + 0.5 * r - 0.418688 * g - 0.081312 * b
    return (_byte(y), _byte(cb), _byte(cr))


def _byte(value: float) -> int:
    return max(0, min(255, round(value)))


def _chroma_box(bbox: BBox) -> BBox:
    """The chroma samples a luma rectangle touches (each covers 2 × 2 luma pixels)."""
    x1, y1, x2, y2 = bbox
    return (x1 // 2, y1 // 2, (x2 + 1) // 2, (y2 + 1) // 2)


@functools.lru_cache(maxsize=64)
def _tag_ycbcr(colour: RGB) -> tuple[RGB, RGB]:
    """A tag colour and its text's ink in JPEG's Y, Cb, Cr (a palette: worth keeping)."""
    return jpeg_ycbcr(colour), jpeg_ycbcr(_text_colour(colour))


def _outline(plane: Plane, box: BBox, value: int, thickness: int) -> None:
    """A rectangle outline ``thickness`` pixels inward from ``box``'s edges (inside the
    plane: see :func:`_clip_box`)."""
    x1, y1, x2, y2 = box
    plane[y1 : min(y2, y1 + thickness), x1:x2] = value
    plane[max(y1, y2 - thickness) : y2, x1:x2] = value
    plane[y1:y2, x1 : min(x2, x1 + thickness)] = value
    plane[y1:y2, max(x1, x2 - thickness) : x2] = value


def _pool_2x2(mask: npt.NDArray[np.bool_], top: int, left: int) -> npt.NDArray[np.bool_]:
    """The chroma samples (from ``top // 2``, ``left // 2``) a luma mask at ``top``/``left``
    touches: a 2 × 2 block is set when any of its pixels is."""
    rows, cols = int(mask.shape[0]), int(mask.shape[1])
    dy, dx = top % 2, left % 2
    padded = np.zeros((rows + dy + 1, cols + dx + 1), np.bool_)
    padded[dy : dy + rows, dx : dx + cols] = mask
    out_rows, out_cols = (rows + dy + 1) // 2, (cols + dx + 1) // 2
    pooled = padded[0 : 2 * out_rows : 2, 0 : 2 * out_cols : 2].copy()
    pooled |= padded[1 : 2 * out_rows : 2, 0 : 2 * out_cols : 2]
    pooled |= padded[0 : 2 * out_rows : 2, 1 : 2 * out_cols : 2]
    pooled |= padded[1 : 2 * out_rows : 2, 1 : 2 * out_cols : 2]
    return pooled


def _label_yuv420(
    planes: tuple[Plane, Plane, Plane], text: str, bbox: BBox, colour: RGB, scale: int
) -> None:
    y_plane, u_plane, v_plane = planes
    height, width = int(y_plane.shape[0]), int(y_plane.shape[1])
    mask = text_mask(text, scale)
    pad = scale
    tag = _tag_rect(mask.shape, bbox, height, width, pad)
    if tag is None:
        return
    left, top, right, bottom = tag
    (luma, cb, cr), (ink_luma, ink_cb, ink_cr) = _tag_ycbcr(colour)
    y_plane[top:bottom, left:right] = luma
    cx1, cy1, cx2, cy2 = _chroma_box(tag)
    u_plane[cy1:cy2, cx1:cx2] = cb
    v_plane[cy1:cy2, cx1:cx2] = cr
    visible = mask[: max(0, bottom - top - pad), : max(0, right - left - pad)]
    if not visible.size:
        return
    ink_top, ink_left = top + pad, left + pad
    y_plane[ink_top : ink_top + visible.shape[0], ink_left : ink_left + visible.shape[1]][
        visible
    ] = ink_luma
    # Chroma has half the resolution: a sample under any dot of the text takes the ink's
    # (grey: black or white) so the dots do not keep the tag's tint. With even dots on even
    # rows and columns every 2 x 2 block is all ink or none: every other dot is the answer.
    if scale % 2 == 0 and ink_top % 2 == 0 and ink_left % 2 == 0:
        pooled = visible[::2, ::2]
    else:
        pooled = _pool_2x2(visible, ink_top, ink_left)
    ct, cl = ink_top // 2, ink_left // 2
    pooled = pooled[: int(u_plane.shape[0]) - ct, : int(u_plane.shape[1]) - cl]
    u_plane[ct : ct + pooled.shape[0], cl : cl + pooled.shape[1]][pooled] = ink_cb
    v_plane[ct : ct + pooled.shape[0], cl : cl + pooled.shape[1]][pooled] = ink_cr


def draw_annotations_yuv420(
    planes: tuple[Plane, Plane, Plane], annotations: Sequence[Annotation]
) -> None:
    """Draw every annotation on the ``(Y, U, V)`` planes of a full-range 4:2:0 frame, in
    place: the boxes, tags and text of :func:`draw_annotations` at the same places and sizes
    (chroma at half resolution, so a colour edge may spread by one pixel)."""
    y_plane, u_plane, v_plane = planes
    height, width = int(y_plane.shape[0]), int(y_plane.shape[1])
    chroma = ((height + 1) // 2, (width + 1) // 2)
    if y_plane.ndim != 2 or u_plane.shape != chroma or v_plane.shape != chroma:
        raise ValueError(
            f"expected 4:2:0 planes, got Y {y_plane.shape}, U {u_plane.shape}, V {v_plane.shape}"
        )
    if not annotations:
        return
    thickness = box_thickness(height, width)
    chroma_thickness = (thickness + 1) // 2
    scale = font_scale(height, width)
    for item in annotations:
        # Clipped to the frame first: the chroma box of the clipped box is the clipped
        # chroma box (the chroma planes are the luma's halves, rounded up).
        box = _clip_box(item.bbox, height, width)
        if box is None:
            continue
        (luma, cb, cr), _ = _tag_ycbcr(item.colour)
        _outline(y_plane, box, luma, thickness)
        chroma_box = _chroma_box(box)
        _outline(u_plane, chroma_box, cb, chroma_thickness)
        _outline(v_plane, chroma_box, cr, chroma_thickness)
    for item in annotations:
        if item.label:
            _label_yuv420(planes, item.label, item.bbox, item.colour, scale)
