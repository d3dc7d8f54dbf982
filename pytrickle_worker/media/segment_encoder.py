"""The segment encoder: RGB frames in, MPEG-TS segments of H.264 out.

:class:`SegmentEncoder` runs H.264 (libx264, no B-frames, ``tune=zerolatency``,
``forced-idr``, an IDR every ``gop_seconds`` of pts, 90 kHz time base) muxed into MPEG-TS,
one standalone TS per GOP: every segment is its own container (PAT/PMT first, then the IDR),
as trickle expects. A segment is announced as soon as its IDR is encoded and its bytes
stream out frame by frame (:meth:`EncodedSegment.chunks`), so a publisher can POST it while
it is written. :func:`encode_segments` does the same synchronously, for tools and tests.

Blocking PyAV work happens on the encoder thread only; the event loop only moves frames and
segments between bounded queues.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from fractions import Fraction
from typing import Protocol, cast

import av
import av.container
import numpy as np
from av.audio.stream import AudioStream
from av.error import FFmpegError
from av.packet import Packet
from av.stream import Stream
from av.video.codeccontext import VideoCodecContext
from av.video.frame import PictureType
from av.video.stream import VideoStream

from pytrickle_worker.core.fps import FpsMeter
from pytrickle_worker.core.queues import DropOldestQueue
from pytrickle_worker.core.threads import name_os_thread
from pytrickle_worker.core.wakeup import call_on_loop
from pytrickle_worker.media.frames import RgbArray, wrap_rgb_frame
from pytrickle_worker.media.mpegts import (
    RESTART_WINDOW_S,
    TS_CLOCK,
    TS_TIME_BASE,
    EncodedSegment,
    NullSink,
)

__all__ = ["EncoderSettings", "RgbFrame", "SegmentEncoder", "encode_segments"]

logger = logging.getLogger(__name__)


class RgbFrame(Protocol):
    """What the encoder takes: ``processing.VideoFrame`` and :class:`DecodedVideoFrame` fit."""

    @property
    def rgb(self) -> RgbArray: ...

    @property
    def pts(self) -> int | None: ...

    @property
    def time_base(self) -> Fraction: ...


@dataclass(frozen=True, slots=True)
class EncoderSettings:
    """H.264 settings. ``bitrate`` (bits/s) switches from CRF to ABR with a VBV of one
    second; ``fps`` is the nominal rate for rate control and for frames without pts."""

    preset: str = "superfast"
    tune: str = "zerolatency"
    crf: int = 23
    bitrate: int | None = None
    gop_seconds: float = 2.0
    fps: float = 30.0
    threads: int = 0
    codec: str = "libx264"

    def codec_options(self) -> dict[str, str]:
        options = {
            "preset": self.preset,
            "tune": self.tune,
            "forced-idr": "1",
            # Only our forced IDRs start GOPs: no scene-cut or keyint I-frames.
            "x264-params": "scenecut=0:keyint=infinite:bframes=0",
        }
        if self.bitrate is None:
            options["crf"] = str(self.crf)
        return options


class _EncoderCore:
    """Single-threaded encoding and segmenting; :class:`SegmentEncoder` runs it on a thread."""

    def __init__(
        self,
        settings: EncoderSettings,
        on_segment: Callable[[EncodedSegment], None],
        audio_template: AudioStream | None,
        audio_backlog: int,
        output_size: tuple[int, int] | None = None,
        *,
        announce: bool = True,
    ) -> None:
        self.settings = settings
        self.output_size = output_size
        # The first open is logged at INFO (the encoder choice) unless the caller already
        # announced it; reopens (a new size) and a caller's later encoders log at DEBUG.
        self._announce = announce
        self.fps_audio_out = FpsMeter()
        self._on_segment = on_segment
        self._gop_ticks = round(settings.gop_seconds * TS_CLOCK)
        self._frame_ticks = max(1, round(TS_CLOCK / settings.fps))
        self._ctx: VideoCodecContext | None = None
        self.width = 0
        self.height = 0
        self._last_pts: int | None = None
        self._pts_offset = 0
        self._last_idr: int | None = None
        self._segment: EncodedSegment | None = None
        self._container: av.container.OutputContainer | None = None
        self._video_out: Stream | None = None
        self._audio_out: Stream | None = None
        self._segments = 0
        self.frames_encoded = 0
        # Audio: one template stream (a copy of the input's parameters) outlives the input.
        self._template_container: av.container.OutputContainer | None = None
        self._audio_template: Stream | None = None
        if audio_template is not None:
            self._template_container = av.open(cast(object, NullSink()), mode="w", format="mpegts")
            self._audio_template = self._template_container.add_stream_from_template(audio_template)
        self._audio_lock = threading.Lock()
        self._audio: deque[Packet[AudioStream]] = deque()
        self._audio_backlog = audio_backlog
        self._last_audio_dts: int | None = None
        self.audio_dropped = 0
        self.audio_muxed = 0

    @property
    def has_audio(self) -> bool:
        return self._audio_template is not None

    # ------------------------------------------------------------------ audio
    def put_audio(self, packet: Packet[AudioStream]) -> None:
        """Any thread: queue an input audio packet for remuxing (oldest dropped when full)."""
        if self._audio_template is None:
            return
        with self._audio_lock:
            if len(self._audio) >= self._audio_backlog:
                self._audio.popleft()
                self.audio_dropped += 1
            self._audio.append(packet)

    @staticmethod
    def _ticks(value: int | None, time_base: Fraction | None) -> int | None:
        if value is None:
            return None
        return round(value * (time_base or TS_TIME_BASE) * TS_CLOCK)

    def _mux_audio_until(self, pts: int | None) -> None:
        """Mux queued audio up to ``pts`` (90 kHz, output clock) into the open segment."""
        if self._audio_template is None:
            return
        while True:
            with self._audio_lock:
                if not self._audio:
                    return
                packet = self._audio[0]
                ticks = self._ticks(
                    packet.dts if packet.dts is not None else packet.pts, packet.time_base
                )
                if ticks is not None:
                    ticks += self._pts_offset
                if pts is not None and ticks is not None and ticks > pts:
                    return
                self._audio.popleft()
            self._mux_audio(packet, ticks)

    def _mux_audio(self, packet: Packet[AudioStream], ticks: int | None) -> None:
        container, stream, segment = self._container, self._audio_out, self._segment
        if container is None or stream is None or segment is None or ticks is None:
            self.audio_dropped += 1
            return
        if ticks < segment.start_pts - self._gop_ticks or (
            self._last_audio_dts is not None and ticks <= self._last_audio_dts
        ):
            self.audio_dropped += 1  # older than anything we still write, or out of order
            return
        offset = self._pts_offset
        if offset:
            scale = (packet.time_base or TS_TIME_BASE) * TS_CLOCK
            shift = round(offset / scale)
            if packet.pts is not None:
                packet.pts += shift
            if packet.dts is not None:
                packet.dts += shift
        packet.stream = cast(AudioStream, stream)
        try:
            container.mux(packet)
        except FFmpegError as exc:
            self.audio_dropped += 1
            logger.debug("audio packet dropped by the muxer: %s", exc)
            return
        self._last_audio_dts = ticks
        self.audio_muxed += 1
        self.fps_audio_out.tick()

    # ------------------------------------------------------------------ video
    def encode(self, frame: RgbFrame) -> None:
        rgb = frame.rgb
        if rgb.ndim != 3 or rgb.shape[2] != 3:
            raise ValueError(f"expected an H x W x 3 RGB frame, got shape {rgb.shape}")
        if rgb.dtype != np.uint8:
            rgb = np.clip(rgb, 0, 255).astype(np.uint8)
        height, width = int(rgb.shape[0]), int(rgb.shape[1])
        ctx = self._ctx
        if ctx is None:
            ctx = self._open(*(self.output_size or (width, height)))
        # A view of the array, no copy: reformat reads it once into the encoder's yuv420p.
        video = wrap_rgb_frame(rgb)
        if (width, height) == (self.width, self.height):
            video = video.reformat(format="yuv420p")
        else:
            video = video.reformat(width=self.width, height=self.height, format="yuv420p")
        pts = self._output_pts(frame)
        video.pts = pts
        video.time_base = TS_TIME_BASE
        if self._last_idr is None or pts - self._last_idr >= self._gop_ticks:
            video.pict_type = PictureType.I
            self._last_idr = pts
        for packet in cast("list[Packet[VideoStream]]", ctx.encode(video)):
            self._mux_video(packet)
        self.frames_encoded += 1

    def _output_pts(self, frame: RgbFrame) -> int:
        """The frame's pts on the 90 kHz clock, strictly increasing (a jump back, e.g. a
        restarted publisher, shifts everything after it to continue one frame later)."""
        raw = self._ticks(frame.pts, frame.time_base)
        last = self._last_pts
        if raw is None:
            pts = 0 if last is None else last + self._frame_ticks
        else:
            pts = raw + self._pts_offset
            if last is not None and pts <= last:
                if last - pts > self._frame_ticks:
                    logger.info(
                        "input pts jumped back by %.3f s; continuing the output clock",
                        (last - pts) / TS_CLOCK,
                    )
                    self._pts_offset += last + self._frame_ticks - pts
                    pts = last + self._frame_ticks
                    with self._audio_lock:
                        self.audio_dropped += len(self._audio)
                        self._audio.clear()  # from before the jump: it would never be muxed
                else:
                    pts = last + 1
        self._last_pts = pts
        return pts

    def _open(self, width: int, height: int) -> VideoCodecContext:
        settings = self.settings
        width, height = max(2, width & ~1), max(2, height & ~1)  # yuv420p needs even sizes
        ctx = av.CodecContext.create(settings.codec, "w")
        if not isinstance(ctx, VideoCodecContext):
            raise ValueError(f"{settings.codec} is not a video encoder")
        ctx.width = width
        ctx.height = height
        ctx.pix_fmt = "yuv420p"
        ctx.time_base = TS_TIME_BASE
        ctx.framerate = Fraction(settings.fps).limit_denominator(1001)
        ctx.max_b_frames = 0
        ctx.gop_size = max(1, round(settings.gop_seconds * settings.fps)) * 1000
        if settings.threads:
            ctx.thread_count = settings.threads
        if settings.bitrate is not None:
            ctx.bit_rate = settings.bitrate
            ctx.options = {
                **settings.codec_options(),
                "maxrate": str(settings.bitrate),
                "bufsize": str(settings.bitrate),
            }
        else:
            ctx.options = settings.codec_options()
        ctx.open()
        self._ctx = ctx
        self.width, self.height = width, height
        self._last_idr = None
        logger.log(
            logging.INFO if self._announce else logging.DEBUG,
            "encoder open: %s %dx%d, preset %s, IDR every %.2f s%s",
            settings.codec,
            width,
            height,
            settings.preset,
            settings.gop_seconds,
            ", audio remuxed" if self.has_audio else "",
        )
        self._announce = False
        return ctx

    def _mux_video(self, packet: Packet[VideoStream]) -> None:
        pts = packet.pts
        if packet.is_keyframe:
            if self._segment is not None:
                self._mux_audio_until(None if pts is None else pts - 1)
                self._finish_segment()
            self._open_segment(pts if pts is not None else 0)
        if self._segment is None or self._container is None or self._video_out is None:
            return  # no IDR yet: nothing can start a segment with this packet
        self._mux_audio_until(pts)
        packet.stream = cast(VideoStream, self._video_out)
        self._container.mux(packet)
        self._segment.frames += 1

    def _open_segment(self, start_pts: int) -> None:
        self._segments += 1
        segment = EncodedSegment(self._segments, start_pts)
        container = av.open(
            cast(object, segment),
            mode="w",
            format="mpegts",
            container_options={"flush_packets": "1", "max_interleave_delta": "1"},
        )
        video = container.add_mux_stream(
            "h264",
            rate=Fraction(self.settings.fps).limit_denominator(1001),
            width=self.width,
            height=self.height,
        )
        video.time_base = TS_TIME_BASE
        audio = (
            container.add_stream_from_template(self._audio_template)
            if self._audio_template is not None
            else None
        )
        self._segment, self._container = segment, container
        self._video_out, self._audio_out = video, audio
        self._on_segment(segment)

    def _finish_segment(self) -> None:
        segment, container = self._segment, self._container
        self._segment = self._container = self._video_out = self._audio_out = None
        if container is not None:
            try:
                container.close()
            except FFmpegError as exc:
                logger.warning("closing output segment failed: %s", exc)
        if segment is not None:
            segment.finish()

    def flush(self) -> None:
        """Drain the encoder and finish the open segment (the core can encode again after)."""
        ctx = self._ctx
        if ctx is not None:
            for packet in cast("list[Packet[VideoStream]]", ctx.encode(None)):
                self._mux_video(packet)
        self._mux_audio_until(self._last_pts)
        self._finish_segment()
        self._ctx = None

    def abort(self) -> None:
        """Drop the encoder after an error; the next frame opens a new one (and segment)."""
        self._ctx = None
        self._finish_segment()

    def close(self) -> None:
        self._finish_segment()
        self._ctx = None
        if self._template_container is not None:
            with contextlib.suppress(FFmpegError):
                self._template_container.close()
            self._template_container = None


class SegmentEncoder:
    """Encodes RGB frames into one standalone MPEG-TS segment per GOP, on its own thread.

    :meth:`put_frame` (any thread, never blocks) queues a frame into a drop-oldest queue of
    ``frame_queue_size``. Each new segment is announced when its IDR is encoded: to
    ``on_segment`` (called on the encoder thread) or, by default, into :attr:`segments`, a
    drop-oldest queue of ``segment_queue_size`` for a consumer on the event loop. The output
    size is ``output_size``, else the first frame's (rounded down to even); frames of
    another size are scaled to it. pts are kept (converted to 90 kHz), forced strictly increasing.

    Audio: give the input's audio stream as ``audio_template`` and feed its packets with
    :meth:`put_audio` (e.g. as the decoder's audio sink); they are remuxed, unchanged, into
    the segments along with the video frames of the same time (audio without video output
    waits, up to ``audio_backlog`` packets).

    An encoding error finishes the current segment and reopens the encoder on the next frame
    (so the next segment again starts with an IDR), at most ``max_restarts`` times in 2
    minutes; after that the encoder ends with :attr:`error` set.
    """

    def __init__(
        self,
        settings: EncoderSettings | None = None,
        *,
        frame_queue_size: int = 8,
        segment_queue_size: int = 4,
        audio_template: AudioStream | None = None,
        audio_backlog: int = 512,
        output_size: tuple[int, int] | None = None,
        on_segment: Callable[[EncodedSegment], None] | None = None,
        max_restarts: int = 3,
        name: str = "trickle",
    ) -> None:
        self.settings = settings or EncoderSettings()
        self.name = name
        self.frames_in: DropOldestQueue[RgbFrame] = DropOldestQueue(frame_queue_size)
        self.segments: DropOldestQueue[EncodedSegment] = DropOldestQueue(segment_queue_size)
        self.fps_out = FpsMeter()
        self.max_restarts = max_restarts
        self.error: str | None = None
        self.segments_produced = 0
        self._on_segment = on_segment
        self._core = _EncoderCore(
            self.settings, self._segment_started, audio_template, audio_backlog, output_size
        )
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._ended = asyncio.Event()
        self._flush_on_close = True

    @property
    def width(self) -> int:
        return self._core.width

    @property
    def height(self) -> int:
        return self._core.height

    @property
    def frames_encoded(self) -> int:
        return self._core.frames_encoded

    @property
    def frames_dropped(self) -> int:
        return self.frames_in.dropped

    @property
    def audio_muxed(self) -> int:
        return self._core.audio_muxed

    @property
    def fps_audio_out(self) -> FpsMeter:
        return self._core.fps_audio_out

    @property
    def ended(self) -> bool:
        return self._ended.is_set()

    def start(self) -> None:
        """Start the encoder thread (call on the event loop that consumes the segments)."""
        if self._thread is not None:
            return
        self._loop = asyncio.get_running_loop()
        self._thread = threading.Thread(target=self._run, name=f"encode-{self.name}", daemon=True)
        self._thread.start()

    def put_frame(self, frame: RgbFrame) -> bool:
        """Queue a frame; False when the encoder no longer takes frames."""
        if self.frames_in.closed:
            return False
        self.frames_in.put(frame)
        return True

    def put_audio(self, packet: Packet[AudioStream]) -> None:
        """Queue an input audio packet for remuxing (any thread, never blocks)."""
        self._core.put_audio(packet)

    async def next_segment(self) -> EncodedSegment | None:
        """The next segment (still being written, maybe); None once the encoder has ended."""
        return await self.segments.get()

    async def close(self, *, flush: bool = True, timeout: float = 10.0) -> None:  # noqa: ASYNC109
        """Stop taking frames; with ``flush`` encode the queued ones and finish the last
        segment, else drop them. Waits up to ``timeout`` for the thread."""
        self._flush_on_close = flush
        if not flush:
            self.frames_in.clear()
        self.frames_in.close()
        if self._thread is None:
            self._core.close()
            self.segments.close()
            self._ended.set()
            return
        try:
            async with asyncio.timeout(timeout):
                await self._ended.wait()
        except TimeoutError:
            logger.warning("%s: encoder thread did not stop within %.1f s", self.name, timeout)

    # ------------------------------------------------------------------ thread
    def _segment_started(self, segment: EncodedSegment) -> None:
        self.segments_produced += 1
        if self._on_segment is not None:
            self._on_segment(segment)
        else:
            self.segments.put(segment)

    def _run(self) -> None:
        name_os_thread("ptw-seg-encode")
        failures: deque[float] = deque()
        core = self._core
        try:
            while True:
                frame = self.frames_in.get_blocking()
                if frame is None:
                    break
                try:
                    core.encode(frame)
                except (FFmpegError, ValueError) as exc:
                    now = time.monotonic()
                    while failures and now - failures[0] > RESTART_WINDOW_S:
                        failures.popleft()
                    failures.append(now)
                    core.abort()
                    if len(failures) > self.max_restarts:
                        self.error = f"encoder failed {len(failures)} times: {exc}"
                        logger.error("%s: %s; giving up", self.name, self.error)
                        break
                    logger.warning("%s: encoding failed (%s); reopening", self.name, exc)
                    continue
                self.fps_out.tick()
            if self._flush_on_close and self.error is None:
                try:
                    core.flush()
                except FFmpegError as exc:
                    logger.warning("%s: flushing the encoder failed: %s", self.name, exc)
        except Exception as exc:
            logger.exception("%s: encoder thread failed", self.name)
            self.error = f"{type(exc).__name__}: {exc}"
        finally:
            self.frames_in.close()
            try:
                core.close()
            except Exception:
                logger.exception("%s: closing the encoder failed", self.name)
            self.segments.close()
            if self._loop is not None:
                call_on_loop(self._loop, self._ended.set)


def encode_segments(
    frames: Iterable[RgbFrame],
    settings: EncoderSettings | None = None,
    *,
    announce: bool = True,
) -> list[bytes]:
    """Encode ``frames`` synchronously (on this thread) into complete MPEG-TS segments.

    For tests, tools and benchmarks; a live stream uses :class:`SegmentEncoder`. A caller
    that encodes piece by piece passes ``announce=False`` after its first call, so the
    ``encoder open`` line is logged at INFO once and at DEBUG afterwards.
    """
    segments: list[EncodedSegment] = []
    core = _EncoderCore(settings or EncoderSettings(), segments.append, None, 1, announce=announce)
    try:
        for frame in frames:
            core.encode(frame)
        core.flush()
    finally:
        core.close()
    return [segment.data() for segment in segments]
