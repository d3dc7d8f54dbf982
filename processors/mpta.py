"""MptaProcessor: runs one MPTA pipeline with its own tracker state for one stream."""

from __future__ import annotations

from typing import Any

import numpy as np

from processors.base import ProcessedFrame
from pytrickle_worker.mpta.loader import LoadedPipeline
from pytrickle_worker.mpta.service import PipelineService
from pytrickle_worker.tracking.bytetrack import TrackerState


class MptaProcessor:
    """One stream's view of a shared pipeline: models are shared, tracking state is not."""

    def __init__(self, service: PipelineService, source: str, *, run_actions: bool = True) -> None:
        self.service = service
        self.source = source
        self.run_actions = run_actions
        self.pipeline: LoadedPipeline | None = None
        self.tracker = TrackerState()

    async def start(self) -> None:
        if self.pipeline is None:
            self.pipeline = await self.service.load(self.source)

    async def process(self, frame: np.ndarray, fps: float) -> ProcessedFrame:
        if self.pipeline is None:
            raise RuntimeError("MptaProcessor.process called before start()")
        if fps > 0:
            self.tracker.set_frame_rate(fps)
        result = await self.service.process(
            self.pipeline, frame, self.tracker, run_actions=self.run_actions
        )
        return ProcessedFrame(result.detection, result.bbox, result.to_json())

    def update_params(self, params: dict[str, Any]) -> None:
        if "run_actions" in params:
            self.run_actions = bool(params["run_actions"])

    async def stop(self) -> None:
        if self.pipeline is not None:
            pipeline, self.pipeline = self.pipeline, None
            await self.service.release(pipeline)
