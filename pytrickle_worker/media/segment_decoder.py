"""The segment decoder: consecutive MPEG-TS segments in, RGB frames out.

:class:`SegmentDecoder` is ONE long-lived PyAV demuxer/decoder for a whole stream.
Consecutive MPEG-TS segments are fed in from the event loop
(:meth:`~SegmentDecoder.feed_segment`) into a bounded byte buffer that a decoder thread reads
as one continuous byte stream (``av.open(buffer, format="mpegts")``), so there is no
re-probing per segment and the decoder keeps its references across segment boundaries. Each
decoded frame is converted to RGB once, on the decoder thread, and offered to a bounded
drop-oldest queue; audio packets are handed, undecoded, to an audio sink (the encoder, which
remuxes them).

Blocking PyAV work happens on the decoder thread only; the event loop only moves bytes and
frames between bounded queues.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import deque
from collections.abc import AsyncIterable, Callable, Iterable
from dataclasses import dataclass
from typing import cast

import av
import numpy as np
from av.audio.stream import AudioStream
from av.error import FFmpegError, InvalidDataError
from av.packet import Packet
from av.stream import Stream
from av.video.stream import VideoStream

from pytrickle_worker.core.fps import FpsMeter
from pytrickle_worker.core.frame import VideoFrame
from pytrickle_worker.core.queues import DropOldestQueue
from pytrickle_worker.core.rate import RateSampler
from pytrickle_worker.core.threads import name_os_thread
from pytrickle_worker.core.wakeup import call_on_loop
from pytrickle_worker.media.frames import RgbArray
from pytrickle_worker.media.mpegts import (
    READ_BUFFER_BYTES,
    RESTART_WINDOW_S,
    TS_TIME_BASE,
    SegmentInputBuffer,
    detached_audio_template,
)
from pytrickle_worker.media.nvdec import (
    MAX_VIDEO_PIXELS,
    NvdecApi,
    VideoDecoder,
    VideoTooLargeError,
    pixel_limit_options,
)

__all__ = ["DecodedVideoFrame", "SegmentDecoder", "VideoInfo"]

logger = logging.getLogger(__name__)

#: Demuxer options: probe at most ~1 s / 2 MB before the first frame comes out.
_OPEN_OPTIONS = {"analyzeduration": "1000000", "probesize": "2000000"}
#: At most one warning per this many seconds for corrupt packets.
_WARN_INTERVAL_S = 5.0
#: How often a decoder waiting out a burst re-checks whether it has fallen behind.
_BURST_POLL_S = 0.02


@dataclass
class DecodedVideoFrame(VideoFrame):
    """A :class:`VideoFrame` as the decoder delivers it (``rgb`` writable, owned by the
    receiver; ``pts`` in ``time_base`` units, 1/90000 for MPEG-TS; ``capture_time`` the
    wall clock at conversion), with ``index``, the frames the decoder delivered (1-based)."""

    index: int


@dataclass(frozen=True, slots=True)
class VideoInfo:
    """What the demuxer found in the input."""

    width: int
    height: int
    fps: float | None
    codec: str
    audio_codec: str | None


class _RateLimitedWarning:
    def __init__(self) -> None:
        self._last = -_WARN_INTERVAL_S
        self.suppressed = 0

    def warn(self, message: str, *args: object) -> None:
        now = time.monotonic()
        if now - self._last < _WARN_INTERVAL_S:
            self.suppressed += 1
            return
        self._last = now
        if self.suppressed:
            message += " (%d similar messages suppressed)"
            args = (*args, self.suppressed)
            self.suppressed = 0
        logger.warning(message, *args)


class SegmentDecoder:
    """Decodes a stream of consecutive MPEG-TS segments with one long-lived PyAV demuxer.

    Usage (on the event loop)::

        decoder = SegmentDecoder()
        decoder.start()
        await decoder.feed_segment(segment.chunks())   # per incoming segment
        frame = await decoder.next_frame()             # DecodedVideoFrame, None at the end
        decoder.end_input()                            # drain and finish, or
        await decoder.close()                          # stop at once

    Decoded frames go to :attr:`frames`, a drop-oldest queue of ``frame_queue_size``: a slow
    consumer loses the oldest frames, never latency. A burst at the live edge (a whole
    segment delivered at once) is not a slow consumer: then the decoder waits for room (up to
    ``burst_wait_s`` per frame) until a newer segment starts to arrive. With ``frame_sink``
    set, every frame is handed to it undecoded-to-RGB on the decoder thread instead (for
    readers that keep only a latest-frame slot, like the camera hub's). :attr:`max_fps`
    (changeable at any time) skips frames closer than ``1/max_fps`` of pts to the previous
    one, before RGB conversion.

    Audio packets (first audio stream, when ``pass_audio``) go to the sink given to
    :meth:`set_audio_sink`; until one is set the latest ``audio_backlog`` are kept.
    A demuxer failure (garbage input) restarts the demuxer on the remaining bytes, at most
    ``max_restarts`` times per 2 minutes; then the decoder ends with :attr:`error` set.
    """

    def __init__(
        self,
        *,
        max_buffer_bytes: int = 16 * 1024 * 1024,
        frame_queue_size: int = 8,
        pass_audio: bool = True,
        audio_backlog: int = 256,
        max_fps: float | None = None,
        try_nvdec: bool = False,
        nvdec_api: NvdecApi = "cuvid",
        decoder_threads: int = 0,
        max_video_pixels: int = MAX_VIDEO_PIXELS,
        max_restarts: int = 3,
        output_size: tuple[int, int] | None = None,
        frame_sink: Callable[[av.VideoFrame], None] | None = None,
        burst_wait_s: float = 5.0,
        name: str = "trickle",
    ) -> None:
        if output_size is not None and (output_size[0] < 1 or output_size[1] < 1):
            raise ValueError(f"output_size must be positive, got {output_size}")
        self.name = name
        self.output_size = output_size
        self.frames: DropOldestQueue[DecodedVideoFrame] = DropOldestQueue(frame_queue_size)
        self._sampler = RateSampler(max_fps)
        self.pass_audio = pass_audio
        self.max_restarts = max_restarts
        self.burst_wait_s = burst_wait_s
        self.info: VideoInfo | None = None
        #: The input's audio parameters (a remux template for the encoder), once probed;
        #: detached from the input container, so it outlives it.
        self.audio_stream: AudioStream | None = None
        self.error: str | None = None
        self.fps_in = FpsMeter()
        self.fps_audio_in = FpsMeter()
        self.frames_decoded = 0
        self.frames_skipped = 0
        self.decode_errors = 0
        self.audio_packets = 0
        self.restarts = 0
        #: Why NVDEC was given up for software decoding (it is not tried again), if it was.
        self.nvdec_fallback: str | None = None
        #: The video decoder in use (``h264_cuvid``, ``h264``, ...), once the input is open.
        self.video_decoder: str | None = None
        self.hw_decoder = False
        self._input = SegmentInputBuffer(max_buffer_bytes)
        self._try_nvdec = try_nvdec
        self._nvdec_api: NvdecApi = nvdec_api
        self._threads = decoder_threads
        self._max_pixels = max_video_pixels
        self._frame_sink = frame_sink
        self._audio_lock = threading.Lock()
        self._audio_sink: Callable[[Packet[AudioStream]], None] | None = None
        self._audio_backlog: deque[Packet[AudioStream]] = deque(maxlen=audio_backlog)
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._ended = asyncio.Event()
        self._delivered = 0
        self._corrupt = _RateLimitedWarning()

    @property
    def max_fps(self) -> float | None:
        return self._sampler.fps

    @max_fps.setter
    def max_fps(self, value: float | None) -> None:
        self._sampler.fps = value

    # ------------------------------------------------------------------ control
    def start(self) -> None:
        """Start the decoder thread (call on the event loop that feeds it)."""
        if self._thread is not None:
            return
        self._loop = asyncio.get_running_loop()
        self._thread = threading.Thread(target=self._run, name=f"decode-{self.name}", daemon=True)
        self._thread.start()

    @property
    def ended(self) -> bool:
        """The decoder thread has finished (end of input, close, or a fatal error)."""
        return self._ended.is_set()

    @property
    def segments_dropped(self) -> int:
        return self._input.segments_dropped

    @property
    def bytes_in(self) -> int:
        return self._input.bytes_in

    def begin_segment(self) -> None:
        """The bytes fed next start a new segment (the unit the input drops when full)."""
        self._input.begin_segment()

    async def feed(self, data: bytes) -> bool:
        """Append bytes of the current segment; waits while the input buffer is full and no
        queued segment can be dropped. False once the input has ended or the decoder closed."""
        return await self._input.write(data)

    async def feed_segment(self, chunks: AsyncIterable[bytes] | Iterable[bytes]) -> bool:
        """Feed one whole segment; False once the decoder no longer takes input."""
        self.begin_segment()
        if isinstance(chunks, AsyncIterable):
            async for chunk in chunks:
                if not await self.feed(chunk):
                    return False
        else:
            for chunk in chunks:
                if not await self.feed(chunk):
                    return False
        return True

    def end_input(self) -> None:
        """No more segments: decode what is buffered, flush, then end."""
        self._input.finish()

    async def next_frame(self) -> DecodedVideoFrame | None:
        """The next decoded frame; None once the decoder has ended and the queue is empty."""
        return await self.frames.get()

    def set_audio_sink(self, sink: Callable[[Packet[AudioStream]], None] | None) -> None:
        """Where audio packets go (called on the decoder thread; must not block).

        The packets kept while no sink was set are handed over first.
        """
        with self._audio_lock:
            self._audio_sink = sink
            backlog = list(self._audio_backlog) if sink is not None else []
            self._audio_backlog.clear()
        if sink is not None:
            for packet in backlog:
                sink(packet)

    async def wait_ended(self, timeout: float | None = None) -> bool:  # noqa: ASYNC109
        try:
            async with asyncio.timeout(timeout):
                await self._ended.wait()
        except TimeoutError:
            return False
        return True

    async def close(self, timeout: float = 5.0) -> None:  # noqa: ASYNC109
        """Stop at once: discard buffered input and wait (up to ``timeout``) for the thread."""
        self._input.close()
        self.frames.close()
        if self._thread is None:
            self._ended.set()
            return
        if not await self.wait_ended(timeout):
            logger.warning("%s: decoder thread did not stop within %.1f s", self.name, timeout)

    # ------------------------------------------------------------------ thread
    def _run(self) -> None:
        name_os_thread("ptw-seg-decode")
        try:
            self._run_containers()
        except Exception as exc:  # a bug, not bad input: never leave the consumer hanging
            logger.exception("%s: decoder thread failed", self.name)
            self.error = f"{type(exc).__name__}: {exc}"
        finally:
            self.frames.close()
            self._input.close()
            if self._loop is not None:
                call_on_loop(self._loop, self._ended.set)

    def _run_containers(self) -> None:
        failures: deque[float] = deque()
        while True:
            try:
                self._decode_container()
                return
            except VideoTooLargeError as exc:  # the input's own size: reopening cannot help
                self.error = str(exc)
                logger.error("%s: %s", self.name, self.error)
                return
            except (FFmpegError, OSError, _NoVideoError) as exc:
                if self._input.exhausted:
                    if self.frames_decoded == 0 and self.bytes_in and not self._input.closed:
                        # The input ended, and nothing of it was video we could decode.
                        self.error = f"no video decoded from {self.bytes_in} input bytes: {exc}"
                        logger.error("%s: %s", self.name, self.error)
                    return
                now = time.monotonic()
                while failures and now - failures[0] > RESTART_WINDOW_S:
                    failures.popleft()
                failures.append(now)
                if len(failures) > self.max_restarts:
                    self.error = f"decoder failed {len(failures)} times: {exc}"
                    logger.error("%s: %s; giving up", self.name, self.error)
                    return
                self.restarts += 1
                logger.warning(
                    "%s: demuxer failed (%s); reopening on the remaining input (%d/%d)",
                    self.name,
                    exc,
                    len(failures),
                    self.max_restarts,
                )

    def _decode_container(self) -> None:
        container = av.open(
            cast(object, self._input),  # PyAV reads any object with read()
            mode="r",
            format="mpegts",
            options={**_OPEN_OPTIONS, **pixel_limit_options(self._max_pixels)},
            buffer_size=READ_BUFFER_BYTES,
        )
        with container:
            if not container.streams.video:
                raise _NoVideoError("the input has no video stream")
            video = container.streams.video[0]
            audio = container.streams.audio[0] if container.streams.audio else None
            if not self.pass_audio:
                audio = None
            decoder = VideoDecoder(
                video,
                try_nvdec=self._try_nvdec and self.nvdec_fallback is None,
                threads=self._threads,
                on_fallback=self._on_nvdec_fallback,
                api=self._nvdec_api,
                max_pixels=self._max_pixels,
            )
            self.video_decoder, self.hw_decoder = decoder.name, decoder.hardware
            rate = video.average_rate or video.guessed_rate
            self.info = VideoInfo(
                width=video.codec_context.width,
                height=video.codec_context.height,
                fps=float(rate) if rate else None,
                codec=video.codec_context.name,
                audio_codec=audio.codec_context.name if audio is not None else None,
            )
            if audio is not None and self.audio_stream is None:
                self.audio_stream = detached_audio_template(audio)
            logger.info(
                "%s: input %dx%d %s%s, %s fps",
                self.name,
                self.info.width,
                self.info.height,
                self.info.codec,
                f" + {self.info.audio_codec}" if audio is not None else "",
                f"{self.info.fps:.2f}" if self.info.fps else "unknown",
            )
            streams: list[Stream] = [video] if audio is None else [video, audio]
            audio_index = audio.index if audio is not None else -1
            for packet in container.demux(*streams):
                if self._input.closed:
                    return
                if packet.stream_index == audio_index:
                    if packet.size:
                        self._emit_audio(cast("Packet[AudioStream]", packet))
                    continue
                try:
                    frames = decoder.decode(cast("Packet[VideoStream]", packet))
                except InvalidDataError as exc:
                    self.decode_errors += 1
                    self._corrupt.warn("%s: skipped a corrupt video packet: %s", self.name, exc)
                    continue
                for frame in frames:
                    self._emit_video(frame)

    def _on_nvdec_fallback(self, reason: str) -> None:
        """The video decoder gave NVDEC up (decoder thread): say so once, remember why."""
        if self.nvdec_fallback is None:
            logger.info("%s: NVDEC is not usable (%s); decoding in software", self.name, reason)
        self.nvdec_fallback = reason
        self.hw_decoder = False
        if self.info is not None:
            self.video_decoder = self.info.codec

    def _emit_audio(self, packet: Packet[AudioStream]) -> None:
        self.audio_packets += 1
        self.fps_audio_in.tick()
        with self._audio_lock:
            sink = self._audio_sink
            if sink is None:
                self._audio_backlog.append(packet)
                return
        sink(packet)

    def _emit_video(self, frame: av.VideoFrame) -> None:
        self.frames_decoded += 1
        self.fps_in.tick()
        time_base = frame.time_base or TS_TIME_BASE
        pts = frame.pts
        if pts is None:
            fps = self.info.fps if self.info is not None and self.info.fps else 30.0
            pts = round(self.frames_decoded / fps / time_base)
        if not self._sampler.due(float(pts * time_base)):
            self.frames_skipped += 1
            return
        if self._frame_sink is not None:
            self._frame_sink(frame)
            return
        rgb = self._to_rgb(frame)
        self._delivered += 1
        item = DecodedVideoFrame(
            rgb, pts, time_base, self._delivered, capture_time=time.time(), stream_id=self.name
        )
        self._wait_for_consumer()
        self.frames.put(item)

    def _wait_for_consumer(self) -> None:
        """A full frame queue at the live edge is a burst (a segment delivered faster than
        real time, like the one a ``-2`` subscription starts with): wait for the consumer
        rather than drop, within ``burst_wait_s``. Once a newer segment is arriving (the
        consumer is really behind), at the end of the input, or on close, the put evicts the
        oldest frame instead, so the stream catches up with live."""
        frames = self.frames
        deadline = time.monotonic() + self.burst_wait_s
        while len(frames) >= frames.maxsize:
            if self._input.behind or self._input.ended or frames.closed:
                return
            left = deadline - time.monotonic()
            if left <= 0:
                return
            frames.wait_for_room_blocking(min(left, _BURST_POLL_S))

    def _to_rgb(self, frame: av.VideoFrame) -> RgbArray:
        """RGB, once; with ``output_size``: scaled to cover it and centre-cropped."""
        size = self.output_size
        if size is None or size == (frame.width, frame.height):
            return cast(RgbArray, frame.to_ndarray(format="rgb24"))
        width, height = size
        scale = max(width / frame.width, height / frame.height)
        scaled_w = max(width, round(frame.width * scale))
        scaled_h = max(height, round(frame.height * scale))
        if scaled_w * scaled_h > _MAX_COVER_OVERSCAN * width * height:
            return _crop_then_scale(frame, size, scale)
        rgb = cast(RgbArray, frame.to_ndarray(width=scaled_w, height=scaled_h, format="rgb24"))
        if (scaled_w, scaled_h) == (width, height):
            return rgb
        top, left = (scaled_h - height) // 2, (scaled_w - width) // 2
        return np.ascontiguousarray(rgb[top : top + height, left : left + width])


#: Scaling a whole frame to cover the output and cropping after is one swscale pass; but a
#: frame of an extreme shape would be scaled to many times the output (16x13000 covering
#: 512x512 is 512x416000: 640 MB and 0.85 s of CPU), so past this factor it is cropped first.
_MAX_COVER_OVERSCAN = 4


def _crop_then_scale(frame: av.VideoFrame, size: tuple[int, int], scale: float) -> RgbArray:
    """The centre of ``frame`` that covers ``size`` at ``scale``, cropped in source pixels
    (the source is bounded by the pixel limit), then scaled to ``size``."""
    width, height = size
    crop_w = min(frame.width, max(1, round(width / scale)))
    crop_h = min(frame.height, max(1, round(height / scale)))
    top, left = (frame.height - crop_h) // 2, (frame.width - crop_w) // 2
    rgb = cast(RgbArray, frame.to_ndarray(format="rgb24"))[top : top + crop_h, left : left + crop_w]
    region = av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24")
    return cast(RgbArray, region.to_ndarray(width=width, height=height, format="rgb24"))


class _NoVideoError(Exception):
    pass
