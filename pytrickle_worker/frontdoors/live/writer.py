"""LiveWriter: the live view's :class:`~pytrickle_worker.processing.sink.ResultSink`.

Per analysed frame a door calls :meth:`LiveWriter.offer`, which only decides, on the
caller's loop turn and without touching pixels, whether the frame is stored:

* at most ``fps`` frames per (label, key) (the rest are dropped before any work);
* not while the store is down, except one frame per ``retry_interval_s`` that probes it.

A kept frame goes into a bounded queue (the oldest is dropped when full). One writer task
takes them in order: on a worker thread it scales the frame to ``max_width`` (aspect kept,
never up), draws the boxes (class, confidence, track id) and encodes the JPEG, once per
stored frame whoever watches; then it adds the entry to the store. A store failure drops the
frame, counts it, and logs one warning per outage (and one line when the store is back).

The writer also keeps the keys of running streams alive: a camera that is offline sends no
frames, so its last entry (marked offline) is rewritten or its TTL pushed on, every
``ttl_s / 3``, until the stream ends.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import Counter
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
from av.video.reformatter import VideoReformatter
from pydantic import ValidationError

from pytrickle_worker.core.queues import DropOldestQueue
from pytrickle_worker.frontdoors.live.model import DetectionItem, LiveEntry, StoredEntry
from pytrickle_worker.frontdoors.live.store import FrameStore, StoreUnavailableError
from pytrickle_worker.media.frames import fit_width, yuv420_planes
from pytrickle_worker.media.jpeg import encode_jpeg_frame, scale_for_jpeg
from pytrickle_worker.processing.annotate import (
    Annotation,
    class_colour,
    draw_annotations_yuv420,
)
from pytrickle_worker.processing.sink import SinkFrame, check_live_name

__all__ = ["DropReason", "LiveWriter", "LiveWriterSettings", "render_frame"]

logger = logging.getLogger(__name__)

DropReason = Literal["rate_limit", "queue_full", "store_unavailable", "invalid", "error"]
DROP_REASONS: tuple[DropReason, ...] = (
    "rate_limit",
    "queue_full",
    "store_unavailable",
    "invalid",
    "error",
)


#: Distinct invalid (label, key) pairs warned about (then they are only counted).
_MAX_WARNED_INVALID = 100


@dataclass(frozen=True)
class LiveWriterSettings:
    """The writer's bounds (WorkerConfig's ``live_*`` settings)."""

    worker_id: str
    fps: float = 2.0
    max_width: int = 960
    jpeg_quality: int = 80
    queue_size: int = 32
    retry_interval_s: float = 2.0


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


def _label(item: DetectionItem) -> str:
    text = f"{item.class_name} {item.confidence:.2f}"
    return text if item.id is None else f"{text} #{item.id}"


def render_frame(
    rgb: npt.NDArray[np.uint8],
    records: Sequence[dict[str, Any]],
    annotations: Sequence[Annotation],
    *,
    max_width: int,
    quality: int,
    reformatter: VideoReformatter | None = None,
) -> tuple[bytes, int, int, list[DetectionItem]]:
    """Scale, draw and encode one frame (blocking: run it on a worker thread).

    Returns ``(jpeg, width, height, detection items in stored pixels)``. The processor's
    annotations are drawn when it gave any (their labels are its own), else the detections.
    """
    source_h, source_w = int(rgb.shape[0]), int(rgb.shape[1])
    width, height = fit_width(source_w, source_h, max_width)
    scale = width / source_w
    # One swscale pass scales and converts to the encoder's 4:2:0, and the boxes are drawn on
    # those planes: scaling in RGB, drawing and converting after took twice a bare encode.
    image = scale_for_jpeg(rgb, width, height, reformatter=reformatter)  # a new frame
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
                _label(i),
                class_colour(i.class_name),
            )
            for i in items
        ]
    draw_annotations_yuv420(yuv420_planes(image), marks)
    return encode_jpeg_frame(image, quality), width, height, items


class LiveWriter:
    """The live view's result sink and the one writer of its store; see the module docs."""

    def __init__(self, store: FrameStore, settings: LiveWriterSettings) -> None:
        if settings.fps <= 0:
            raise ValueError(f"fps must be > 0, got {settings.fps}")
        self.store = store
        self.settings = settings
        self._interval = 1.0 / settings.fps
        self._queue: DropOldestQueue[_Job] = DropOldestQueue(settings.queue_size)
        self._keys: dict[tuple[str, str], _KeyState] = {}
        self._warned_invalid: set[tuple[str, str]] = set()
        self._task: asyncio.Task[None] | None = None
        self._keepalive: asyncio.Task[None] | None = None
        self._reformatter = VideoReformatter()
        #: The one thread that renders (scale, draw, encode): always the same warm thread,
        #: where the default executor's hop went to the next idle one of several.
        self._render_thread: ThreadPoolExecutor | None = None
        #: When the store failed: nothing is tried before this (monotonic), but one probe.
        self._down_until: float | None = None
        self._outage_drops = 0
        self.stored = 0
        self.outages = 0
        self.dropped: Counter[DropReason] = Counter()
        self.encode_seconds = 0.0

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> None:
        loop = asyncio.get_running_loop()
        if self._render_thread is None:
            self._render_thread = ThreadPoolExecutor(1, thread_name_prefix="live-render")
        if self._task is None:
            self._task = loop.create_task(self._run(), name="live-writer")
            self._keepalive = loop.create_task(self._keep_alive(), name="live-keepalive")

    async def stop(self) -> None:
        """Stop writing: what is queued is dropped (it is a live view, not a record)."""
        self._queue.close()
        for task in (self._task, self._keepalive):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        self._task = self._keepalive = None
        if self._render_thread is not None:
            self._render_thread.shutdown(wait=False, cancel_futures=True)
            self._render_thread = None

    # ------------------------------------------------------------------ ResultSink

    def offer(self, item: SinkFrame) -> None:
        now = time.monotonic()
        state = self._keys.get((item.label, item.key))
        if state is None:
            try:
                check_live_name(item.label)
                check_live_name(item.key, "key")
            except ValueError as exc:
                self._drop("invalid")
                name = (item.label, item.key)
                if len(self._warned_invalid) < _MAX_WARNED_INVALID and (
                    name not in self._warned_invalid
                ):
                    self._warned_invalid.add(name)
                    logger.warning("live: frames of %r/%r are not stored: %s", *name, exc)
                return
            state = self._keys[(item.label, item.key)] = _KeyState()
        if state.online is False:
            state.online, state.state_dirty = True, True
        state.ended = False
        if now < state.next_due:
            self._drop("rate_limit")
            return
        # On the grid of 1/fps, so arrival jitter does not lower the rate; a stream that
        # paused starts a new grid.
        late = now - state.next_due
        state.next_due = (
            state.next_due + self._interval if late < self._interval else now + self._interval
        )
        if not self._may_try(now):
            self._drop("store_unavailable")
            return
        if self._queue.put(item) is not None:
            self._drop("queue_full")

    def set_online(self, label: str, key: str, online: bool) -> None:
        state = self._keys.get((label, key))
        if state is None or state.online is online:
            return
        state.online, state.state_dirty = online, True
        if not online and state.last is not None:
            self._queue_state(label, key)

    def end(self, label: str, key: str) -> None:
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
        answers 503); counted like the doors' frames.
        """
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
        stored = await self._add(label, key, entry)
        if stored is None:
            raise StoreUnavailableError(f"the live store ({self.store.describe()}) is unavailable")
        return stored.id

    # ------------------------------------------------------------------ writing

    def _may_try(self, now: float) -> bool:
        down_until = self._down_until
        if down_until is None:
            return True
        if now < down_until:
            return False
        self._down_until = now + self.settings.retry_interval_s  # this frame is the probe
        return True

    def _drop(self, reason: DropReason) -> None:
        self.dropped[reason] += 1
        if reason == "store_unavailable":
            self._outage_drops += 1

    async def _add(self, label: str, key: str, entry: LiveEntry) -> StoredEntry | None:
        try:
            entry_id = await self.store.add(label, key, entry)
        except StoreUnavailableError as exc:
            self._drop("store_unavailable")
            if self._down_until is None:
                self.outages += 1
                logger.warning(
                    "live: frame store unavailable, dropping frames and retrying every %.1f s: %s",
                    self.settings.retry_interval_s,
                    exc,
                )
                self._down_until = time.monotonic() + self.settings.retry_interval_s
            return None
        if self._down_until is not None:
            logger.info(
                "live: frame store is back (%s); %d frame(s) dropped meanwhile",
                self.store.describe(),
                self._outage_drops,
            )
            self._down_until = None
            self._outage_drops = 0
        self.stored += 1
        return StoredEntry(label, key, entry_id, entry)

    async def _run(self) -> None:
        while True:
            job = await self._queue.get()
            if job is None:
                return
            try:
                if isinstance(job, SinkFrame):
                    await self._write_frame(job)
                else:
                    await self._write_state(job.label, job.key)
            except asyncio.CancelledError:
                raise
            except Exception:  # a bug: lose the frame, keep the writer
                self._drop("error")
                logger.exception("live: writing a frame failed")

    async def _write_frame(self, item: SinkFrame) -> None:
        started = time.perf_counter()
        settings = self.settings

        def render() -> tuple[bytes, int, int, list[DetectionItem]]:
            # ``frame.rgb`` inside the render thread: a decoded (lazy) frame converts there,
            # never on the event loop.
            return render_frame(
                item.frame.rgb,
                item.records,
                item.annotations,
                max_width=settings.max_width,
                quality=settings.jpeg_quality,
                reformatter=self._reformatter,
            )

        loop = asyncio.get_running_loop()
        jpeg, width, height, items = await loop.run_in_executor(self._render_thread, render)
        self.encode_seconds += time.perf_counter() - started
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
        stored = await self._add(item.label, item.key, entry)
        if state is not None and stored is not None:
            state.last, state.last_write = entry, time.monotonic()
            state.state_dirty = state.online is not online

    async def _write_state(self, label: str, key: str) -> None:
        """Store the key's last frame again with its current online state."""
        state = self._keys.get((label, key))
        if state is None:
            return
        if state.last is None:
            if state.ended:
                del self._keys[(label, key)]
            return
        entry = state.last.with_online(state.online)
        stored = await self._add(label, key, entry)
        if stored is not None:
            state.last, state.last_write, state.state_dirty = entry, time.monotonic(), False
        if state.ended and self._keys.get((label, key)) is state:
            del self._keys[(label, key)]

    async def _keep_alive(self) -> None:
        period = max(0.2, self.store.ttl_s / 3)
        while True:
            await asyncio.sleep(period)
            now = time.monotonic()
            for (label, key), state in list(self._keys.items()):
                if self._down_until is not None and now < self._down_until:
                    continue
                if state.ended:  # its offline entry was lost (queue full, outage): again
                    if now - state.last_write >= period:
                        await self._write_state(label, key)  # forgets the key once written
                    continue
                if state.last is None or now - state.last_write < period:
                    continue
                try:
                    if state.state_dirty or not await self.store.touch(label, key):
                        await self._write_state(label, key)
                    else:
                        state.last_write = now
                except StoreUnavailableError:
                    continue

    # ------------------------------------------------------------------ status

    @property
    def queue_depth(self) -> int:
        return len(self._queue)

    @property
    def store_online(self) -> bool:
        return self._down_until is None

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
