"""StreamSession: trickle in → decode → FrameProcessor → encode → trickle out, plus the
control, events and data channels of one stream (``StreamSessionLike`` of the API).

::

    subscribe_url ─GET─▶ SegmentDecoder ─▶ processor ─▶ SegmentEncoder ─POST─▶ publish_url
                         (thread)           (loop)       (thread, 1 segment per GOP)
    control_url ─GET─▶ params → processor.apply_params / max_framerate
    events_url  ◀POST─ heartbeat (stream_heartbeat) + ai_stream_events
    data_url    ◀POST─ processor.take_data() batches (JSONL)

Every hop is a bounded queue that drops the oldest entry: whole queued input segments before
the decoder, decoded frames before the processor, processed frames before the encoder,
whole unstarted output segments before the publisher, events and data records. A slow stage
loses frames, never latency, and memory stays bounded.

The session never calls the processor's ``on_stream_start``/``on_stream_stop``: the stream
manager does. ``stop()`` finishes the last output segment, DELETEs the output channel (its
subscribers see the end of the stream), publishes ``stream_stopped`` and the last data, and
closes the events/data publishers without deleting their channels (the gateway owns them and
may still be reading). The session ends on its own when the input channel ends (404 or
closed); :meth:`wait_closed` then returns (or raises the failure that ended it).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Any, Literal, cast

import aiohttp
from pydantic import BaseModel, ConfigDict, Field

from pytrickle_worker.core.errors import WorkerError
from pytrickle_worker.core.fps import FpsMeter
from pytrickle_worker.core.latency import LatencyHistogram
from pytrickle_worker.core.logutil import mask_text, mask_url
from pytrickle_worker.frontdoors.streamserver.channels import (
    ChannelPublisher,
    ControlChannel,
    DataChannel,
    EventsChannel,
    now_ms,
)
from pytrickle_worker.frontdoors.streamserver.schemas import (
    StartRequest,
    StreamParams,
    split_params_update,
    without_fixed_changes,
)
from pytrickle_worker.frontdoors.streamserver.stats import Dimensions, StreamStats
from pytrickle_worker.media.nvdec import MAX_VIDEO_PIXELS, NvdecApi
from pytrickle_worker.media.segment_decoder import SegmentDecoder
from pytrickle_worker.media.segment_encoder import EncoderSettings, SegmentEncoder
from pytrickle_worker.processing import FrameProcessor, ProcessResult, VideoFrame
from pytrickle_worker.processing.sink import StreamSinks
from pytrickle_worker.transport.trickle import TrickleError, TrickleSubscriber

__all__ = ["StreamSession", "StreamSessionConfig", "StreamSessionError"]

logger = logging.getLogger(__name__)

#: ``queue_event_type`` of the periodic heartbeat and of the lifecycle events.
HEARTBEAT_EVENT_TYPE = "stream_heartbeat"
STREAM_EVENT_TYPE = "ai_stream_events"
_VIDEO_MIME = "video/mp2t"


class StreamSessionError(WorkerError):
    """The stream failed (input decoder or encoder gave up, input subscription failed)."""


class StreamSessionConfig(BaseModel):
    """Tunables of a stream session (queue sizes, channel timings, encoder settings)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    start_seq: int = Field(default=-2, ge=-2, description="First input segment: -2 latest")
    decoder_buffer_bytes: int = Field(default=16 * 1024 * 1024, gt=0)
    frame_queue_size: int = Field(
        default=8, ge=1, description="Decoded frames awaiting the processor"
    )
    encode_queue_size: int = Field(
        default=8, ge=1, description="Processed frames awaiting the encoder"
    )
    segment_queue_size: int = Field(default=4, ge=1, description="Output segments awaiting POST")
    pass_audio: bool = True
    try_nvdec: bool = Field(
        default=False,
        description=(
            "Decode H.264/HEVC input with NVDEC, software when it is not usable (the worker "
            "sets it from hw_decode as the camera hub resolved it)"
        ),
    )
    nvdec_api: NvdecApi = Field(
        default="cuvid", description="How NVDEC is reached (the camera hub's nvdec_api)"
    )
    max_video_pixels: int = Field(
        default=MAX_VIDEO_PIXELS, ge=1, description="The largest input picture (the hub's)"
    )

    preset: str = "superfast"
    crf: int = Field(default=23, ge=0, le=51)
    bitrate: int | None = Field(default=None, gt=0, description="bits/s; None = CRF")
    gop_seconds: float = Field(default=2.0, gt=0, le=10)
    encoder_threads: int = Field(default=0, ge=0)

    heartbeat_interval_s: float = Field(default=5.0, gt=0, le=10)
    data_interval_s: float = Field(default=1.0 / 3.0, gt=0)
    data_keepalive_s: float = Field(default=25.0, gt=0)
    data_max_pending: int = Field(default=1000, ge=1)
    events_queue_size: int = Field(default=64, ge=1)
    control_max_bytes: int = Field(default=1024 * 1024, gt=0)
    channel_retry_max_s: float = Field(default=10.0, gt=0)
    stop_timeout_s: float = Field(
        default=5.0, gt=0, description="Per local shutdown step (decoder, encoder flush)"
    )
    close_timeout_s: float = Field(
        default=0.6,
        gt=0,
        description=(
            "At stop, the network part together: the last output segment, the output "
            "channel's DELETE, the last data and events. What is not done by then is "
            "abandoned (cancelled), so unreachable channels cannot hold a stop up."
        ),
    )
    input_timeout_s: float = Field(
        default=10.0,
        gt=0,
        description=(
            "No decoded input frame for this long, since the start or since the last "
            "frame: the input is stalled (input_stalled event, status and /health)"
        ),
    )

    def encoder_settings(self, fps: float | None) -> EncoderSettings:
        return EncoderSettings(
            preset=self.preset,
            crf=self.crf,
            bitrate=self.bitrate,
            gop_seconds=self.gop_seconds,
            fps=fps if fps and fps > 0 else 30.0,
            threads=self.encoder_threads,
        )


_State = Literal["new", "running", "stopping", "stopped"]


def _masked(value: Any) -> Any:
    """``value`` with credentials in any string (URLs with tokens) masked, for events."""
    if isinstance(value, str):
        return mask_text(value)
    if isinstance(value, dict):
        items = cast("dict[Any, Any]", value).items()
        return {str(k): _masked(v) for k, v in items}
    if isinstance(value, list | tuple):
        return [_masked(v) for v in cast("list[Any]", value)]
    return value


async def _finish(task: asyncio.Task[None], timeout_s: float) -> bool:
    """Wait up to ``timeout_s`` for ``task``; cancel it (and reap it) when it is late.
    True when it finished by itself (whatever its outcome)."""
    done, _ = await asyncio.wait({task}, timeout=max(0.0, timeout_s))
    if not done:
        task.cancel()
    with contextlib.suppress(asyncio.CancelledError, Exception):
        await task
    return bool(done)


class StreamSession:
    """One trickle stream through a :class:`FrameProcessor`; see the module docstring."""

    def __init__(
        self,
        request: StartRequest,
        processor: FrameProcessor,
        *,
        config: StreamSessionConfig | None = None,
        sinks: StreamSinks | None = None,
    ) -> None:
        """``sinks``: where analysed frames go besides the output (the live view)."""
        self.request = request
        self.processor = processor
        self.sinks = sinks if sinks is not None else StreamSinks((), "", "", "stream")
        self.config = config or StreamSessionConfig()
        self.stream_id = request.gateway_request_id
        self._stream_params: StreamParams = request.stream_params
        self._state: _State = "new"
        self._failure: str | None = None
        self._closed = asyncio.Event()
        self._http: aiohttp.ClientSession | None = None
        self._decoder: SegmentDecoder | None = None
        self._encoder: SegmentEncoder | None = None
        self._output: ChannelPublisher | None = None
        self._events: EventsChannel | None = None
        self._data: DataChannel | None = None
        self._control: ControlChannel | None = None
        self._ingest_task: asyncio.Task[None] | None = None
        self._process_task: asyncio.Task[None] | None = None
        self._egress_task: asyncio.Task[None] | None = None
        self._media_task: asyncio.Task[None] | None = None
        self._heartbeat_task: asyncio.Task[None] | None = None
        self._shutdown_task: asyncio.Task[None] | None = None
        self._watchdog_task: asyncio.Task[None] | None = None
        self._input_stalled = False
        self._last_input_at: float | None = None
        self.input_stalls = 0
        self._params_lock = asyncio.Lock()
        self._processed = FpsMeter()
        self._max_framerate: int | None = self._stream_params.max_framerate
        self._input_size: tuple[int, int] | None = None
        self._output_size: tuple[int, int] | None = None
        self._started_at: float | None = None
        self._processing_s = 0.0
        #: Capture (decode) → processor result, per processed frame.
        self._latency = LatencyHistogram()
        self.frames_processed = 0
        self.frames_dropped_by_processor = 0
        self.processor_errors = 0
        self.segments_in = 0
        self.segments_out = 0
        self.segments_failed = 0
        self.segments_broken_in = 0
        self.control_rejected = 0
        self._last_processor_warning = 0.0

    # ------------------------------------------------------------------ lifecycle
    async def start(self) -> None:
        """Open the channels and start the media pipeline; returns once it runs."""
        if self._state != "new":
            raise StreamSessionError(f"session {self.stream_id} was already started")
        self._state = "running"
        self._started_at = time.monotonic()
        request, config = self.request, self.config
        http = aiohttp.ClientSession()
        self._http = http
        loop = asyncio.get_running_loop()
        if request.events_url:
            self._events = EventsChannel(
                request.events_url,
                http,
                queue_size=config.events_queue_size,
                retry_max_s=config.channel_retry_max_s,
            )
            self._events.start()
            self._heartbeat_task = loop.create_task(
                self._heartbeat_loop(), name=f"heartbeat-{self.stream_id}"
            )
        if request.data_url:
            self._data = DataChannel(
                request.data_url,
                http,
                self.processor.take_data,
                interval_s=config.data_interval_s,
                keepalive_s=config.data_keepalive_s,
                max_pending=config.data_max_pending,
                retry_max_s=config.channel_retry_max_s,
            )
            self._data.start()
        if request.control_url:
            self._control = ControlChannel(
                request.control_url,
                http,
                self._on_control_message,
                max_bytes=config.control_max_bytes,
                retry_max_s=config.channel_retry_max_s,
            )
            self._control.start()
        if request.publish_url:
            self._output = ChannelPublisher(request.publish_url, _VIDEO_MIME, http)
        if request.subscribe_url:
            size = self._stream_params
            self._decoder = SegmentDecoder(
                max_buffer_bytes=config.decoder_buffer_bytes,
                frame_queue_size=config.frame_queue_size,
                pass_audio=config.pass_audio and request.publish_url is not None,
                max_fps=self._max_framerate,
                try_nvdec=config.try_nvdec,
                nvdec_api=config.nvdec_api,
                max_video_pixels=config.max_video_pixels,
                output_size=(size.width, size.height)
                if size.width is not None and size.height is not None
                else None,
                name=self.stream_id,
            )
            self._decoder.start()
            self._media_task = loop.create_task(self._media(), name=f"media-{self.stream_id}")
            self._watchdog_task = loop.create_task(
                self._input_watchdog(), name=f"input-watchdog-{self.stream_id}"
            )
        else:
            logger.warning("stream %s has no subscribe_url: no video to process", self.stream_id)
        self._emit_stream_event(
            "stream_started",
            params=_masked(self.request.params),
            urls={name: mask_url(url) for name, url in request.channel_urls().items()},
        )
        logger.info("stream %s session started", self.stream_id)

    async def stop(self) -> None:
        """End the stream (idempotent): see the module docstring."""
        await self._shutdown(None)

    async def wait_closed(self) -> None:
        """Return once the session has ended; raise the failure that ended it, if any."""
        await self._closed.wait()
        if self._failure is not None:
            raise StreamSessionError(self._failure)

    @property
    def closed(self) -> bool:
        return self._closed.is_set()

    # ------------------------------------------------------------------ params
    async def update_params(
        self, changes: dict[str, Any], requested: dict[str, Any] | None = None
    ) -> None:
        """Validated stream-level ``changes`` from the API (``max_framerate``); ``requested``
        is the whole update as the client sent it (the processor's part already applied),
        which the ``params_updated`` event reports."""
        async with self._params_lock:
            self._apply_stream_changes(changes)
        announced = requested if requested is not None else changes
        self._emit_stream_event("params_updated", params=_masked(announced))

    def _apply_stream_changes(self, changes: dict[str, Any]) -> None:
        if "max_framerate" in changes:
            value = changes["max_framerate"]
            self._max_framerate = int(value) if value is not None else None
            if self._decoder is not None:
                self._decoder.max_fps = self._max_framerate
            logger.info("stream %s: max_framerate %s", self.stream_id, self._max_framerate)

    async def _on_control_message(self, message: dict[str, Any]) -> None:
        """A control-channel params update: validated like the REST one; errors are logged.
        A change of a size fixed at start is left out (logged, and named in the event) and
        the rest applied: unlike a REST caller, the gateway gets no answer to correct."""
        message, ignored = without_fixed_changes(message, self._stream_params)
        if ignored:
            logger.warning(
                "stream %s: control message changes %s, fixed at stream start: left out",
                self.stream_id,
                ", ".join(ignored),
            )
        async with self._params_lock:
            try:
                changes, processor_params = split_params_update(message, self._stream_params)
                if processor_params:
                    await self.processor.apply_params(processor_params)
            except WorkerError as exc:
                self.control_rejected += 1
                logger.warning(
                    "stream %s: control params rejected: %s", self.stream_id, mask_text(str(exc))
                )
                return
            self._apply_stream_changes(changes)
        logger.info("stream %s: params updated from the control channel", self.stream_id)
        extra: dict[str, Any] = {"ignored": ignored} if ignored else {}
        self._emit_stream_event(
            "params_updated", params=_masked(message), source="control", **extra
        )

    # ------------------------------------------------------------------ media
    async def _media(self) -> None:
        """Run ingest and processing to the end of the input, then drain the encoder."""
        loop = asyncio.get_running_loop()
        self._ingest_task = loop.create_task(self._ingest(), name=f"ingest-{self.stream_id}")
        self._process_task = loop.create_task(self._process(), name=f"process-{self.stream_id}")
        failure: str | None = None
        ingest, process = self._ingest_task, self._process_task
        await asyncio.wait({ingest, process}, return_when=asyncio.FIRST_COMPLETED)
        if process.done() and not ingest.done():
            # The decoder ended for good (it failed) while the input runs on: nothing more
            # can be fed, so waiting for the input's next segment would hang the stream.
            ingest.cancel()
        try:
            await ingest
        except asyncio.CancelledError:
            current = asyncio.current_task()
            if current is not None and current.cancelling():
                raise  # this task is being cancelled, not only the ingest it cancelled
        except TrickleError as exc:
            failure = f"input subscription failed: {exc}"
        except Exception as exc:  # a bug: end the stream rather than hang it
            logger.exception("stream %s: ingest failed", self.stream_id)
            failure = f"ingest failed: {exc!r}"
        if failure is not None and self._decoder is not None:
            self._decoder.end_input()
        try:
            await self._process_task
        except StreamSessionError as exc:
            failure = failure or str(exc)
        except Exception as exc:
            logger.exception("stream %s: processing loop failed", self.stream_id)
            failure = failure or f"processing failed: {exc!r}"
        try:
            await self._drain_output()
        except Exception as exc:
            logger.exception("stream %s: draining the output failed", self.stream_id)
            failure = failure or f"output failed: {exc!r}"
        if failure is None and self._encoder is not None and self._encoder.error is not None:
            failure = f"encoder failed: {self._encoder.error}"
        logger.info("stream %s: input ended", self.stream_id)
        self._media_task = None  # the shutdown must not wait for (or cancel) this task
        await self._shutdown(failure)

    async def _ingest(self) -> None:
        request, decoder = self.request, self._decoder
        assert request.subscribe_url is not None and decoder is not None
        subscriber = TrickleSubscriber(
            request.subscribe_url, start_seq=self.config.start_seq, session=self._http
        )
        try:
            while True:
                segment = await subscriber.next_segment()
                if segment is None:
                    break
                if self.segments_in == 0:
                    self._emit_stream_event("receive_first_ingest_segment", seq=segment.seq)
                self.segments_in += 1
                try:
                    accepted = await decoder.feed_segment(segment.chunks())
                except TrickleError as exc:
                    self.segments_broken_in += 1
                    logger.warning("stream %s: input segment broke off: %s", self.stream_id, exc)
                    continue
                if not accepted:
                    break  # the decoder ended (stopped, or failed for good)
        finally:
            decoder.end_input()
            await subscriber.close()

    async def _process(self) -> None:
        decoder = self._decoder
        assert decoder is not None
        processor = self.processor
        while True:
            decoded = await decoder.next_frame()
            if decoded is None:
                break
            self._input_size = (decoded.width, decoded.height)
            frame: VideoFrame = decoded
            started = time.perf_counter()
            try:
                result = await processor.process_video_async(frame)
            except Exception as exc:
                self.processor_errors += 1
                self._warn_processor(exc)
                continue
            finally:
                self._processing_s += time.perf_counter() - started
            if frame.capture_time is not None:
                self._latency.observe(time.time() - frame.capture_time)
            self.frames_processed += 1
            self._processed.tick()
            analysed = processor.take_last_result()
            if self.sinks:
                self.sinks.offer(frame, analysed or ProcessResult(result), self._processed.fps)
            if result is None:
                self.frames_dropped_by_processor += 1
                continue
            if self._output is None:
                continue  # no publish_url: processed, not published
            encoder = self._encoder or self._open_encoder()
            self._output_size = (result.width, result.height)
            # Backpressure: while the encoder is behind, frames wait (and the oldest are
            # dropped) before the processor, where dropping them saves the most work.
            await encoder.frames_in.wait_for_room()
            encoder.put_frame(result)
        if decoder.error is not None:
            raise StreamSessionError(f"input decoder failed: {decoder.error}")

    async def _input_watchdog(self) -> None:
        """Report an input that never starts or stops delivering frames, and its return.

        Stalled: no decoded video frame for ``input_timeout_s`` since the start or since the
        last frame. The events channel gets ``input_stalled`` (and ``input_resumed`` when
        frames come back); :meth:`stats` shows it, and the manager shows it in status and
        ``/health``. The stream keeps running: the gateway may still send input.
        """
        timeout = self.config.input_timeout_s
        period = min(1.0, timeout / 4)
        started = time.monotonic()
        seen = 0
        while True:
            await asyncio.sleep(period)
            decoder = self._decoder
            if decoder is None:
                return
            now = time.monotonic()
            if decoder.frames_decoded != seen:
                seen = decoder.frames_decoded
                self._last_input_at = now
                if self._input_stalled:
                    self._input_stalled = False
                    logger.info("stream %s: input resumed", self.stream_id)
                    self.sinks.set_online(True)
                    self._emit_stream_event("input_resumed", frames_decoded=seen)
                continue
            last = self._last_input_at
            quiet_s = now - (last if last is not None else started)
            if not self._input_stalled and quiet_s >= timeout:
                self._input_stalled = True
                self.input_stalls += 1
                self.sinks.set_online(False)
                reason = "no_input" if last is None else "stalled"
                logger.warning(
                    "stream %s: input stalled (%s): no frame for %.1f s",
                    self.stream_id,
                    "nothing received since the start" if last is None else "frames stopped",
                    quiet_s,
                )
                self._emit_stream_event(
                    "input_stalled",
                    reason=reason,
                    seconds_without_input=round(quiet_s, 3),
                    timeout_s=timeout,
                    frames_decoded=seen,
                    segments_in=self.segments_in,
                )

    def _warn_processor(self, exc: Exception) -> None:
        now = time.monotonic()
        if now - self._last_processor_warning >= 5.0:
            self._last_processor_warning = now
            logger.warning(
                "stream %s: processor failed on a frame (%d so far), frame dropped: %r",
                self.stream_id,
                self.processor_errors,
                exc,
            )

    def _open_encoder(self) -> SegmentEncoder:
        decoder = self._decoder
        fps = decoder.info.fps if decoder is not None and decoder.info is not None else None
        size = self._stream_params
        output_size = None
        if (
            size.detect_out_resolution is False
            and size.width is not None
            and size.height is not None
        ):
            output_size = (size.width, size.height)
        audio = decoder.audio_stream if decoder is not None else None
        encoder = SegmentEncoder(
            self.config.encoder_settings(fps),
            frame_queue_size=self.config.encode_queue_size,
            segment_queue_size=self.config.segment_queue_size,
            audio_template=audio,
            output_size=output_size,
            name=self.stream_id,
        )
        encoder.start()
        if decoder is not None and audio is not None:
            decoder.set_audio_sink(encoder.put_audio)
        self._encoder = encoder
        self._egress_task = asyncio.get_running_loop().create_task(
            self._egress(encoder), name=f"egress-{self.stream_id}"
        )
        return encoder

    async def _egress(self, encoder: SegmentEncoder) -> None:
        output = self._output
        assert output is not None
        while True:
            segment = await encoder.next_segment()
            if segment is None:
                return
            if output.gone:  # the gateway deleted the output channel: nobody reads it
                self.segments_failed += 1
                continue
            try:
                writer = await output.begin()
                try:
                    async for chunk in segment.chunks():
                        await writer.write(chunk)
                except (TrickleError, aiohttp.ClientError, OSError) as exc:
                    logger.warning("stream %s: output segment failed: %s", self.stream_id, exc)
                    await writer.abort()
                published = await output.end(writer)
            except (TrickleError, aiohttp.ClientError, OSError) as exc:
                logger.warning("stream %s: output publisher failed: %s", self.stream_id, exc)
                published = False
            if published:
                if self.segments_out == 0:
                    self._emit_stream_event("send_first_processed_segment", index=segment.index)
                self.segments_out += 1
            else:
                self.segments_failed += 1

    async def _drain_output(self) -> None:
        """Finish the last output segment and wait for it to be published (bounded)."""
        encoder, timeout = self._encoder, self.config.stop_timeout_s
        if encoder is not None:
            await encoder.close(flush=True, timeout=timeout)
        task = self._egress_task
        if task is not None:
            done, _ = await asyncio.wait({task}, timeout=timeout)
            if not done:
                logger.warning(
                    "stream %s: last output segment not published in time", self.stream_id
                )
                task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task

    # ------------------------------------------------------------------ shutdown
    async def _shutdown(self, failure: str | None) -> None:
        if self._shutdown_task is None:
            if failure is not None:
                self._failure = mask_text(failure)
                logger.error("stream %s failed: %s", self.stream_id, self._failure)
            self._shutdown_task = asyncio.get_running_loop().create_task(
                self._do_shutdown(), name=f"shutdown-{self.stream_id}"
            )
        await asyncio.shield(self._shutdown_task)

    async def _do_shutdown(self) -> None:
        self._state = "stopping"
        timeout = self.config.stop_timeout_s
        loop = asyncio.get_running_loop()
        try:
            media = self._media_task
            if media is not None:
                media.cancel()
            for task in (
                self._ingest_task,
                media,
                self._process_task,
                self._watchdog_task,
                self._heartbeat_task,
            ):
                if task is not None:
                    task.cancel()
                    with contextlib.suppress(asyncio.CancelledError, Exception):
                        await task
            # Local work first, bounded per step: the decoder thread, the encoder's flush.
            if self._decoder is not None:
                await self._decoder.close(timeout)
            if self._encoder is not None:
                await self._encoder.close(flush=True, timeout=timeout)
            if self._control is not None:
                await self._control.close()
            # Then the network, within one budget: a channel that does not answer is
            # abandoned (its task cancelled), never waited for.
            budget = self.config.close_timeout_s
            deadline = loop.time() + budget
            await asyncio.gather(self._close_output(deadline), self._close_data(deadline))
            extra: dict[str, Any] = {"error": self._failure} if self._failure else {}
            # The final counts, so a gateway can tell what the stream delivered and lost.
            self._emit_stream_event("stream_stopped", stats=self.stats().final_counts(), **extra)
            if self._events is not None:
                # stream_stopped gets a quarter of the budget even when the others took it.
                left = max(deadline - loop.time(), budget / 4)
                await self._events.close(left)
        except Exception:
            logger.exception("stream %s: shutdown failed", self.stream_id)
        finally:
            if self._http is not None:
                await self._http.close()
            self._state = "stopped"
            self.sinks.end()
            self._closed.set()
            logger.info("stream %s session stopped", self.stream_id)

    async def _close_output(self, deadline: float) -> None:
        """Publish the last output segment and DELETE the output channel, by ``deadline``."""
        loop = asyncio.get_running_loop()
        egress = self._egress_task
        if egress is not None and not await _finish(egress, deadline - loop.time()):
            logger.warning("stream %s: last output segment abandoned at stop", self.stream_id)
        if self._output is not None:
            closing = loop.create_task(
                self._output.close(delete=True), name=f"output-close-{self.stream_id}"
            )
            if not await _finish(closing, deadline - loop.time()):
                logger.warning(
                    "stream %s: output channel DELETE abandoned (no answer) at stop",
                    self.stream_id,
                )

    async def _close_data(self, deadline: float) -> None:
        if self._data is not None:
            await self._data.close(max(0.0, deadline - asyncio.get_running_loop().time()))

    # ------------------------------------------------------------------ events
    def _emit_stream_event(self, kind: str, **fields: Any) -> None:
        if self._events is None:
            return
        event: dict[str, Any] = {
            "type": kind,
            "timestamp": now_ms(),
            "request_id": self.stream_id,
            **fields,
        }
        self._events.emit(event, STREAM_EVENT_TYPE)

    def heartbeat(self) -> dict[str, Any]:
        """The heartbeat event (``stream_heartbeat``), as pytrickle shapes it."""
        width, height = self._input_size or (0, 0)
        stats = self.stats()
        return {
            "type": "heartbeat",
            "timestamp": now_ms(),
            "request_id": self.stream_id,
            "urls": {name: mask_url(url) for name, url in self.request.channel_urls().items()},
            "dimensions": {"width": width, "height": height},
            "fps": {
                "ingress_video_fps": stats.input_fps,
                "ingress_audio_fps": stats.input_audio_fps,
                "egress_video_fps": stats.output_fps,
                "egress_audio_fps": stats.output_audio_fps,
            },
        }

    async def _heartbeat_loop(self) -> None:
        interval = self.config.heartbeat_interval_s
        while True:
            events = self._events
            if events is not None:
                try:
                    events.emit(self.heartbeat(), HEARTBEAT_EVENT_TYPE)
                except Exception:  # a heartbeat must never take the stream down
                    logger.exception("stream %s: heartbeat failed", self.stream_id)
            await asyncio.sleep(interval)

    # ------------------------------------------------------------------ stats
    def stats(self) -> StreamStats:
        """Cheap counters for ``/stream/status``, the heartbeat and /metrics."""
        decoder, encoder = self._decoder, self._encoder
        processed = self.frames_processed

        def size(value: tuple[int, int] | None) -> Dimensions | None:
            return None if value is None else Dimensions(width=value[0], height=value[1])

        return StreamStats(
            kind="trickle",
            state=self._state,
            error=self._failure,
            uptime_s=round(time.monotonic() - self._started_at, 3)
            if self._started_at is not None
            else 0.0,
            input_fps=round(decoder.fps_in.fps, 2) if decoder else 0.0,
            processing_fps=round(self._processed.fps, 2),
            output_fps=round(encoder.fps_out.fps, 2) if encoder else 0.0,
            input_audio_fps=round(decoder.fps_audio_in.fps, 2) if decoder else 0.0,
            output_audio_fps=round(encoder.fps_audio_out.fps, 2) if encoder else 0.0,
            input_dimensions=size(self._input_size),
            output_dimensions=size(self._output_size),
            max_framerate=self._max_framerate,
            frames_decoded=decoder.frames_decoded if decoder else 0,
            try_nvdec=self.config.try_nvdec,
            video_decoder=decoder.video_decoder if decoder else None,
            hw_decoder=decoder.hw_decoder if decoder else False,
            nvdec_fallback=decoder.nvdec_fallback if decoder else None,
            frames_skipped_by_rate=decoder.frames_skipped if decoder else 0,
            frames_dropped_before_processing=decoder.frames.dropped if decoder else 0,
            decode_queue_depth=len(decoder.frames) if decoder else 0,
            encode_queue_depth=len(encoder.frames_in) if encoder else 0,
            segment_queue_depth=len(encoder.segments) if encoder else 0,
            frames_processed=processed,
            frames_dropped_by_processor=self.frames_dropped_by_processor,
            processor_errors=self.processor_errors,
            processing_ms_avg=round(1000 * self._processing_s / processed, 3) if processed else 0.0,
            frames_dropped_before_encoding=encoder.frames_dropped if encoder else 0,
            frames_encoded=encoder.frames_encoded if encoder else 0,
            segments_in=self.segments_in,
            segments_in_broken=self.segments_broken_in,
            segments_in_dropped=decoder.segments_dropped if decoder else 0,
            segments_out=self.segments_out,
            segments_out_failed=self.segments_failed,
            segments_out_dropped=encoder.segments.dropped if encoder else 0,
            events_sent=self._events.sent if self._events else 0,
            events_dropped=self._events.dropped if self._events else 0,
            data_records_sent=self._data.records_sent if self._data else 0,
            data_records_dropped=self._data.records_dropped if self._data else 0,
            control_messages=self._control.messages if self._control else 0,
            control_errors=self._control.errors if self._control else 0,
            control_rejected=self.control_rejected,
            input_stalled=self._input_stalled,
            input_stalls=self.input_stalls,
            seconds_since_input=round(time.monotonic() - self._last_input_at, 3)
            if self._last_input_at is not None
            else None,
            latency=self._latency.snapshot(),
        )
