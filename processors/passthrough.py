"""PassthroughProcessor: every frame comes out exactly as it went in."""

from __future__ import annotations

import logging
from typing import Any

from pydantic import ConfigDict

from pytrickle_worker.processing import FrameProcessor, ParamsModel, VideoFrame

logger = logging.getLogger(__name__)


class PassthroughParams(ParamsModel):
    """The passthrough has no parameters of its own; it keeps whatever it is given."""

    model_config = ConfigDict(extra="allow", validate_assignment=True)


class PassthroughProcessor(FrameProcessor):
    """Identity processor: useful to test the media path and as the server's default."""

    params_model = PassthroughParams

    def __init__(self) -> None:
        self._params = PassthroughParams()
        self.frames = 0

    async def load_model(self) -> None:
        logger.debug("passthrough: nothing to load")

    async def process_video_async(self, frame: VideoFrame) -> VideoFrame | None:
        self.frames += 1
        return frame

    def update_params(self, params: dict[str, Any]) -> None:
        self._params = self._params.merged(params)

    async def on_stream_start(self, params: dict[str, Any]) -> None:
        self._params = PassthroughParams.parse(params)
        self.frames = 0

    def current_params(self) -> dict[str, Any]:
        return self._params.model_dump()
