"""Wire models of the live view, pydantic v2: the bodies of its REST routes (``GET /labels``,
``GET /labels/{label}/keys``) and the frame header its WebSockets send, which the handlers
build their JSON with and ``/openapi.json`` describes; and the uploads (``POST /frames``,
``WS /ws/frames``).

Uploads use strict JSON types: ``"0.5"`` is not a confidence, ``true`` is not a track id,
``NaN`` and infinities are not numbers. Labels and keys follow :func:`check_live_name`. A
detection's ``bbox`` is in pixels of the uploaded image; that it lies inside the image is
checked once the image's size is known (:func:`check_inside`).
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationInfo, field_validator

from pytrickle_worker.core.validation import NO_CONTROL
from pytrickle_worker.frontdoors.live.model import (
    Box,
    DetectionItem,
    ReferenceDetection,
    check_bbox,
    reference_detection_fields,
)
from pytrickle_worker.processing.sink import check_live_name

__all__ = [
    "MAX_UPLOAD_DETECTIONS",
    "UPLOAD_DETECTIONS",
    "FrameHeader",
    "KeySummary",
    "LabelKeys",
    "LabelList",
    "UploadDetection",
    "UploadDetections",
    "UploadHeader",
    "UploadResponse",
    "check_inside",
    "live_name",
]

MAX_UPLOAD_DETECTIONS = 1000
#: JavaScript's Number.MAX_SAFE_INTEGER: the largest id every JSON reader keeps exact.
MAX_TRACK_ID = 2**53 - 1


class LabelList(BaseModel):
    """``GET /labels``."""

    labels: list[str] = Field(description="Labels that have frames, decoded and sorted")


class KeySummary(BaseModel):
    """One key of a label: its newest entry's metadata."""

    key: str
    worker: str = Field(description="The worker that stores this key's frames")
    online: bool = Field(description="Whether the camera or stream is delivering frames")
    fps: float = Field(description="The key's analysed frames per second")
    capture_time: float = Field(description="Capture time of the newest frame, unix seconds")
    id: str = Field(description="The newest entry's id (`<ms>-<seq>`, as Redis Streams)")


class LabelKeys(BaseModel):
    """``GET /labels/{label}/keys``."""

    label: str
    keys: list[KeySummary]


class FrameHeader(BaseModel):
    """The JSON header of a binary frame message (push, pull): ``header + b"--IMG--" + JPEG``."""

    model_config = ConfigDict(extra="forbid")

    label: str
    key: str
    id: str
    detection_items: list[DetectionItem]
    warnings: str
    width: int
    height: int
    source_width: int
    source_height: int
    capture_time: float
    worker: str
    online: bool
    fps: float
    origin: Literal["cms", "stream", "upload"]


def live_name(value: str, what: str) -> str:
    """``value`` when it is a valid label or key; ValueError naming the problem without
    repeating the field's name (pydantic puts it in front)."""
    try:
        return check_live_name(value, what)
    except ValueError as exc:
        raise ValueError(str(exc).removeprefix(f"{what} ")) from None


class UploadDetection(BaseModel):
    """One detection of an uploaded frame; ``bbox`` ``[x1, y1, x2, y2]`` in its pixels."""

    model_config = ConfigDict(extra="forbid", strict=True, populate_by_name=True, frozen=True)

    class_name: Annotated[str, NO_CONTROL] = Field(
        alias="class", min_length=1, max_length=64, description="Class name"
    )
    confidence: float = Field(ge=0.0, le=1.0, allow_inf_nan=False, description="0..1")
    id: int | None = Field(
        default=None,
        ge=0,
        # Past 2**53 a browser's JSON.parse rounds it: the page would show another id.
        le=MAX_TRACK_ID,
        description="Track id, when tracked",
    )
    bbox: tuple[float, float, float, float] = Field(
        description="[x1, y1, x2, y2] in pixels of the uploaded image, inside it"
    )

    @field_validator("bbox")
    @classmethod
    def _finite_and_ordered(cls, value: Box) -> Box:
        return check_bbox(value)

    def record(self) -> dict[str, object]:
        """The processor-record shape the live writer's renderer takes."""
        return {
            "detection": {"class": self.class_name, "confidence": self.confidence, "id": self.id},
            "bbox": list(self.bbox),
        }


UploadDetections = Annotated[list[UploadDetection], Field(max_length=MAX_UPLOAD_DETECTIONS)]
#: The ``detections`` field of ``POST /frames``: a JSON array (validated from JSON text).
UPLOAD_DETECTIONS: TypeAdapter[list[UploadDetection]] = TypeAdapter(UploadDetections)


#: The reference's producers' detections (``detection_items_json``).
REFERENCE_DETECTIONS: TypeAdapter[list[ReferenceDetection]] = TypeAdapter(
    Annotated[list[ReferenceDetection], Field(max_length=MAX_UPLOAD_DETECTIONS)]
)


def from_reference(items: list[ReferenceDetection]) -> list[UploadDetection]:
    """The reference's ``[x1, y1, x2, y2, confidence, class]`` rows as detections (the class
    index is the class name); ValueError naming the first row that does not fit."""
    detections: list[UploadDetection] = []
    for index, row in enumerate(items):
        try:
            fields = reference_detection_fields(row)
        except ValueError as exc:
            raise ValueError(f"{index}.5: {exc}") from None
        try:
            detections.append(UploadDetection.model_validate(fields))
        except ValueError as exc:
            raise ValueError(f"{index}: {exc}") from None
    return detections


def check_inside(detections: list[UploadDetection], width: int, height: int) -> None:
    """ValueError naming the first detection whose bbox leaves a ``width`` x ``height`` image."""
    for index, item in enumerate(detections):
        x1, y1, x2, y2 = item.bbox
        if x1 < 0 or y1 < 0 or x2 > width or y2 > height:
            shown = ", ".join(f"{v:g}" for v in item.bbox)
            raise ValueError(f"{index}.bbox [{shown}] is outside the {width}x{height} image")


class UploadHeader(BaseModel):
    """The JSON header of one ``WS /ws/frames`` message (before ``--IMG--`` and the image)."""

    model_config = ConfigDict(extra="forbid", strict=True)

    label: str = Field(description="Label (1..128 printable characters, no '/', not '.' or '..')")
    key: str = Field(description="Key under the label (same rules)")
    detection_items: UploadDetections = Field(
        default_factory=list[UploadDetection],
        description=f"Detections in the image's pixels (at most {MAX_UPLOAD_DETECTIONS})",
    )
    # The reference streaming backend's producers' header: accepted so they can share the
    # viewer. Its detections are [x1, y1, x2, y2, confidence, class index] rows as JSON
    # text; the other fields are checked and not stored (the image gives the size).
    detection_items_json: str | None = Field(
        default=None,
        description="The reference's detections: JSON text of [x1,y1,x2,y2,conf,cls] rows",
    )
    warnings_json: str | None = Field(default=None, description="Accepted, not stored")
    cone_polygons_json: str | None = Field(default=None, description="Accepted, not stored")
    pole_polygons_json: str | None = Field(default=None, description="Accepted, not stored")
    # 0 is the reference's default ("not given").
    width: int | None = Field(default=None, ge=0, description="Accepted; the image's own is used")
    height: int | None = Field(default=None, ge=0, description="Accepted; the image's own is used")

    @field_validator("label", "key")
    @classmethod
    def _live_name(cls, value: str, info: ValidationInfo) -> str:
        return live_name(value, info.field_name or "label")


class UploadResponse(BaseModel):
    """A stored upload."""

    status: Literal["ok"] = "ok"
    message: str = Field(description="stored <label>/<key>")
    id: str = Field(description="The entry id in the label/key's stream")
