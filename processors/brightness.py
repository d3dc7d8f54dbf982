"""BrightnessProcessor (registry name ``brightness``): a numpy example, no model.

It tells when a stream's mean brightness crosses ``threshold``: the frame where the mean
(0 black .. 1 white) rises to or above it gives a record of class ``"bright"``, the frame
where it falls below again one of class ``"dark"``. A stream starts dark.

Params: ``threshold`` (0..1, default 0.5). Record::

    {"pts": <frame pts>, "brightness": <0..1>,
     "detection": {"class": "bright" | "dark", "confidence": <brightness>, "id": None}}

CMS door: ``"modelUrl": "processor://brightness?threshold=0.5"``. Stream door:
``PTW_STREAM_PROCESSOR=brightness`` and ``{"params": {"threshold": 0.5}}`` at start.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import TYPE_CHECKING, Annotated, Any

import numpy as np
from pydantic import Field

from pytrickle_worker.processing import (
    NOT_BOOL,
    FrameProcessor,
    ParamsModel,
    ProcessResult,
    StreamContext,
    VideoFrame,
)

if TYPE_CHECKING:
    from pytrickle_worker.processing.registry import ProcessorDeps

PROCESSOR_NAME = "brightness"


class BrightnessParams(ParamsModel):
    threshold: Annotated[float, NOT_BOOL, Field(ge=0.0, le=1.0, allow_inf_nan=False)] = 0.5


class BrightnessStream(StreamContext):
    def __init__(self, params: BrightnessParams) -> None:
        self.params = params
        self.bright = False

    async def process(self, frame: VideoFrame) -> ProcessResult:
        # A mean over every pixel: numpy work, off the event loop.
        level = await asyncio.to_thread(lambda: float(np.mean(frame.rgb)) / 255.0)
        bright = level >= self.params.threshold
        if bright == self.bright:
            return ProcessResult(frame)
        self.bright = bright
        detection = {"class": "bright" if bright else "dark", "confidence": level, "id": None}
        record = {"pts": frame.pts, "brightness": level, "detection": detection}
        return ProcessResult(frame, [record])

    def update_params(self, params: Mapping[str, Any]) -> None:
        self.params = self.params.merged(params)  # ParamsError; nothing applied then

    def current_params(self) -> dict[str, Any]:
        return self.params.model_dump()


class BrightnessProcessor(FrameProcessor):
    name = PROCESSOR_NAME
    params_model = BrightnessParams

    async def open_stream(
        self, stream_id: str, params: Mapping[str, Any], *, frame_rate: float | None = None
    ) -> BrightnessStream:
        return BrightnessStream(BrightnessParams.parse(params))


def create_processor(deps: ProcessorDeps) -> BrightnessProcessor:
    """The registry's factory: it needs none of the worker's shared parts."""
    return BrightnessProcessor()
