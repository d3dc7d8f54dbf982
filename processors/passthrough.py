"""PassthroughProcessor: every frame comes out exactly as it went in."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from pydantic import ConfigDict

from pytrickle_worker.processing import (
    FrameProcessor,
    ParamsModel,
    ProcessResult,
    StreamContext,
    VideoFrame,
)

if TYPE_CHECKING:
    from pytrickle_worker.processing.registry import ProcessorDeps

logger = logging.getLogger(__name__)


class PassthroughParams(ParamsModel):
    """The passthrough has no parameters of its own; it keeps whatever it is given."""

    model_config = ConfigDict(extra="allow", validate_assignment=True)


class PassthroughStream(StreamContext):
    def __init__(self, params: PassthroughParams) -> None:
        self.params = params

    async def process(self, frame: VideoFrame) -> ProcessResult:
        return ProcessResult(frame)

    def update_params(self, params: Mapping[str, Any]) -> None:
        self.params = self.params.merged(params)

    def current_params(self) -> dict[str, Any]:
        return self.params.model_dump()


class PassthroughProcessor(FrameProcessor):
    """Identity processor: useful to test the media path and as the server's default."""

    name = "passthrough"
    params_model = PassthroughParams

    async def open_stream(
        self, stream_id: str, params: Mapping[str, Any], *, frame_rate: float | None = None
    ) -> PassthroughStream:
        logger.debug("passthrough: stream %s opened", stream_id)
        return PassthroughStream(PassthroughParams.parse(params))

    def __init__(self) -> None:
        super().__init__()
        #: Frames the stream door handed in since its stream started.
        self.frames = 0

    async def on_stream_start(self, params: dict[str, Any]) -> None:
        await super().on_stream_start(params)
        self.frames = 0

    async def process_video_async(self, frame: VideoFrame) -> VideoFrame | None:
        self.frames += 1
        return await super().process_video_async(frame)


def create_processor(deps: ProcessorDeps) -> PassthroughProcessor:
    """The registry's factory (``pytrickle_worker.processing.registry``)."""
    return PassthroughProcessor()
