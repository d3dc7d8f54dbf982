"""MptaDetectorProcessor: runs an MPTA pipeline on a trickle stream and draws what it finds.

Per stream it keeps its own :class:`TrackerState` (track ids start at 1 for every stream);
the loaded models are shared through the :class:`PipelineService`'s registry, and every
analysis runs on its inference scheduler (``PipelineService.process``, as CMS frames do):
the processor owns no inference thread.

Params (all optional; unknown keys are rejected):

* ``model_url`` (alias ``mpta_url``): the MPTA archive. Loaded at stream start, or when it
  changes, through the PipelineService (download and model loading never block the loop).
  Without it the processor's ``default_model_url`` is used.
* ``min_confidence`` (0..1) and ``trigger_classes`` (non-empty list of the root model's
  class names): override the root node's ``minConfidence``/``triggerClasses``; ``null``
  restores the pipeline's own value.
* ``annotate`` (default true): draw the result's box and label on output frames.
* ``target_fps`` (> 0): analyse at most this many frames per second of media time; the
  frames in between pass through, annotated with the last result.
* ``run_actions`` (default false): also run the pipeline's Redis actions. Off by default:
  a stream's results go to the data channel, and an archive named by a stream request
  should not make the worker connect to the Redis host written inside it.

Each analysed frame with a detection queues one record for :meth:`take_data`::

    {"timestamp_ms": <wall clock>, "pts": <frame pts>,
     "detection": {"class", "confidence", "id"}, "bbox": [x1, y1, x2, y2], "nodes": [...]}
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections import deque
from collections.abc import Mapping
from typing import Annotated, Any

import numpy as np
import numpy.typing as npt
from pydantic import Field, field_validator

from processors.annotate import Annotation, class_colour, draw_annotations
from pytrickle_worker.core.rate import RateSampler
from pytrickle_worker.errors import MptaError, WorkerError
from pytrickle_worker.logutil import mask_text, mask_url
from pytrickle_worker.mpta.engine import PipelineResult, RootOverrides
from pytrickle_worker.mpta.loader import LoadedPipeline
from pytrickle_worker.mpta.policy import ModelUrlPolicy, ModelUrlRefusedError
from pytrickle_worker.mpta.service import PipelineService
from pytrickle_worker.processing import (
    NOT_BOOL,
    FrameProcessor,
    ParamsError,
    ParamsModel,
    VideoFrame,
)
from pytrickle_worker.tracking.bytetrack import TrackerState
from pytrickle_worker.validation import NO_CONTROL

logger = logging.getLogger(__name__)

__all__ = ["MptaDetectorParams", "MptaDetectorProcessor"]

#: Most data records kept between two ``take_data`` calls; older ones are dropped.
DEFAULT_MAX_PENDING_DATA = 1000
#: Frames (media time) used to estimate the analysis rate for the tracker.
_RATE_WINDOW = 16
#: Relative change of the analysis rate that is passed on to the tracker.
_RATE_CHANGE = 0.1

Image = npt.NDArray[np.uint8]


ClassName = Annotated[str, NO_CONTROL, Field(min_length=1, max_length=200)]


class MptaDetectorParams(ParamsModel):
    model_url: Annotated[str, NO_CONTROL] | None = Field(
        default=None, min_length=1, max_length=4096
    )
    min_confidence: (
        Annotated[float, NOT_BOOL, Field(ge=0.0, le=1.0, allow_inf_nan=False)] | None
    ) = None
    trigger_classes: list[ClassName] | None = Field(default=None, min_length=1, max_length=1000)
    annotate: bool = True
    target_fps: Annotated[float, NOT_BOOL, Field(gt=0.0, le=240.0, allow_inf_nan=False)] | None = (
        None
    )
    run_actions: bool = False

    @classmethod
    def normalize(cls, raw: Mapping[str, Any]) -> dict[str, Any]:
        values = dict(raw)
        if "mpta_url" in values:
            alias = values.pop("mpta_url")
            if "model_url" in values and values["model_url"] != alias:
                raise ParamsError("model_url and mpta_url name different archives; give one")
            values["model_url"] = alias
        return values

    @field_validator("trigger_classes")
    @classmethod
    def _unique_classes(cls, value: list[str] | None) -> list[str] | None:
        if value is None:
            return None
        return list(dict.fromkeys(value))

    def overrides(self) -> RootOverrides | None:
        if self.min_confidence is None and self.trigger_classes is None:
            return None
        classes = tuple(self.trigger_classes) if self.trigger_classes is not None else None
        return RootOverrides(min_confidence=self.min_confidence, trigger_classes=classes)


class _Schedule:
    """Which frames to analyse at ``target_fps`` (media time), and the rate achieved."""

    def __init__(self) -> None:
        self.sampler = RateSampler()
        self.last_t: float | None = None
        self.times: deque[float] = deque(maxlen=_RATE_WINDOW)

    def reset(self) -> None:
        self.sampler.reset()
        self.last_t = None
        self.times.clear()

    def due(self, t: float, target_fps: float | None) -> bool:
        if self.last_t is not None and t < self.last_t:
            # pts went backwards (a new segment, a restarted encoder): start over.
            self.reset()
        self.last_t = t
        self.sampler.fps = target_fps
        return self.sampler.due(t)

    def analysed(self, t: float) -> float | None:
        """Record an analysis at media time ``t``; return the measured rate, if known."""
        self.times.append(t)
        if len(self.times) < 2:
            return None
        span = self.times[-1] - self.times[0]
        return (len(self.times) - 1) / span if span > 0 else None


class MptaDetectorProcessor(FrameProcessor):
    """An MPTA pipeline as a stream FrameProcessor. One stream at a time."""

    params_model = MptaDetectorParams

    def __init__(
        self,
        service: PipelineService,
        *,
        default_model_url: str | None = None,
        model_urls: ModelUrlPolicy | None = None,
        max_pending_data: int = DEFAULT_MAX_PENDING_DATA,
    ) -> None:
        if max_pending_data < 1:
            raise ValueError(f"max_pending_data must be >= 1, got {max_pending_data}")
        self._service = service
        self._default_url = default_model_url
        # The rule for a caller's model_url, the CMS door's too; the default is trusted.
        self._model_urls = model_urls or service.config.model_url_policy(
            [default_model_url] if default_model_url is not None else []
        )
        self._params = MptaDetectorParams()
        self._pipeline: LoadedPipeline | None = None
        self._pipeline_url: str | None = None
        self._tracker = TrackerState()
        self._schedule = _Schedule()
        self._last: tuple[Annotation, ...] = ()
        self._data: deque[dict[str, Any]] = deque(maxlen=max_pending_data)
        self._dropped_data = 0
        # Held while a frame is analysed and while the pipeline or tracker is swapped, so a
        # pipeline is never released under a running inference.
        self._frame_lock = asyncio.Lock()
        # Serialises params updates that load a model (REST and control channel).
        self._update_lock = asyncio.Lock()
        self._background: set[asyncio.Task[None]] = set()
        # A stream's frames are analysed in order, one at a time (under the frame lock), so
        # the tracker state is only ever touched by one inference thread at a time.
        self.last_error: str | None = None
        self.frames_in = 0
        self.frames_analysed = 0

    # ------------------------------------------------------------------ properties

    @property
    def params(self) -> MptaDetectorParams:
        return self._params

    @property
    def pipeline(self) -> LoadedPipeline | None:
        return self._pipeline

    @property
    def model_url(self) -> str | None:
        """The archive whose pipeline is loaded now."""
        return self._pipeline_url

    # ------------------------------------------------------------------ lifecycle

    async def load_model(self) -> None:
        """Preload the default pipeline, if there is one; raises its MptaError on failure."""
        if self._default_url is not None and self._pipeline_url != self._default_url:
            pipeline = await self._service.load(self._default_url)
            await self._install(pipeline, self._default_url)

    async def on_stream_start(self, params: dict[str, Any]) -> None:
        parsed = MptaDetectorParams.parse(params)
        async with self._update_lock:
            url = self._effective_url(parsed)
            if url != self._pipeline_url:
                pipeline = await self._load(url, user_given=parsed.model_url is not None)
                try:
                    self._check_classes(parsed, pipeline)
                except ParamsError:
                    await self._service.release(pipeline)
                    raise
                await self._install(pipeline, url)
            elif self._pipeline is not None:
                self._check_classes(parsed, self._pipeline)
            async with self._frame_lock:
                self._params = parsed
                self._tracker = TrackerState(frame_rate=parsed.target_fps or 30.0)
                self._schedule.reset()
                self._last = ()
                self._data.clear()
                self._dropped_data = 0
                self.frames_in = 0
                self.frames_analysed = 0
                self.last_error = None

    async def on_stream_stop(self) -> None:
        # A model switch still loading is left to finish: it only makes the next stream warm.
        async with self._frame_lock:
            self._last = ()
            self._schedule.reset()
            self._tracker = TrackerState()
        # The pipeline stays loaded: the next stream usually asks for the same archive.

    async def close(self) -> None:
        await self._cancel_background()
        async with self._frame_lock:
            pipeline, self._pipeline, self._pipeline_url = self._pipeline, None, None
        if pipeline is not None:
            try:
                await self._service.release(pipeline)
            except RuntimeError as exc:  # the service was closed first: its models are gone
                logger.warning("mpta-detector: pipeline not released: %s", exc)

    # ------------------------------------------------------------------ params

    def update_params(self, params: dict[str, Any]) -> None:
        """Apply an update now; a new ``model_url`` is validated now and loaded in the
        background (frames keep using the current model until the new one is ready)."""
        if self._commit_without_load(self._params.merged(params)):
            return
        task = asyncio.get_running_loop().create_task(
            self._apply_in_background(dict(params)), name="mpta-detector-params"
        )
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def apply_params(self, params: dict[str, Any]) -> None:
        """Apply an update and return when it is in effect, loading a new model if needed.

        All or nothing: when the new archive cannot be loaded, or the classes do not exist
        in it, nothing changes and :class:`ParamsError` says why.
        """
        async with self._update_lock:
            merged = self._params.merged(params)
            if self._commit_without_load(merged):
                return
            url = self._effective_url(merged)
            pipeline = await self._load(url, user_given=merged.model_url is not None)
            try:
                # Other updates may have landed while the archive loaded: merge again.
                merged = self._params.merged(params)
                self._check_classes(merged, pipeline)
            except ParamsError:
                await self._service.release(pipeline)
                raise
            await self._install(pipeline, url)
            self._commit(merged)

    def _commit_without_load(self, merged: MptaDetectorParams) -> bool:
        """Commit ``merged`` when it keeps the loaded archive (its classes checked against
        it); False when another archive must be loaded first."""
        pipeline = self._pipeline
        if pipeline is None or self._effective_url(merged) != self._pipeline_url:
            return False
        self._check_classes(merged, pipeline)
        self._commit(merged)
        return True

    async def _apply_in_background(self, params: dict[str, Any]) -> None:
        try:
            await self.apply_params(params)
        except WorkerError as exc:
            self.last_error = str(exc)
            logger.error("params update not applied: %s", exc)

    def _commit(self, params: MptaDetectorParams) -> None:
        previous = self._params
        self._params = params
        if params.target_fps != previous.target_fps:
            self._schedule.reset()
        logger.info("mpta-detector params: %s", self.current_params())

    def current_params(self) -> dict[str, Any]:
        values = self._params.model_dump()
        if values["model_url"] is not None:
            values["model_url"] = mask_url(values["model_url"])
        values["loaded_model_url"] = mask_url(self._pipeline_url) if self._pipeline_url else None
        return values

    def _effective_url(self, params: MptaDetectorParams) -> str:
        url = params.model_url if params.model_url is not None else self._default_url
        if url is None:
            raise ParamsError("model_url: required (this worker has no default pipeline)")
        # A caller's URL passes the same rule as a CMS modelUrl (mpta/policy.py).
        if params.model_url is not None:
            try:
                self._model_urls.check(params.model_url)
            except ModelUrlRefusedError as exc:
                raise ParamsError(f"model_url: {exc}") from None
        return url

    @staticmethod
    def _check_classes(params: MptaDetectorParams, pipeline: LoadedPipeline) -> None:
        root = pipeline.root
        if root.is_classifier and (
            params.trigger_classes is not None or params.min_confidence is not None
        ):
            raise ParamsError(
                "min_confidence/trigger_classes: the pipeline's root node is a classifier; "
                "only a detection root can be overridden"
            )
        if params.trigger_classes is None:
            return
        names = root.model.info.names
        unknown = [name for name in params.trigger_classes if name not in names]
        if unknown:
            shown = ", ".join(names[:50]) + (" …" if len(names) > 50 else "")
            raise ParamsError(
                f"trigger_classes: {', '.join(map(repr, unknown))} not in the root model's "
                f"classes ({shown})"
            )

    async def _load(self, url: str, *, user_given: bool) -> LoadedPipeline:
        try:
            return await self._service.load(url)
        except MptaError as exc:
            if user_given:
                raise ParamsError(f"model_url: cannot load {mask_url(url)}: {exc}") from exc
            raise

    async def _install(self, pipeline: LoadedPipeline, url: str) -> None:
        async with self._frame_lock:
            old = self._pipeline
            self._pipeline, self._pipeline_url = pipeline, url
            self._tracker = TrackerState(frame_rate=self._tracker.frame_rate)
            self._last = ()
        if old is not None and old is not pipeline:
            await self._service.release(old)
        logger.info("mpta-detector: pipeline %s is active", mask_url(url))

    async def _cancel_background(self) -> None:
        tasks = list(self._background)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    # ------------------------------------------------------------------ frames

    async def process_video_async(self, frame: VideoFrame) -> VideoFrame | None:
        self.frames_in += 1
        params = self._params
        if not self._schedule.due(frame.time_s, params.target_fps):
            if not params.annotate or not self._last:
                return frame
            # Drawing is no inference: a plain worker thread, not the scheduler's.
            drawn = await asyncio.to_thread(draw_annotations, frame.rgb, self._last)
            return frame.with_rgb(drawn)
        async with self._frame_lock:
            pipeline = self._pipeline
            if pipeline is None:
                return frame
            rate = self._schedule.analysed(frame.time_s)
            tracker = self._tracker
            if rate is not None and not math.isclose(
                rate, tracker.frame_rate, rel_tol=_RATE_CHANGE
            ):
                tracker.set_frame_rate(rate)
            result = await self._service.process(
                pipeline, frame.rgb, tracker, run_actions=False, overrides=params.overrides()
            )
            annotations = _annotations(result)
            drawn = (
                await asyncio.to_thread(draw_annotations, frame.rgb, annotations)
                if params.annotate and annotations
                else None
            )
            self._last = annotations
        self.frames_analysed += 1
        if result.detection is not None:
            self._queue(frame, result)
            if params.run_actions:
                self._service.dispatch_actions(pipeline, result)
        return frame.with_rgb(drawn) if drawn is not None else frame

    def _queue(self, frame: VideoFrame, result: PipelineResult) -> None:
        if len(self._data) == self._data.maxlen:
            self._dropped_data += 1
            if self._dropped_data == 1 or self._dropped_data % 1000 == 0:
                logger.warning(
                    "mpta-detector: data records not taken; %d dropped", self._dropped_data
                )
        self._data.append(
            {
                "timestamp_ms": int(time.time() * 1000),
                "pts": frame.pts,
                "detection": result.detection,
                "bbox": list(result.bbox) if result.bbox is not None else None,
                "nodes": [node.to_json() for node in result.nodes],
            }
        )

    def take_data(self) -> list[dict[str, Any]]:
        records = list(self._data)
        self._data.clear()
        return records

    def stats(self) -> dict[str, Any]:
        return {
            "frames_in": self.frames_in,
            "frames_analysed": self.frames_analysed,
            "pending_data": len(self._data),
            "dropped_data": self._dropped_data,
            "last_error": mask_text(self.last_error) if self.last_error else None,
        }


def _annotations(result: PipelineResult) -> tuple[Annotation, ...]:
    """The box of the result's root detection, labelled with the chain of classes."""
    if result.detection is None or result.bbox is None:
        return ()
    classes = [node.class_name for node in result.nodes if node.class_name is not None]
    root_class = classes[0] if classes else str(result.detection["class"])
    chain = "/".join(dict.fromkeys(classes)) or root_class
    confidence = result.detection.get("confidence")
    label = chain if confidence is None else f"{chain} {float(confidence):.2f}"
    track_id = result.detection.get("id")
    if track_id is not None:
        label = f"{label} #{track_id}"
    return (Annotation(result.bbox, label, class_colour(root_class)),)
