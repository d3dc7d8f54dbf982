"""Crop rectangles: validation at subscribe time, clipping against each frame's size."""

from __future__ import annotations

from typing import NamedTuple, Protocol

from pydantic import AliasChoices, BaseModel, ConfigDict, Field

from pytrickle_worker.sources.errors import CropError

__all__ = ["Crop", "CropBox", "CropRect", "clip_crop", "validate_crop"]


class CropBox(Protocol):
    """Anything with integer ``x1, y1, x2, y2`` (this module's :class:`Crop`, the protocol's)."""

    @property
    def x1(self) -> int: ...
    @property
    def y1(self) -> int: ...
    @property
    def x2(self) -> int: ...
    @property
    def y2(self) -> int: ...


class Crop(BaseModel):
    """A crop in source pixels: columns ``x1 <= x < x2``, rows ``y1 <= y < y2``.

    CMS spellings ``cropX1``… are accepted as input aliases.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    x1: int = Field(validation_alias=AliasChoices("x1", "cropX1"))
    y1: int = Field(validation_alias=AliasChoices("y1", "cropY1"))
    x2: int = Field(validation_alias=AliasChoices("x2", "cropX2"))
    y2: int = Field(validation_alias=AliasChoices("y2", "cropY2"))


class CropRect(NamedTuple):
    """A crop clipped to a frame; always non-empty and inside the frame."""

    x1: int
    y1: int
    x2: int
    y2: int


def _coords(crop: CropBox) -> str:
    return f"({crop.x1}, {crop.y1}, {crop.x2}, {crop.y2})"


def validate_crop(crop: CropBox, frame_size: tuple[int, int] | None = None) -> None:
    """Raise :class:`CropError` for a crop that can never select a pixel.

    Without ``frame_size`` only the size-independent cases are caught: an empty rectangle
    (``x2 <= x1`` or ``y2 <= y1``) and one entirely left of or above the frame.
    """
    if crop.x2 <= crop.x1 or crop.y2 <= crop.y1:
        raise CropError(
            f"crop {_coords(crop)} is empty: cropX2 must exceed cropX1 and cropY2 must "
            "exceed cropY1"
        )
    if crop.x2 <= 0 or crop.y2 <= 0:
        raise CropError(f"crop {_coords(crop)} lies entirely outside the frame")
    if frame_size is not None:
        width, height = frame_size
        if crop.x1 >= width or crop.y1 >= height:
            raise CropError(
                f"crop {_coords(crop)} lies entirely outside the {width}x{height} frame"
            )


def clip_crop(crop: CropBox, width: int, height: int) -> tuple[CropRect, bool]:
    """``crop`` clipped to a ``width`` x ``height`` frame, and whether clipping changed it.

    Raises :class:`CropError` when nothing of the crop lies inside the frame.
    """
    validate_crop(crop, (width, height))
    rect = CropRect(max(0, crop.x1), max(0, crop.y1), min(width, crop.x2), min(height, crop.y2))
    clipped = rect != (crop.x1, crop.y1, crop.x2, crop.y2)
    return rect, clipped
