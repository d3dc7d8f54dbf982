"""The FrameProcessor interface (pytrickle_worker.processing) and PassthroughProcessor."""

from __future__ import annotations

from collections.abc import Mapping
from fractions import Fraction
from typing import Any, ClassVar

import numpy as np
import pytest
from pydantic import Field

from processors.passthrough import PassthroughProcessor
from pytrickle_worker.devtools.synthetic import moving_objects, render_scene
from pytrickle_worker.processing import (
    FrameProcessor,
    ParamsError,
    ParamsModel,
    ProcessResult,
    StreamContext,
    VideoFrame,
)

TB = Fraction(1, 90_000)


def test_video_frame_validates_its_pixels() -> None:
    frame = VideoFrame(np.zeros((4, 6, 3), np.uint8), 3000, TB)
    assert (frame.width, frame.height) == (6, 4)
    assert frame.time_s == pytest.approx(3000 / 90_000)
    other = frame.with_rgb(np.ones((4, 6, 3), np.uint8))
    assert (other.pts, other.time_base) == (3000, TB)
    with pytest.raises(ValueError, match="uint8"):
        VideoFrame(np.zeros((4, 6, 3), np.float32), 0, TB)  # pyright: ignore[reportArgumentType]
    with pytest.raises(ValueError, match="H×W×3"):
        VideoFrame(np.zeros((4, 6), np.uint8), 0, TB)
    with pytest.raises(ValueError, match="time_base"):
        VideoFrame(np.zeros((4, 6, 3), np.uint8), 0, Fraction(0))


async def test_passthrough_returns_frames_unchanged() -> None:
    processor = PassthroughProcessor()
    await processor.load_model()
    await processor.on_stream_start({"width": 640, "height": 360, "intensity": 0.7})
    for index in range(5):
        rgb = render_scene(320, 180, moving_objects(index, 320, 180, 15))
        frame = VideoFrame(rgb, index * 6000, TB)
        out = await processor.process_video_async(frame)
        assert out is frame
        assert frame.rgb is rgb
    assert processor.frames == 5
    assert processor.take_data() == []
    # Stream-level keys belong to the session; the rest is kept.
    assert processor.current_params() == {"intensity": 0.7}
    processor.update_params({"intensity": 0.9, "max_framerate": 20})
    assert processor.current_params() == {"intensity": 0.9}
    await processor.on_stream_stop()
    await processor.close()


class StrictParams(ParamsModel):
    runtime_immutable: ClassVar[frozenset[str]] = frozenset({"mode"})

    mode: str = "fast"
    level: int = Field(default=1, ge=0, le=10)


class StrictStream(StreamContext):
    def __init__(self, params: StrictParams) -> None:
        self.params = params

    async def process(self, frame: VideoFrame) -> ProcessResult:
        return ProcessResult(None)

    def update_params(self, params: Mapping[str, Any]) -> None:
        self.params = self.params.merged(params)


class StrictProcessor(FrameProcessor):
    params_model = StrictParams

    async def open_stream(
        self, stream_id: str, params: Mapping[str, Any], *, frame_rate: float | None = None
    ) -> StrictStream:
        return StrictStream(StrictParams.parse(params))

    @property
    def params(self) -> StrictParams:
        assert isinstance(self.stream, StrictStream)
        return self.stream.params


async def test_params_model_rejects_bad_unknown_and_immutable_values() -> None:
    processor = StrictProcessor()
    await processor.on_stream_start({"level": 3, "width": 10, "height": 10})
    assert processor.params.level == 3

    with pytest.raises(ParamsError, match=r"level: Input should be less than or equal to 10"):
        processor.update_params({"level": 11})
    with pytest.raises(ParamsError, match=r"colour: unknown parameter"):
        processor.update_params({"colour": "red"})
    with pytest.raises(ParamsError, match=r"mode: cannot be changed while a stream runs"):
        processor.update_params({"mode": "slow"})
    assert processor.params == StrictParams(level=3)  # nothing of a rejected update applied

    processor.update_params({"mode": "fast", "level": 4})  # an unchanged immutable is fine
    assert processor.params.level == 4
    await processor.apply_params({"level": 5})
    assert processor.params.level == 5

    assert isinstance(processor.validate_params({"level": 0}), StrictParams)
    with pytest.raises(ParamsError, match="level"):
        processor.validate_params({"level": "many"})
    with pytest.raises(ParamsError, match="parameter names must be strings"):
        StrictParams.parse({1: 2})  # type: ignore[dict-item]
