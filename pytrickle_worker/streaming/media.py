"""Trickle media: MPEG-TS segments in, RGB frames out, and back.

:class:`SegmentDecoder`
    ONE long-lived PyAV demuxer/decoder for a whole stream. Consecutive MPEG-TS segments are
    fed in from the event loop (:meth:`~SegmentDecoder.feed_segment`) into a bounded byte
    buffer that a decoder thread reads as one continuous byte stream
    (``av.open(buffer, format="mpegts")``), so there is no re-probing per segment and the
    decoder keeps its references across segment boundaries. Each decoded frame is converted
    to RGB once, on the decoder thread, and offered to a bounded drop-oldest queue; audio
    packets are handed, undecoded, to an audio sink (the encoder, which remuxes them).

:class:`SegmentEncoder`
    H.264 (libx264, no B-frames, ``tune=zerolatency``, ``forced-idr``, an IDR every
    ``gop_seconds`` of pts, 90 kHz time base) muxed into MPEG-TS, one standalone TS per GOP:
    every segment is its own container (PAT/PMT first, then the IDR), as trickle expects.
    A segment is announced as soon as its IDR is encoded and its bytes stream out frame by
    frame (:meth:`EncodedSegment.chunks`), so a publisher can POST it while it is written.

Blocking PyAV work happens on the decoder and encoder threads only; the event loop only
moves bytes and frames between bounded queues.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections import deque
from collections.abc import AsyncIterable, AsyncIterator, Callable, Iterable
from dataclasses import dataclass
from fractions import Fraction
from typing import Protocol, cast

import av
import av.container
import numpy as np
import numpy.typing as npt
from av.audio.stream import AudioStream
from av.error import FFmpegError, InvalidDataError
from av.packet import Packet
from av.stream import Stream
from av.video.codeccontext import VideoCodecContext
from av.video.frame import PictureType
from av.video.stream import VideoStream

from pytrickle_worker.core.fps import FpsMeter
from pytrickle_worker.core.queues import DropOldestQueue
from pytrickle_worker.core.wakeup import call_on_loop, resolve_waiter
from pytrickle_worker.media.nvdec import VideoDecoder
from pytrickle_worker.processing import VideoFrame

__all__ = [
    "TS_CLOCK",
    "TS_TIME_BASE",
    "DecodedVideoFrame",
    "EncodedSegment",
    "EncoderSettings",
    "RgbFrame",
    "SegmentDecoder",
    "SegmentEncoder",
    "VideoInfo",
    "encode_segments",
]

logger = logging.getLogger(__name__)

#: MPEG-TS clock rate and time base (pts/dts units).
TS_CLOCK = 90_000
TS_TIME_BASE = Fraction(1, TS_CLOCK)

RgbArray = npt.NDArray[np.uint8]

#: Demuxer options: probe at most ~1 s / 2 MB before the first frame comes out.
_OPEN_OPTIONS = {"analyzeduration": "1000000", "probesize": "2000000"}
#: Read size PyAV asks of the input buffer.
_READ_BUFFER = 32 * 1024
#: A failed decoder/encoder is restarted at most this often within the window.
_RESTART_WINDOW_S = 120.0
#: At most one warning per this many seconds for corrupt packets.
_WARN_INTERVAL_S = 5.0


class RgbFrame(Protocol):
    """What the encoder takes: ``processing.VideoFrame`` and :class:`DecodedVideoFrame` fit."""

    @property
    def rgb(self) -> RgbArray: ...

    @property
    def pts(self) -> int | None: ...

    @property
    def time_base(self) -> Fraction: ...


@dataclass
class DecodedVideoFrame(VideoFrame):
    """A :class:`VideoFrame` as the decoder delivers it (``rgb`` writable, owned by the
    receiver; ``pts`` in ``time_base`` units, 1/90000 for MPEG-TS), with ``index``, the
    frames the decoder delivered (1-based), and ``decoded_at``, ``time.monotonic()`` at
    conversion."""

    index: int
    decoded_at: float


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


#: How often a decoder waiting out a burst re-checks whether it has fallen behind.
_BURST_POLL_S = 0.02


class _NullSink:
    def write(self, data: bytes | bytearray | memoryview) -> int:
        return len(data)


def _detached_audio_template(stream: AudioStream) -> AudioStream:
    """A copy of ``stream``'s parameters in a never-written output container, so that it
    stays valid after the container ``stream`` belongs to is closed (a remux template)."""
    holder = av.open(cast(object, _NullSink()), mode="w", format="mpegts")
    return holder.add_stream_from_template(stream)


# ====================================================================== decoder input
class _InputBuffer:
    """The decoder's input: consecutive segments' bytes, read by PyAV as one byte stream.

    Bounded by ``max_bytes``. When a write does not fit, whole segments that the reader has
    not started yet are dropped, oldest first (never the one being read, never the one being
    written): the decoder then resumes at the next segment's IDR. When nothing can be
    dropped the writer waits (on the event loop) for the reader to make room.
    """

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self._cond = threading.Condition(threading.Lock())
        self._chunks: deque[tuple[int, bytes]] = deque()
        self._head_offset = 0  # bytes of _chunks[0] already read
        self._size = 0  # unread bytes
        self._feeding = 0  # the segment being written
        self._reading = -1  # the segment the reader is in
        self._eof = False  # no more input: the reader drains what is left, then gets b""
        self._closed = False  # stop: the reader gets b"" at once
        self._space_waiter: asyncio.Future[None] | None = None
        self.segments_dropped = 0
        self.bytes_in = 0

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def exhausted(self) -> bool:
        """Closed, or at end of input with nothing left to read."""
        return self._closed or (self._eof and not self._chunks)

    @property
    def ended(self) -> bool:
        """Closed, or no more input will come."""
        return self._closed or self._eof

    @property
    def behind(self) -> bool:
        """A segment newer than the one being read has started to arrive: the reader is at
        least a segment behind the live edge."""
        with self._cond:
            return self._feeding > self._reading

    def begin_segment(self) -> None:
        with self._cond:
            self._feeding += 1

    async def write(self, data: bytes) -> bool:
        """Append ``data``; False when the input has ended (the bytes are discarded)."""
        if not data:
            return True
        loop = asyncio.get_running_loop()
        while True:
            with self._cond:
                if self._closed or self._eof:
                    return False
                if self._make_room(len(data)):
                    self._chunks.append((self._feeding, data))
                    self._size += len(data)
                    self.bytes_in += len(data)
                    self._cond.notify()
                    return True
                waiter: asyncio.Future[None] = loop.create_future()
                self._space_waiter = waiter
            await waiter

    def _make_room(self, needed: int) -> bool:
        while self._size > 0 and self._size + needed > self.max_bytes:
            victim = next((seg for seg, _ in self._chunks if seg != self._reading), None)
            if victim is None or victim == self._feeding:
                return False
            kept: deque[tuple[int, bytes]] = deque()
            freed = 0
            for seg, chunk in self._chunks:
                if seg == victim:
                    freed += len(chunk)
                else:
                    kept.append((seg, chunk))
            self._chunks = kept
            self._size -= freed
            self.segments_dropped += 1
            logger.warning(
                "decoder input full (%d bytes): dropped a whole queued segment of %d bytes",
                self.max_bytes,
                freed,
            )
        return True

    def read(self, size: int = _READ_BUFFER) -> bytes:
        """PyAV's read: blocks until data is there; b"" only at the end of the input."""
        with self._cond:
            while not self._chunks and not self._eof and not self._closed:
                self._cond.wait()
            if self._closed or not self._chunks:
                return b""
            parts: list[bytes] = []
            taken = 0
            while self._chunks and taken < size:
                seg, chunk = self._chunks[0]
                start = self._head_offset
                end = min(len(chunk), start + size - taken)
                parts.append(chunk[start:end] if start or end < len(chunk) else chunk)
                taken += end - start
                self._reading = seg
                if end >= len(chunk):
                    self._chunks.popleft()
                    self._head_offset = 0
                else:
                    self._head_offset = end
            self._size -= taken
            waiter = self._space_waiter
            self._space_waiter = None
        if waiter is not None:
            resolve_waiter(waiter)
        return parts[0] if len(parts) == 1 else b"".join(parts)

    def finish(self) -> None:
        """End of input: the reader gets the rest, then end-of-file."""
        with self._cond:
            self._eof = True
            self._cond.notify_all()
            waiter, self._space_waiter = self._space_waiter, None
        if waiter is not None:
            resolve_waiter(waiter)

    def close(self) -> None:
        """Stop now: pending bytes are discarded and the reader sees end-of-file."""
        with self._cond:
            self._closed = True
            self._chunks.clear()
            self._size = 0
            self._cond.notify_all()
            waiter, self._space_waiter = self._space_waiter, None
        if waiter is not None:
            resolve_waiter(waiter)


# ====================================================================== decoder
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
        decoder_threads: int = 0,
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
        self.max_fps = max_fps
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
        self._input = _InputBuffer(max_buffer_bytes)
        self._try_nvdec = try_nvdec
        self._threads = decoder_threads
        self._frame_sink = frame_sink
        self._audio_lock = threading.Lock()
        self._audio_sink: Callable[[Packet[AudioStream]], None] | None = None
        self._audio_backlog: deque[Packet[AudioStream]] = deque(maxlen=audio_backlog)
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._ended = asyncio.Event()
        self._delivered = 0
        self._next_due: float | None = None
        self._corrupt = _RateLimitedWarning()

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
            await asyncio.wait_for(self._ended.wait(), timeout)
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
            except (FFmpegError, OSError, _NoVideoError) as exc:
                if self._input.exhausted:
                    if self.frames_decoded == 0 and self.bytes_in and not self._input.closed:
                        # The input ended, and nothing of it was video we could decode.
                        self.error = f"no video decoded from {self.bytes_in} input bytes: {exc}"
                        logger.error("%s: %s", self.name, self.error)
                    return
                now = time.monotonic()
                while failures and now - failures[0] > _RESTART_WINDOW_S:
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
            options=_OPEN_OPTIONS,
            buffer_size=_READ_BUFFER,
        )
        with container:
            if not container.streams.video:
                raise _NoVideoError("the input has no video stream")
            video = container.streams.video[0]
            audio = container.streams.audio[0] if container.streams.audio else None
            if not self.pass_audio:
                audio = None
            decoder = VideoDecoder(video, try_nvdec=self._try_nvdec, threads=self._threads)
            rate = video.average_rate or video.guessed_rate
            self.info = VideoInfo(
                width=video.codec_context.width,
                height=video.codec_context.height,
                fps=float(rate) if rate else None,
                codec=video.codec_context.name,
                audio_codec=audio.codec_context.name if audio is not None else None,
            )
            if audio is not None and self.audio_stream is None:
                self.audio_stream = _detached_audio_template(audio)
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
        if not self._due(pts * time_base):
            self.frames_skipped += 1
            return
        if self._frame_sink is not None:
            self._frame_sink(frame)
            return
        rgb = self._to_rgb(frame)
        self._delivered += 1
        item = DecodedVideoFrame(rgb, pts, time_base, self._delivered, time.monotonic())
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
        rgb = cast(RgbArray, frame.to_ndarray(width=scaled_w, height=scaled_h, format="rgb24"))
        if (scaled_w, scaled_h) == (width, height):
            return rgb
        top, left = (scaled_h - height) // 2, (scaled_w - width) // 2
        return np.ascontiguousarray(rgb[top : top + height, left : left + width])

    def _due(self, pts_time: Fraction) -> bool:
        """The max_fps cap, on a fixed pts grid so that sampling does not drift."""
        max_fps = self.max_fps
        if not max_fps or max_fps <= 0:
            self._next_due = None
            return True
        t = float(pts_time)
        interval = 1.0 / max_fps
        due = self._next_due
        if due is not None and t + 1e-6 < due and due - t <= interval:
            return False
        # Stay on the grid; after a gap or a jump back, restart it at this frame.
        following = (t if due is None else due) + interval
        if due is None or following <= t or due - t > interval:
            following = t + interval
        self._next_due = following
        return True


class _NoVideoError(Exception):
    pass


# ====================================================================== encoded segments
class EncodedSegment:
    """One output segment (one GOP, a standalone MPEG-TS), readable while it is written.

    The encoder thread appends bytes; a reader on the event loop streams them with
    :meth:`chunks` or waits for the whole segment with :meth:`read_all`. ``start_pts`` is
    the IDR's pts (90 kHz); ``frames`` counts the video frames muxed so far.
    """

    def __init__(self, index: int, start_pts: int) -> None:
        self.index = index
        self.start_pts = start_pts
        self.frames = 0
        self.size = 0
        self._chunks: list[bytes] = []
        self._done = False
        self._lock = threading.Lock()
        self._waiter: asyncio.Future[None] | None = None

    @property
    def done(self) -> bool:
        return self._done

    def data(self) -> bytes:
        """The bytes written so far (all of them once :attr:`done`)."""
        with self._lock:
            return b"".join(self._chunks)

    def write(self, data: bytes | bytearray | memoryview) -> int:
        """Encoder side (PyAV's write): append bytes."""
        chunk = bytes(data)
        if chunk:
            with self._lock:
                self._chunks.append(chunk)
                self.size += len(chunk)
                waiter, self._waiter = self._waiter, None
            if waiter is not None:
                resolve_waiter(waiter)
        return len(chunk)

    def finish(self) -> None:
        """Encoder side: the segment is complete."""
        with self._lock:
            self._done = True
            waiter, self._waiter = self._waiter, None
        if waiter is not None:
            resolve_waiter(waiter)

    async def chunks(self) -> AsyncIterator[bytes]:
        """Every chunk in order, as it is written; ends when the segment is complete."""
        loop = asyncio.get_running_loop()
        position = 0
        while True:
            with self._lock:
                available = self._chunks[position:]
                done = self._done
                waiter: asyncio.Future[None] | None = None
                if not available and not done:
                    waiter = loop.create_future()
                    self._waiter = waiter
            if available:
                position += len(available)
                for chunk in available:
                    yield chunk
                continue
            if waiter is None:
                return
            await waiter

    async def read_all(self) -> bytes:
        """Wait until the segment is complete and return all of it."""
        parts = [chunk async for chunk in self.chunks()]
        return b"".join(parts)


# ====================================================================== encoder
def _rgb_frame(rgb: RgbArray) -> av.VideoFrame:
    """An rgb24 VideoFrame holding a copy of ``rgb`` (one numpy copy into the frame's own
    buffer: about twice as fast as ``VideoFrame.from_ndarray`` at 720p)."""
    height, width = int(rgb.shape[0]), int(rgb.shape[1])
    frame = av.VideoFrame(width, height, "rgb24")
    plane = frame.planes[0]
    # A plane exposes its (writable) buffer through the buffer protocol.
    rows = np.frombuffer(cast(bytearray, plane), np.uint8).reshape(height, plane.line_size)
    rows[:, : width * 3].reshape(height, width, 3)[...] = rgb
    return frame


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
            self._template_container = av.open(cast(object, _NullSink()), mode="w", format="mpegts")
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
        video = _rgb_frame(rgb)
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
            await asyncio.wait_for(self._ended.wait(), timeout)
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
                    while failures and now - failures[0] > _RESTART_WINDOW_S:
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
