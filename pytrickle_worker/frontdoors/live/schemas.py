"""Response bodies of the live view's REST routes (``GET /labels``, ``GET /labels/{label}/keys``)
and the frame header its WebSockets send, as pydantic models: the handlers build their JSON
with them and ``/openapi.json`` describes them from the same classes."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from pytrickle_worker.frontdoors.live.model import DetectionItem

__all__ = ["FrameHeader", "KeySummary", "LabelKeys", "LabelList"]


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
