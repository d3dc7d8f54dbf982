"""MptaDetectorProcessor (registry name ``mpta``): an MPTA pipeline, for both front doors.

The CMS door opens one :class:`MptaStream` per camera subscription (its archive as the
processor's ``default_model_url``, ``run_actions`` on, frames at the hub's fixed rate); the
stream door runs one trickle stream at a time, and its annotate step draws what the
stream's results suggest.

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
* ``annotate`` (default true): suggest the result's box and label for the stream door's
  annotate step to draw on output frames.
* ``target_fps`` (> 0): analyse at most this many frames per second of media time; the
  frames in between pass through, annotated with the last result.
* ``run_actions`` (default false): also run the pipeline's Redis actions. Off by default:
  a stream's results go to the data channel, and an archive named by a stream request
  should not make the worker connect to the Redis host written inside it.

Each analysed frame with a detection gives one record (the stream door queues it for
:meth:`take_data`; the CMS door sends its ``detection``)::

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
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, Any

import numpy as np
import numpy.typing as npt
from pydantic import Field, field_validator

from pytrickle_worker.core.errors import MptaError, WorkerError
from pytrickle_worker.core.logutil import mask_text, mask_url
from pytrickle_worker.core.rate import RateSampler
from pytrickle_worker.core.validation import NO_CONTROL
from pytrickle_worker.engine.mpta.engine import PipelineResult, RootOverrides
from pytrickle_worker.engine.mpta.loader import LoadedPipeline
from pytrickle_worker.engine.mpta.policy import ModelUrlPolicy, ModelUrlRefusedError
from pytrickle_worker.engine.mpta.service import PipelineService
from pytrickle_worker.engine.tracking.bytetrack import TrackerState
from pytrickle_worker.processing import (
    DEFAULT_MAX_PENDING_DATA,
    NOT_BOOL,
    FrameProcessor,
    ParamsError,
    ParamsModel,
    ProcessResult,
    StreamContext,
    VideoFrame,
)
from pytrickle_worker.processing.annotate import Annotation, class_colour, detection_label

if TYPE_CHECKING:
    from pytrickle_worker.processing.registry import ProcessorDeps

logger = logging.getLogger(__name__)

__all__ = ["MptaDetectorParams", "MptaDetectorProcessor", "MptaStream"]

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


@dataclass
class _Held:
    """A loaded pipeline and how many streams use it."""

    pipeline: LoadedPipeline
    users: int = 0


class MptaStream(StreamContext):
    """One stream through an MPTA pipeline: its params, tracker, schedule and pipeline."""

    def __init__(
        self,
        processor: MptaDetectorProcessor,
        stream_id: str,
        params: MptaDetectorParams,
        pipeline: LoadedPipeline,
        url: str,
        frame_rate: float | None,
    ) -> None:
        self._processor = processor
        self.stream_id = stream_id
        self._params = params
        self._pipeline: LoadedPipeline | None = pipeline
        self._pipeline_url: str | None = url
        self._fixed_rate = frame_rate
        self._tracker = TrackerState(frame_rate=frame_rate or params.target_fps or 30.0)
        self._schedule = _Schedule()
        self._last: tuple[Annotation, ...] = ()
        # Held while a frame is analysed and while the pipeline or tracker is swapped, so a
        # pipeline is never released under a running inference. A stream's frames are
        # analysed in order, one at a time, so the tracker state is only ever touched by
        # one inference thread at a time.
        self._frame_lock = asyncio.Lock()
        # Serialises params updates that load a model (REST and control channel).
        self._update_lock = asyncio.Lock()
        self._background: set[asyncio.Task[None]] = set()
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
        """The archive whose pipeline this stream runs now."""
        return self._pipeline_url

    @property
    def tracked(self) -> bool:
        pipeline = self._pipeline
        return pipeline is not None and pipeline.tracks

    # ------------------------------------------------------------------ params

    def update_params(self, params: Mapping[str, Any]) -> None:
        """Apply an update now; a new ``model_url`` is validated now and loaded in the
        background (frames keep using the current model until the new one is ready)."""
        if self._commit_without_load(self._params.merged(params)):
            return
        task = asyncio.get_running_loop().create_task(
            self._apply_in_background(dict(params)), name="mpta-detector-params"
        )
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def apply_params(self, params: Mapping[str, Any]) -> None:
        """Apply an update and return when it is in effect, loading a new model if needed.

        All or nothing: when the new archive cannot be loaded, or the classes do not exist
        in it, nothing changes and :class:`ParamsError` says why.
        """
        async with self._update_lock:
            merged = self._params.merged(params)
            if self._commit_without_load(merged):
                return
            processor = self._processor
            url = processor.effective_url(merged)
            pipeline = await processor.acquire(url, user_given=merged.model_url is not None)
            try:
                # Other updates may have landed while the archive loaded: merge again.
                merged = self._params.merged(params)
                _check_classes(merged, pipeline)
            except ParamsError:
                await processor.release(url, keep_warm=False)
                raise
            await self._install(pipeline, url)
            self._commit(merged)

    def _commit_without_load(self, merged: MptaDetectorParams) -> bool:
        """Commit ``merged`` when it keeps the loaded archive (its classes checked against
        it); False when another archive must be loaded first."""
        pipeline = self._pipeline
        if pipeline is None or self._processor.effective_url(merged) != self._pipeline_url:
            return False
        _check_classes(merged, pipeline)
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

    async def _install(self, pipeline: LoadedPipeline, url: str) -> None:
        async with self._frame_lock:
            old_url = self._pipeline_url
            self._pipeline, self._pipeline_url = pipeline, url
            self._tracker = TrackerState(frame_rate=self._tracker.frame_rate)
            self._last = ()
        if old_url is not None:
            await self._processor.release(old_url, keep_warm=False)
        logger.info("mpta-detector: pipeline %s is active", mask_url(url))

    async def close(self) -> None:
        tasks = list(self._background)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        async with self._frame_lock:
            url, self._pipeline, self._pipeline_url = self._pipeline_url, None, None
            self._last = ()
            self._schedule.reset()
        # The pipeline stays loaded: the next stream usually asks for the same archive.
        if url is not None:
            await self._processor.release(url, keep_warm=True)

    # ------------------------------------------------------------------ frames

    async def process(self, frame: VideoFrame) -> ProcessResult:
        self.frames_in += 1
        params = self._params
        if not self._schedule.due(frame.time_s, params.target_fps):
            # Frames in between pass through, annotated with the last result.
            return ProcessResult(frame, annotations=self._last if params.annotate else ())
        async with self._frame_lock:
            pipeline = self._pipeline
            if pipeline is None:
                return ProcessResult(frame)
            rate = self._schedule.analysed(frame.time_s)
            tracker = self._tracker
            if self._fixed_rate is not None:
                tracker.set_frame_rate(self._fixed_rate)
            elif rate is not None and not math.isclose(
                rate, tracker.frame_rate, rel_tol=_RATE_CHANGE
            ):
                tracker.set_frame_rate(rate)
            result = await self._processor.service.process(
                pipeline, frame.image, tracker, run_actions=False, overrides=params.overrides()
            )
            self._last = _annotations(result)
        self.frames_analysed += 1
        records: list[dict[str, Any]] = []
        if result.detection is not None:
            records.append(_record(frame, result))
            if params.run_actions:
                self._processor.service.dispatch_actions(pipeline, result)
        return ProcessResult(frame, records, self._last if params.annotate else ())

    def stats(self) -> dict[str, Any]:
        return {
            "frames_in": self.frames_in,
            "frames_analysed": self.frames_analysed,
            "last_error": mask_text(self.last_error) if self.last_error else None,
        }


class MptaDetectorProcessor(FrameProcessor):
    """An MPTA pipeline as a FrameProcessor, for both front doors.

    Streams share loaded pipelines (one per archive, counted); the last one a stream used
    stays loaded when no stream uses it, so the next stream asking for it starts warm.
    """

    name = "mpta"
    params_model = MptaDetectorParams
    takes_decoded_frames = True  # the pipeline runs on an inference thread

    def __init__(
        self,
        service: PipelineService,
        *,
        default_model_url: str | None = None,
        model_urls: ModelUrlPolicy | None = None,
        max_pending_data: int = DEFAULT_MAX_PENDING_DATA,
    ) -> None:
        super().__init__(max_pending_data=max_pending_data)
        self.service = service
        self._default_url = default_model_url
        # The rule for a caller's model_url, the CMS door's too; the default is trusted.
        self._model_urls = model_urls or service.config.model_url_policy(
            [default_model_url] if default_model_url is not None else []
        )
        self._held: dict[str, _Held] = {}
        self._warm_url: str | None = None
        self._load_lock = asyncio.Lock()

    # ------------------------------------------------------------------ the stream door's view

    @property
    def _mpta_stream(self) -> MptaStream | None:
        stream = self.stream
        return stream if isinstance(stream, MptaStream) else None

    @property
    def params(self) -> MptaDetectorParams:
        stream = self._mpta_stream
        return stream.params if stream is not None else MptaDetectorParams()

    @property
    def pipeline(self) -> LoadedPipeline | None:
        """The stream door's stream's pipeline, or the one kept warm."""
        stream = self._mpta_stream
        if stream is not None:
            return stream.pipeline
        held = self._held.get(self._warm_url) if self._warm_url is not None else None
        return held.pipeline if held is not None else None

    @property
    def model_url(self) -> str | None:
        """The archive the stream door's stream runs, or the one kept warm."""
        stream = self._mpta_stream
        return stream.model_url if stream is not None else self._warm_url

    @property
    def frames_in(self) -> int:
        stream = self._mpta_stream
        return stream.frames_in if stream is not None else 0

    @property
    def frames_analysed(self) -> int:
        stream = self._mpta_stream
        return stream.frames_analysed if stream is not None else 0

    @property
    def last_error(self) -> str | None:
        stream = self._mpta_stream
        return stream.last_error if stream is not None else None

    def current_params(self) -> dict[str, Any]:
        stream = self._mpta_stream
        if stream is not None:
            return stream.current_params()
        values = MptaDetectorParams().model_dump()
        values["loaded_model_url"] = mask_url(self._warm_url) if self._warm_url else None
        return values

    def stats(self) -> dict[str, Any]:
        stream = self._mpta_stream
        stats = stream.stats() if stream is not None else {}
        return {**stats, "pending_data": self.pending_data, "dropped_data": self.dropped_data}

    # ------------------------------------------------------------------ lifecycle

    async def load_model(self) -> None:
        """Preload the default pipeline, if there is one; raises its MptaError on failure."""
        url = self._default_url
        if url is not None and url not in self._held:
            await self.acquire(url, user_given=False)
            await self.release(url, keep_warm=True)

    async def open_stream(
        self, stream_id: str, params: Mapping[str, Any], *, frame_rate: float | None = None
    ) -> MptaStream:
        parsed = MptaDetectorParams.parse(params)
        url = self.effective_url(parsed)
        pipeline = await self.acquire(url, user_given=parsed.model_url is not None)
        try:
            _check_classes(parsed, pipeline)
        except ParamsError:
            await self.release(url, keep_warm=False)
            raise
        return MptaStream(self, stream_id, parsed, pipeline, url, frame_rate)

    async def close(self) -> None:
        await super().close()
        held, self._held, self._warm_url = self._held, {}, None
        for entry in held.values():
            try:
                await self.service.release(entry.pipeline)
            except RuntimeError as exc:  # the service was closed first: its models are gone
                logger.warning("mpta-detector: pipeline not released: %s", exc)

    # ------------------------------------------------------------------ pipelines

    def effective_url(self, params: MptaDetectorParams) -> str:
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

    async def acquire(self, url: str, *, user_given: bool) -> LoadedPipeline:
        """The pipeline of ``url`` for one more stream (loaded unless it is already)."""
        async with self._load_lock:
            held = self._held.get(url)
            if held is None:
                try:
                    pipeline = await self.service.load(url)
                except MptaError as exc:
                    if user_given:
                        raise ParamsError(f"model_url: cannot load {mask_url(url)}: {exc}") from exc
                    raise
                held = self._held[url] = _Held(pipeline)
            held.users += 1
            return held.pipeline

    async def release(self, url: str, *, keep_warm: bool) -> None:
        """One stream less uses ``url``'s pipeline. Unused, it is released unless
        ``keep_warm`` (then it replaces the pipeline kept warm) or it is the warm one."""
        drop: list[LoadedPipeline] = []
        async with self._load_lock:
            held = self._held[url]
            held.users -= 1
            if held.users > 0:
                return
            if keep_warm and self._warm_url != url:
                previous = self._warm_url
                self._warm_url = url
                old = self._held.get(previous) if previous is not None else None
                if previous is not None and old is not None and old.users == 0:
                    del self._held[previous]
                    drop.append(old.pipeline)
            elif not keep_warm and self._warm_url != url:
                del self._held[url]
                drop.append(held.pipeline)
        for pipeline in drop:
            await self.service.release(pipeline)


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


def _record(frame: VideoFrame, result: PipelineResult) -> dict[str, Any]:
    return {
        "timestamp_ms": int(time.time() * 1000),
        "pts": frame.pts,
        "detection": result.detection,
        "bbox": list(result.bbox) if result.bbox is not None else None,
        "nodes": [node.to_json() for node in result.nodes],
    }


def _annotations(result: PipelineResult) -> tuple[Annotation, ...]:
    """The box of the result's root detection, labelled with the chain of classes."""
    if result.detection is None or result.bbox is None:
        return ()
    classes = [node.class_name for node in result.nodes if node.class_name is not None]
    root_class = classes[0] if classes else str(result.detection["class"])
    chain = "/".join(dict.fromkeys(classes)) or root_class
    label = detection_label(chain, result.detection.get("confidence"), result.detection.get("id"))
    return (Annotation(result.bbox, label, class_colour(root_class)),)


PROCESSOR_NAME = "mpta"


def create_processor(deps: ProcessorDeps) -> MptaDetectorProcessor:
    """The registry's factory (``pytrickle_worker.processing.registry``)."""
    return MptaDetectorProcessor(
        deps.service, default_model_url=deps.default_model_url, model_urls=deps.model_urls
    )
