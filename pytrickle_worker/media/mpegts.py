"""MPEG-TS segments as bytes, shared by the segment decoder and the segment encoder.

Trickle moves video as consecutive MPEG-TS segments. The decoder reads them through
:class:`SegmentInputBuffer` as one continuous byte stream; the encoder writes each output
segment into an :class:`EncodedSegment` that a publisher streams while it is written. Both
are filled on one side by a PyAV thread and read or written on the other by the event loop.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections import deque
from collections.abc import AsyncIterator
from fractions import Fraction
from typing import cast

import av
from av.audio.stream import AudioStream

from pytrickle_worker.core.wakeup import resolve_waiter

__all__ = [
    "READ_BUFFER_BYTES",
    "RESTART_WINDOW_S",
    "TS_CLOCK",
    "TS_TIME_BASE",
    "EncodedSegment",
    "NullSink",
    "SegmentInputBuffer",
    "detached_audio_template",
]

logger = logging.getLogger(__name__)

#: MPEG-TS clock rate and time base (pts/dts units).
TS_CLOCK = 90_000
TS_TIME_BASE = Fraction(1, TS_CLOCK)

#: Read size PyAV asks of the input buffer.
READ_BUFFER_BYTES = 32 * 1024
#: A failed segment decoder/encoder is restarted at most ``max_restarts`` times within this
#: window.
RESTART_WINDOW_S = 120.0


class NullSink:
    """A write target that discards everything: the container of stream templates."""

    def write(self, data: bytes | bytearray | memoryview) -> int:
        return len(data)


def detached_audio_template(stream: AudioStream) -> AudioStream:
    """A copy of ``stream``'s parameters in a never-written output container, so that it
    stays valid after the container ``stream`` belongs to is closed (a remux template)."""
    holder = av.open(cast(object, NullSink()), mode="w", format="mpegts")
    return holder.add_stream_from_template(stream)


class SegmentInputBuffer:
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

    def read(self, size: int = READ_BUFFER_BYTES) -> bytes:
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
