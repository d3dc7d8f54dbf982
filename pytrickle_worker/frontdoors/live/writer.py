"""LiveWriter: the live view's :class:`~pytrickle_worker.processing.sink.ResultSink`.

Per analysed frame a door calls :meth:`LiveWriter.offer`, which only decides, on the
caller's loop turn and without touching pixels, whether the frame is stored:

* at most ``fps`` frames per (label, key) (the rest are dropped before any work);
* not while the store is down, except one frame per ``retry_interval_s`` that probes it.

A kept frame goes into a bounded queue (the oldest is dropped when full). The writer's one
render thread takes them in order: it scales the frame to ``max_width`` (aspect kept, never
up), draws the boxes (class, confidence, track id) and encodes the JPEG, once per stored frame
whoever watches; then it adds the entry to the store with the store's blocking call
(:meth:`FrameStore.add_blocking`). After ``offer`` a frame never touches the event loop: the
loop's wake-ups for a thread's result and for Redis's reply cost as much as the write itself.
The in-memory store wakes the label feeds that wait on it, and only when there are any.
A store failure drops the frame, counts it, and logs one warning per outage (and one line
when the store is back).

The same thread keeps the keys of running streams alive: a camera that is offline sends no
frames, so its last entry (marked offline) is rewritten or its TTL pushed on, every
``ttl_s / 3``, until the stream ends.

Uploads (:meth:`LiveWriter.store_upload`) are written from the event loop with the store's
async call; the outage bookkeeping is shared, under one lock.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, get_args

import av
import numpy as np
import numpy.typing as npt
from av.video.reformatter import VideoReformatter
from pydantic import ValidationError

from pytrickle_worker.core.frame import FramePixels
from pytrickle_worker.core.queues import DropOldestQueue
from pytrickle_worker.core.threads import lower_thread_priority, name_os_thread
from pytrickle_worker.frontdoors.live.model import DetectionItem, LiveEntry
from pytrickle_worker.frontdoors.live.store import FrameStore, StoreUnavailableError
from pytrickle_worker.media.frames import fit_width, yuv420_planes
from pytrickle_worker.media.jpeg import JpegEncoder, scale_for_jpeg
from pytrickle_worker.processing.annotate import (
    Annotation,
    class_colour,
    detection_label,
    draw_annotations_yuv420,
)
from pytrickle_worker.processing.sink import SinkFrame, check_live_name

__all__ = ["DropReason", "LiveWriter", "LiveWriterSettings", "render_frame"]

logger = logging.getLogger(__name__)

DropReason = Literal["rate_limit", "queue_full", "store_unavailable", "invalid", "error"]
DROP_REASONS: tuple[DropReason, ...] = get_args(DropReason)


#: Distinct invalid (label, key) pairs warned about (then they are only counted).
_MAX_WARNED_INVALID = 100
#: How long ``stop`` waits for the render thread (a render, or a store call's timeout).
_JOIN_TIMEOUT_S = 10.0


@dataclass(frozen=True)
class LiveWriterSettings:
    """The writer's bounds (WorkerConfig's ``live_*`` settings)."""

    worker_id: str
    fps: float = 2.0
    max_width: int = 960
    jpeg_quality: int = 80
    queue_size: int = 32
    retry_interval_s: float = 2.0
    #: Added to the render thread's niceness: where the cores are short, the live view's
    #: JPEGs give way to decoding and inference (its queue drops the oldest frames).
    render_niceness: int = 10


@dataclass
class _KeyState:
    """What the writer knows of one (label, key) of a running stream."""

    next_due: float = float("-inf")
    last: LiveEntry | None = None
    online: bool = True
    #: The newest stored entry does not show ``online`` yet.
    state_dirty: bool = False
    #: The stream ended: its offline entry is written once, then the key is forgotten.
    ended: bool = False
    last_write: float = field(default_factory=time.monotonic)


@dataclass(frozen=True)
class _StateChange:
    label: str
    key: str


_Job = SinkFrame | _StateChange


def detection_items(
    records: Sequence[dict[str, Any]], scale: float, width: int, height: int
) -> list[DetectionItem]:
    """The detections of a processor's records (``"detection"`` + ``"bbox"``), in stored
    pixels; records without both are not detections and are skipped."""
    items: list[DetectionItem] = []
    for record in records:
        found = record.get("detection")
        bbox = record.get("bbox")
        if not isinstance(found, dict) or not isinstance(bbox, list | tuple):
            continue
        try:
            x1, y1, x2, y2 = (float(v) for v in bbox)  # pyright: ignore[reportUnknownVariableType, reportUnknownArgumentType] - validated just below
            raw: dict[str, Any] = dict(found)  # pyright: ignore[reportUnknownArgumentType]
            items.append(
                DetectionItem.model_validate(
                    {
                        "class": str(raw.get("class")),
                        "confidence": float(raw.get("confidence") or 0.0),
                        "id": raw.get("id"),
                        "bbox": (
                            _clamp(round(x1 * scale), width),
                            _clamp(round(y1 * scale), height),
                            _clamp(round(x2 * scale), width),
                            _clamp(round(y2 * scale), height),
                        ),
                    }
                )
            )
        except (TypeError, ValueError, ValidationError):
            continue
    return items


def _clamp(value: int, limit: int) -> int:
    return max(0, min(limit, value))


def _scaled(
    source: npt.NDArray[np.uint8] | FramePixels,
    width: int,
    height: int,
    reformatter: VideoReformatter | None,
) -> av.VideoFrame:
    """``source`` in the encoder's 4:2:0 at ``width`` × ``height``: a camera's decoded frame
    straight from the decoder's pixels (its full-resolution RGB is never made for the live
    view), an RGB array as it is."""
    if not isinstance(source, np.ndarray):
        with source.decoded() as decoded:
            if decoded is not None:
                return scale_for_jpeg(decoded, width, height, reformatter=reformatter)
        source = source.to_rgb()  # the source let go of its decoder frame
    return scale_for_jpeg(source, width, height, reformatter=reformatter)


def render_frame(
    source: npt.NDArray[np.uint8] | FramePixels,
    records: Sequence[dict[str, Any]],
    annotations: Sequence[Annotation],
    *,
    max_width: int,
    quality: int,
    reformatter: VideoReformatter | None = None,
    encoder: JpegEncoder | None = None,
) -> tuple[bytes, int, int, list[DetectionItem]]:
    """Scale, draw and encode one frame (blocking: run it on a worker thread).

    ``source``: an RGB array, or a decoded frame (``VideoFrame.image``). Returns ``(jpeg,
    width, height, detection items in stored pixels)``. The processor's annotations are drawn
    when it gave any (their labels are its own), else the detections.
    """
    if isinstance(source, np.ndarray):
        source_h, source_w = int(source.shape[0]), int(source.shape[1])
    else:
        source_h, source_w = source.height, source.width
    width, height = fit_width(source_w, source_h, max_width)
    scale = width / source_w
    # One swscale pass scales and converts to the encoder's 4:2:0, and the boxes are drawn on
    # those planes: scaling in RGB, drawing and converting after took twice a bare encode.
    image = _scaled(source, width, height, reformatter)  # a new frame
    items = detection_items(records, scale, width, height)
    if annotations:
        marks = [
            Annotation(
                (
                    round(a.bbox[0] * scale),
                    round(a.bbox[1] * scale),
                    round(a.bbox[2] * scale),
                    round(a.bbox[3] * scale),
                ),
                a.label,
                a.colour,
            )
            for a in annotations
        ]
    else:
        marks = [
            Annotation(
                (int(i.bbox[0]), int(i.bbox[1]), int(i.bbox[2]), int(i.bbox[3])),
                detection_label(i.class_name, i.confidence, i.id),
                class_colour(i.class_name),
            )
            for i in items
        ]
    draw_annotations_yuv420(yuv420_planes(image), marks)
    jpeg = (encoder if encoder is not None else JpegEncoder()).encode(image, quality)
    return jpeg, width, height, items


class LiveWriter:
    """The live view's result sink and the one writer of its store; see the module docs."""

    def __init__(self, store: FrameStore, settings: LiveWriterSettings) -> None:
        if settings.fps <= 0:
            raise ValueError(f"fps must be > 0, got {settings.fps}")
        self.store = store
        self.settings = settings
        self._interval = 1.0 / settings.fps
        self._keepalive_period = max(0.2, store.ttl_s / 3)
        self._queue: DropOldestQueue[_Job] = DropOldestQueue(settings.queue_size)
        #: Guards what ``offer`` (the event loop) and the render thread share: the key
        #: states, the outage state and the counters.
        self._lock = threading.Lock()
        self._keys: dict[tuple[str, str], _KeyState] = {}
        self._warned_invalid: set[tuple[str, str]] = set()
        self._reformatter = VideoReformatter()
        #: The render thread's JPEG encoder, kept open between frames of one size.
        self._jpeg = JpegEncoder()
        #: The one thread that renders (scale, draw, encode) and writes to the store: a
        #: frame never comes back to the event loop, whose wake-ups cost as much as the write.
        self._thread: threading.Thread | None = None
        #: When the store failed: nothing is tried before this (monotonic), but one probe.
        self._down_until: float | None = None
        self._outage_drops = 0
        self.stored = 0
        self.outages = 0
        self.dropped: Counter[DropReason] = Counter()
        self.encode_seconds = 0.0

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> None:
        if self._thread is None and not self._queue.closed:
            self._thread = threading.Thread(target=self._work, name="live-render", daemon=True)
            self._thread.start()

    async def stop(self) -> None:
        """Stop writing: what is queued is dropped (it is a live view, not a record)."""
        self._queue.clear()
        self._queue.close()
        thread, self._thread = self._thread, None
        if thread is not None:
            # The thread finishes the frame in hand (a render, at worst a store timeout).
            await asyncio.to_thread(thread.join, _JOIN_TIMEOUT_S)
            if thread.is_alive():
                logger.warning("live: the render thread did not stop within %g s", _JOIN_TIMEOUT_S)

    # ------------------------------------------------------------------ ResultSink

    def offer(self, item: SinkFrame) -> None:
        now = time.monotonic()
        name = (item.label, item.key)
        with self._lock:
            state = self._keys.get(name)
            if state is None:
                try:
                    check_live_name(item.label)
                    check_live_name(item.key, "key")
                except ValueError as exc:
                    self.dropped["invalid"] += 1
                    warn = len(self._warned_invalid) < _MAX_WARNED_INVALID and (
                        name not in self._warned_invalid
                    )
                    if warn:
                        self._warned_invalid.add(name)
                        logger.warning("live: frames of %r/%r are not stored: %s", *name, exc)
                    return
                state = self._keys[name] = _KeyState()
            if state.online is False:
                state.online, state.state_dirty = True, True
            state.ended = False
            if now < state.next_due:
                self.dropped["rate_limit"] += 1
                return
            # On the grid of 1/fps, so arrival jitter does not lower the rate; a stream that
            # paused starts a new grid.
            late = now - state.next_due
            state.next_due = (
                state.next_due + self._interval if late < self._interval else now + self._interval
            )
            if not self._may_try_locked(now):
                return
        if self._queue.put(item) is not None:
            self._drop("queue_full")

    def set_online(self, label: str, key: str, online: bool) -> None:
        with self._lock:
            state = self._keys.get((label, key))
            if state is None or state.online is online:
                return
            state.online, state.state_dirty = online, True
            queue = not online and state.last is not None
        if queue:
            self._queue_state(label, key)

    def end(self, label: str, key: str) -> None:
        with self._lock:
            state = self._keys.get((label, key))
            if state is None:
                return
            state.online, state.state_dirty, state.ended = False, True, True
        # Behind any frame of the key still queued, so the offline entry is the last one.
        self._queue_state(label, key)

    def _queue_state(self, label: str, key: str) -> None:
        if self._queue.put(_StateChange(label, key)) is not None:
            self._drop("queue_full")

    # ------------------------------------------------------------------ uploads

    async def store_upload(
        self,
        label: str,
        key: str,
        jpeg: bytes,
        items: Sequence[DetectionItem],
        width: int,
        height: int,
        *,
        source_width: int | None = None,
        source_height: int | None = None,
        capture_time: float | None = None,
        fps: float = 0.0,
    ) -> str:
        """Store an uploaded JPEG as it is (validated by the caller); its entry id.

        Raises :class:`StoreUnavailableError` when the store cannot be reached (the caller
        answers 503); counted like the doors' frames. While the store is down an upload is
        refused at once, as the doors' frames are, but for one probe per retry interval: a
        store that hangs would otherwise hold every upload for its timeout.
        """
        with self._lock:
            may_try = self._may_try_locked(time.monotonic())
        if not may_try:
            raise StoreUnavailableError(
                f"the live store ({self.store.describe()}) is down; "
                f"retrying every {self.settings.retry_interval_s:g} s"
            )
        entry = LiveEntry(
            frame=jpeg,
            detection_items=tuple(items),
            width=width,
            height=height,
            source_width=source_width if source_width is not None else width,
            source_height=source_height if source_height is not None else height,
            capture_time=capture_time if capture_time is not None else time.time(),
            worker=self.settings.worker_id,
            online=True,
            fps=fps,
            origin="upload",
        )
        # On the event loop with the store's async client: an upload is a request, and its
        # answer waits for the write anyway.
        try:
            entry_id = await self.store.add(label, key, entry)
        except StoreUnavailableError as exc:
            self._store_failed(exc, lost_entry=True)
            raise StoreUnavailableError(
                f"the live store ({self.store.describe()}) is unavailable"
            ) from None
        self._store_succeeded()
        return entry_id

    # ------------------------------------------------------------------ bookkeeping

    def _may_try_locked(self, now: float) -> bool:
        """Whether a frame or an upload may go to the store now; one that may not is
        counted as dropped (``store_unavailable``)."""
        down_until = self._down_until
        if down_until is None:
            return True
        if now < down_until:
            self._drop_locked("store_unavailable")
            return False
        self._down_until = now + self.settings.retry_interval_s  # this frame is the probe
        return True

    def _drop_locked(self, reason: DropReason) -> None:
        self.dropped[reason] += 1
        if reason == "store_unavailable":
            self._outage_drops += 1

    def _drop(self, reason: DropReason) -> None:
        with self._lock:
            self._drop_locked(reason)

    def _store_failed(self, exc: StoreUnavailableError, *, lost_entry: bool) -> None:
        """The store failed a write (``lost_entry``) or a touch: no more tries before the
        next retry interval, and one warning per outage."""
        with self._lock:
            if lost_entry:
                self._drop_locked("store_unavailable")
            first = self._down_until is None
            if first:
                self.outages += 1
            retry_at = time.monotonic() + self.settings.retry_interval_s
            self._down_until = max(self._down_until or retry_at, retry_at)
        if first:
            logger.warning(
                "live: frame store unavailable, dropping frames and retrying every %.1f s: %s",
                self.settings.retry_interval_s,
                exc,
            )

    def _store_succeeded(self) -> None:
        with self._lock:
            self.stored += 1
            if self._down_until is None:
                return
            dropped, self._down_until, self._outage_drops = self._outage_drops, None, 0
        logger.info(
            "live: frame store is back (%s); %d frame(s) dropped meanwhile",
            self.store.describe(),
            dropped,
        )

    # ------------------------------------------------------------------ the render thread

    def _work(self) -> None:
        """The render thread: frames and state changes in order, and the keep-alive."""
        name_os_thread("ptw-live-render")
        lower_thread_priority(self.settings.render_niceness, "the live render thread")
        next_keepalive = time.monotonic() + self._keepalive_period
        while True:
            job = self._queue.get_blocking(max(0.0, next_keepalive - time.monotonic()))
            if self._queue.closed:
                return
            if job is not None:
                try:
                    if isinstance(job, SinkFrame):
                        self._write_frame(job)
                    else:
                        self._write_state(job.label, job.key)
                except Exception:  # a bug: lose the frame, keep the writer
                    self._drop("error")
                    logger.exception("live: writing a frame failed")
            if time.monotonic() >= next_keepalive:
                try:
                    self._keep_alive()
                except Exception:
                    logger.exception("live: keeping the live keys alive failed")
                next_keepalive = time.monotonic() + self._keepalive_period

    def _add(self, label: str, key: str, entry: LiveEntry) -> bool:
        try:
            self.store.add_blocking(label, key, entry)
        except StoreUnavailableError as exc:
            self._store_failed(exc, lost_entry=True)
            return False
        self._store_succeeded()
        return True

    def _write_frame(self, item: SinkFrame) -> None:
        started = time.perf_counter()
        settings = self.settings
        # The frame's image as it is: a camera's decoded frame is scaled from the decoder's
        # pixels on this thread (no full-resolution RGB for the live view, and never on the
        # event loop).
        jpeg, width, height, items = render_frame(
            item.frame.image,
            item.records,
            item.annotations,
            max_width=settings.max_width,
            quality=settings.jpeg_quality,
            reformatter=self._reformatter,
            encoder=self._jpeg,
        )
        self.encode_seconds += time.perf_counter() - started
        with self._lock:
            state = self._keys.get((item.label, item.key))
            online = state.online if state is not None else item.online
        capture = item.frame.capture_time
        entry = LiveEntry(
            frame=jpeg,
            detection_items=tuple(items),
            width=width,
            height=height,
            source_width=item.frame.width,
            source_height=item.frame.height,
            capture_time=capture if capture is not None else time.time(),
            worker=settings.worker_id,
            online=online,
            fps=round(item.fps, 3),
            origin=item.origin,
        )
        if self._add(item.label, item.key, entry) and state is not None:
            with self._lock:
                state.last, state.last_write = entry, time.monotonic()
                state.state_dirty = state.online is not online

    def _write_state(self, label: str, key: str) -> None:
        """Store the key's last frame again with its current online state."""
        name = (label, key)
        with self._lock:
            state = self._keys.get(name)
            if state is None:
                return
            if state.last is None:
                if state.ended:
                    del self._keys[name]
                return
            entry = state.last.with_online(state.online)
        written = self._add(label, key, entry)
        with self._lock:
            if written:
                state.last, state.last_write = entry, time.monotonic()
                state.state_dirty = state.online is not entry.online
            if state.ended and self._keys.get(name) is state:
                del self._keys[name]

    def _keep_alive(self) -> None:
        """Push on the TTL of every running key that was not written for a period (or write
        its entry again when its state changed or it expired)."""
        period = self._keepalive_period
        now = time.monotonic()
        with self._lock:
            keys = list(self._keys.items())
        for (label, key), state in keys:
            down_until = self._down_until
            if down_until is not None and time.monotonic() < down_until:
                return  # the store is down (or failed in this pass): after the retry interval
            if state.ended:  # its offline entry was lost (queue full, outage): again
                if now - state.last_write >= period:
                    self._write_state(label, key)  # forgets the key once written
                continue
            if state.last is None or now - state.last_write < period:
                continue
            if state.state_dirty:
                self._write_state(label, key)
                continue
            try:
                alive = self.store.touch_blocking(label, key)
            except StoreUnavailableError as exc:
                self._store_failed(exc, lost_entry=False)
                return
            if alive:
                state.last_write = now
            else:
                self._write_state(label, key)

    # ------------------------------------------------------------------ status

    @property
    def queue_depth(self) -> int:
        return len(self._queue)

    @property
    def store_online(self) -> bool:
        return self._down_until is None

    @property
    def render_thread(self) -> threading.Thread | None:
        """The thread that renders and writes (None before :meth:`start`)."""
        return self._thread

    @property
    def keys_tracked(self) -> int:
        return len(self._keys)

    def snapshot(self) -> dict[str, Any]:
        return {
            "store": self.store.kind,
            "store_online": self.store_online,
            "stored": self.stored,
            "dropped": {reason: self.dropped[reason] for reason in DROP_REASONS},
            "outages": self.outages,
            "queue_depth": self.queue_depth,
            "keys": self.keys_tracked,
            "encode_seconds": self.encode_seconds,
        }
