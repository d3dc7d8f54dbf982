"""Per-source status: a thread-safe tracker that readers update and a pydantic snapshot."""

from __future__ import annotations

import threading
import time
from collections import deque

from pydantic import BaseModel, ConfigDict

from pytrickle_worker.core.logutil import mask_text
from pytrickle_worker.sources.source import SourceKind

__all__ = ["RateMeter", "SourceStatus", "StatusTracker"]


class SourceStatus(BaseModel):
    """What a source is doing. Every URL and error text in it is credential-masked."""

    model_config = ConfigDict(frozen=True)

    source: str
    kind: SourceKind
    online: bool
    last_error: str | None
    last_error_time: float | None
    reconnects: int
    consecutive_failures: int
    gave_up: bool
    finished: bool
    fps_in: float
    fps_decoded: float
    width: int | None
    height: int | None
    codec: str | None
    decoder: str | None
    hw_decoder: bool
    packets_in: int
    frames_decoded: int
    corrupt_packets: int
    conversions: int
    frames_delivered: int
    subscribers: int
    last_frame_time: float | None


class RateMeter:
    """Events per second over a sliding window (bounded memory)."""

    def __init__(self, window_s: float = 2.0, max_events: int = 1024) -> None:
        self._window = window_s
        self._events: deque[float] = deque(maxlen=max_events)
        self._started = time.monotonic()

    def tick(self, now: float) -> None:
        self._events.append(now)

    def reset(self, now: float) -> None:
        self._events.clear()
        self._started = now

    def rate(self, now: float) -> float:
        horizon = now - self._window
        while self._events and self._events[0] < horizon:
            self._events.popleft()
        if not self._events:
            return 0.0
        span = min(self._window, now - self._started)
        if len(self._events) == self._events.maxlen:
            span = min(span, now - self._events[0])
        return len(self._events) / span if span > 0 else 0.0


class StatusTracker:
    """Counters a reader thread updates and the event loop reads; one lock guards them all."""

    def __init__(self, source: str, kind: SourceKind) -> None:
        self._lock = threading.Lock()
        self._source = source  # already masked
        self._kind: SourceKind = kind
        self._online = False
        self._last_error: str | None = None
        self._last_error_time: float | None = None
        self._reconnects = 0
        self._failures = 0
        self._gave_up = False
        self._finished = False
        self._width: int | None = None
        self._height: int | None = None
        self._codec: str | None = None
        self._decoder: str | None = None
        self._hw = False
        self._packets = 0
        self._frames = 0
        self._corrupt = 0
        self._conversions = 0
        self._delivered = 0
        self._last_frame_time: float | None = None
        self._fps_in = RateMeter()
        self._fps_decoded = RateMeter()

    # ---- reader side
    def packet(self) -> None:
        now = time.monotonic()
        with self._lock:
            self._packets += 1
            self._fps_in.tick(now)

    def corrupt_packet(self) -> int:
        with self._lock:
            self._corrupt += 1
            return self._corrupt

    def frame(self, width: int, height: int) -> bool:
        """Count a decoded frame; True when it brought the source (back) online."""
        now = time.monotonic()
        with self._lock:
            self._frames += 1
            self._fps_decoded.tick(now)
            self._width, self._height = width, height
            self._last_frame_time = time.time()
            came_online = not self._online
            self._online = True
            self._failures = 0
            return came_online

    def decoder_info(self, codec: str, decoder: str, hardware: bool) -> None:
        with self._lock:
            self._codec, self._decoder, self._hw = codec, decoder, hardware

    def failed(self, error: str, consecutive_failures: int) -> None:
        with self._lock:
            self._online = False
            self._last_error = mask_text(error)
            self._last_error_time = time.time()
            self._failures = consecutive_failures
            now = time.monotonic()
            self._fps_in.reset(now)
            self._fps_decoded.reset(now)

    def reconnecting(self) -> None:
        with self._lock:
            self._reconnects += 1

    def gave_up(self) -> None:
        with self._lock:
            self._gave_up = True
            self._online = False

    def finished(self) -> None:
        with self._lock:
            self._finished = True
            self._online = False

    def stopped(self) -> None:
        with self._lock:
            self._online = False

    # ---- hub side
    def conversion(self) -> None:
        with self._lock:
            self._conversions += 1

    def delivered(self) -> None:
        with self._lock:
            self._delivered += 1

    def snapshot(self, subscribers: int) -> SourceStatus:
        now = time.monotonic()
        with self._lock:
            return SourceStatus(
                source=self._source,
                kind=self._kind,
                online=self._online,
                last_error=self._last_error,
                last_error_time=self._last_error_time,
                reconnects=self._reconnects,
                consecutive_failures=self._failures,
                gave_up=self._gave_up,
                finished=self._finished,
                fps_in=round(self._fps_in.rate(now), 2),
                fps_decoded=round(self._fps_decoded.rate(now), 2),
                width=self._width,
                height=self._height,
                codec=self._codec,
                decoder=self._decoder,
                hw_decoder=self._hw,
                packets_in=self._packets,
                frames_decoded=self._frames,
                corrupt_packets=self._corrupt,
                conversions=self._conversions,
                frames_delivered=self._delivered,
                subscribers=subscribers,
                last_frame_time=self._last_frame_time,
            )
