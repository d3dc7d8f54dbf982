"""The one FrameProcessor interface: what every front door drives per video frame.

A processor lives as long as the worker; streams come and go around it. Each stream gets a
:class:`StreamContext` (its params, its tracker) from :meth:`FrameProcessor.open_stream`;
the context turns frames into a :class:`ProcessResult` (output frame and records). The CMS
door opens a context per camera subscription; the stream door (StreamServer/trickle)
drives one stream at a time through pytrickle's lifecycle names, which the base class
implements on top of a context (``on_stream_start``, ``process_video_async``,
``take_data``, ``update_params``, ``on_stream_stop``).

Params are validated by a :class:`~pytrickle_worker.processing.params.ParamsModel` per
processor (:mod:`pytrickle_worker.processing.params`).
"""

from __future__ import annotations

import abc
import asyncio
import logging
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

from pytrickle_worker.core.frame import VideoFrame
from pytrickle_worker.processing.annotate import Annotation, draw_annotations
from pytrickle_worker.processing.params import ParamsError, ParamsModel

logger = logging.getLogger(__name__)

__all__ = [
    "DEFAULT_MAX_PENDING_DATA",
    "FrameProcessor",
    "ProcessResult",
    "StreamContext",
]

#: Most data records the stream door keeps between two ``take_data`` calls; older ones go.
DEFAULT_MAX_PENDING_DATA = 1000


@dataclass(frozen=True)
class ProcessResult:
    """What a stream context made of one frame.

    ``frame``: the output frame (``None`` drops it). ``records``: what was found, as JSON
    objects (the stream door sends them on the data channel; the CMS door reads the
    ``"detection"`` of the first record, a ``{"class", "confidence", "id"}`` dict).
    ``annotations``: boxes the processor suggests drawing; the stream door's annotate step
    draws them on ``frame`` after the processor (:mod:`pytrickle_worker.processing.annotate`).
    """

    frame: VideoFrame | None
    records: Sequence[dict[str, Any]] = ()
    annotations: Sequence[Annotation] = ()


class StreamContext(abc.ABC):
    """One stream in a :class:`FrameProcessor`: its params, tracker and other state.

    :meth:`process` is awaited once per frame, never concurrently, and must not block the
    event loop (run inference and large-array work in a thread).
    """

    @abc.abstractmethod
    async def process(self, frame: VideoFrame) -> ProcessResult:
        """Process one frame of this stream."""

    @abc.abstractmethod
    def update_params(self, params: Mapping[str, Any]) -> None:
        """Validate and apply a (partial) params update; raises :class:`ParamsError`.

        Either the whole update is applied or none of it.
        """

    async def apply_params(self, params: Mapping[str, Any]) -> None:
        """Apply an update and return once it is in effect (the REST API awaits this).

        The default applies it with :meth:`update_params`; contexts whose updates need I/O
        (loading another model) override it so that a failure reaches the caller.
        """
        self.update_params(params)

    def current_params(self) -> dict[str, Any]:
        """The params in effect, for the status route."""
        return {}

    @property
    def tracked(self) -> bool:
        """Whether the records' detections carry track ids (``"id"``)."""
        return False

    async def close(self) -> None:  # noqa: B027 - an optional hook, empty by default
        """The stream ended: release what the context holds."""


class FrameProcessor(abc.ABC):
    """What the worker runs on a stream's frames; both front doors drive it::

        await processor.load_model()                       # once, at start
        context = await processor.open_stream(stream_id, params)   # per stream
        result = await context.process(frame)              # per frame -> ProcessResult
        context.update_params(update)                      # at any time; ParamsError
        await context.close()                              # per stream
        await processor.close()                            # at shutdown

    The CMS door opens one context per camera subscription; the stream door (StreamServer)
    drives one stream at a time through the pytrickle-named methods below
    (:meth:`on_stream_start`, :meth:`process_video_async`, :meth:`take_data`,
    :meth:`update_params`, :meth:`on_stream_stop`), which open, run and close one context
    and draw its annotations.
    """

    #: The name the processor registry knows it by (``pytrickle_worker.processing.registry``).
    name: ClassVar[str] = ""
    params_model: ClassVar[type[ParamsModel]] = ParamsModel
    #: True when :meth:`StreamContext.process` reads ``frame.rgb`` only off the event loop
    #: (or not at all): the CMS door then hands over the decoded frame unconverted
    #: (``VideoFrame.image``), and a detector scales it to its input in one step. False
    #: (the default): ``frame.image`` is always the RGB array, converted off the loop.
    takes_decoded_frames: ClassVar[bool] = False

    def __init__(self, *, max_pending_data: int = DEFAULT_MAX_PENDING_DATA) -> None:
        if max_pending_data < 1:
            raise ValueError(f"max_pending_data must be >= 1, got {max_pending_data}")
        self._stream: StreamContext | None = None
        self._data: deque[dict[str, Any]] = deque(maxlen=max_pending_data)
        self._dropped_data = 0
        self._last_result: ProcessResult | None = None

    async def load_model(self) -> None:  # noqa: B027 - an optional hook, empty by default
        """Load what every stream needs (called once at start; may be retried)."""

    @abc.abstractmethod
    async def open_stream(
        self, stream_id: str, params: Mapping[str, Any], *, frame_rate: float | None = None
    ) -> StreamContext:
        """Open a stream with ``params`` (complete, not partial); raises ParamsError.

        ``frame_rate``: the fixed rate the caller samples frames at, when it has one (the
        CMS door's camera hub); ``None``: frames come at the rate their pts say.
        """

    def validate_params(self, params: Mapping[str, Any]) -> ParamsModel:
        """Check a complete params dict without applying it; raises :class:`ParamsError`."""
        return self.params_model.parse(params)

    async def close(self) -> None:
        """Release everything (shutdown)."""
        await self.on_stream_stop()

    # ------------------------------------------------------------------ the stream door

    @property
    def stream(self) -> StreamContext | None:
        """The stream door's current context."""
        return self._stream

    async def on_stream_start(self, params: dict[str, Any]) -> None:
        """The stream door's stream starts with ``params``; raises ParamsError."""
        context = await self.open_stream("stream", params)
        previous, self._stream = self._stream, context
        self._data.clear()
        self._dropped_data = 0
        if previous is not None:
            await previous.close()

    async def process_video_async(self, frame: VideoFrame) -> VideoFrame | None:
        """Process one frame of the stream door's stream and draw its annotations."""
        context = self._stream
        if context is None:
            return frame
        result = await context.process(frame)
        self._last_result = result
        for record in result.records:
            self._queue(record)
        out = result.frame
        if out is not None and result.annotations:
            # Drawing is no inference: a plain worker thread, not the scheduler's.
            drawn = await asyncio.to_thread(draw_annotations, out.rgb, result.annotations)
            out = out.with_rgb(drawn)
        return out

    def take_last_result(self) -> ProcessResult | None:
        """The :class:`ProcessResult` of the latest :meth:`process_video_async` (its frame
        not drawn on), once: the stream door hands it to its result sinks. None when a
        subclass's ``process_video_async`` did not go through the base class."""
        result, self._last_result = self._last_result, None
        return result

    def _queue(self, record: dict[str, Any]) -> None:
        if len(self._data) == self._data.maxlen:
            self._dropped_data += 1
            if self._dropped_data == 1 or self._dropped_data % 1000 == 0:
                logger.warning("data records not taken; %d dropped", self._dropped_data)
        self._data.append(record)

    def take_data(self) -> list[dict[str, Any]]:
        """Data-channel records produced since the previous call (oldest first)."""
        records = list(self._data)
        self._data.clear()
        return records

    @property
    def pending_data(self) -> int:
        return len(self._data)

    @property
    def dropped_data(self) -> int:
        return self._dropped_data

    def update_params(self, params: dict[str, Any]) -> None:
        """Update the stream door's stream; raises :class:`ParamsError`."""
        context = self._stream
        if context is None:
            raise ParamsError("no stream is running")
        context.update_params(params)

    async def apply_params(self, params: dict[str, Any]) -> None:
        """Update the stream door's stream and return once it is in effect."""
        context = self._stream
        if context is None:
            raise ParamsError("no stream is running")
        await context.apply_params(params)

    def current_params(self) -> dict[str, Any]:
        """The params in effect, for the status route."""
        context = self._stream
        return context.current_params() if context is not None else {}

    async def on_stream_stop(self) -> None:
        """The stream door's stream ended."""
        context, self._stream = self._stream, None
        if context is not None:
            await context.close()
