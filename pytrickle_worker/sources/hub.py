"""CameraHub: one reader per normalised source, shared by refcounted subscriptions.

Readers publish only the *latest* frame of their source (a slot, never a queue) and wake the
waiting subscribers through ``core.wakeup``. Each :class:`Subscription` samples
that slot at its own target fps, never takes the same frame twice, and gets the RGB image
converted once per frame for all subscribers (in the hub's worker threads, never on the
event loop), then cropped as a read-only view.
"""

from __future__ import annotations

import asyncio
import logging
import math
import random
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from types import TracebackType

from pytrickle_worker.core.cpus import host_cores
from pytrickle_worker.core.rate import RateSampler
from pytrickle_worker.core.threads import name_os_thread
from pytrickle_worker.core.wakeup import call_on_loop
from pytrickle_worker.media.nvdec import resolve_nvdec
from pytrickle_worker.sources.config import IngestConfig
from pytrickle_worker.sources.crop import CropBox, clip_crop, validate_crop
from pytrickle_worker.sources.errors import CropError, HubNotStartedError, IngestError
from pytrickle_worker.sources.frame import CameraFrame, DecodedFrame, RgbArray
from pytrickle_worker.sources.reader import SourceReader
from pytrickle_worker.sources.snapshot import SnapshotReader
from pytrickle_worker.sources.source import SourceConfig
from pytrickle_worker.sources.status import SourceStatus
from pytrickle_worker.sources.stream import StreamReader
from pytrickle_worker.sources.trickle import TrickleReader

__all__ = ["CameraHub", "Subscription"]

logger = logging.getLogger(__name__)


class _FrameSignal:
    """Wakes every subscriber waiting for a source's next frame.

    ``waiting`` counts the subscribers blocked on the signal; the reader thread wakes the
    event loop only when it is non-zero, so frames that arrive while every subscriber sleeps
    out its fps interval cost no loop wake-up. No wake-up is lost: a subscriber raises
    ``waiting`` *before* it looks at the slot one last time, and the reader publishes into
    the slot *before* it reads ``waiting`` (both under the GIL), so either the subscriber
    sees the new frame or the reader sees the subscriber.
    """

    def __init__(self) -> None:
        self._event = asyncio.Event()
        self.waiting = 0  # written on the event loop only

    def waiter(self) -> asyncio.Event:
        return self._event

    def fire(self) -> None:
        event, self._event = self._event, asyncio.Event()
        event.set()


def _shortest_interval(entry: _Source, fallback_s: float) -> float:
    """The shortest snapshot interval any current subscriber of ``entry`` asked for."""
    return min(
        (subscription.source.snapshot_interval_s for subscription in entry.subscriptions),
        default=fallback_s,
    )


class _Source:
    """A reader and the subscriptions that keep it alive."""

    def __init__(
        self, key: str, reader: SourceReader, signal: _FrameSignal, generation: int = 0
    ) -> None:
        self.key = key
        #: Tells this reader from an earlier one of the same source (its frames number from 1).
        self.generation = generation
        self.reader = reader
        self.signal = signal
        self.subscriptions: set[Subscription] = set()
        self.mismatch_warned = False

    def status(self) -> SourceStatus:
        return self.reader.status(len(self.subscriptions))


class Subscription:
    """One consumer of a camera: its own fps and crop. Use it from one task at a time."""

    def __init__(
        self,
        hub: CameraHub,
        entry: _Source,
        config: SourceConfig,
        target_fps: float,
        crop: CropBox | None,
    ) -> None:
        self._hub = hub
        self._entry = entry
        self.source = config
        self.target_fps = target_fps
        self.crop = crop
        # Wall-clock spacing: no frame sooner than 1/target_fps after the last one taken.
        self._sampler = RateSampler(target_fps, on_grid=False)
        self._last_seq = 0
        self._closed = False
        self._closed_event = asyncio.Event()
        self._clip_warned = False
        self.frames_taken = 0
        #: Frames of the source this subscription never took (its fps sampling, and any lag):
        #: always ``frames_skipped_sampler + frames_skipped_overload``.
        self.frames_skipped = 0
        #: Skipped frames the sampler would not have taken anyway: each was replaced by a
        #: newer one before the subscription's next frame was due (1/target_fps after the
        #: last one taken).
        self.frames_skipped_sampler = 0
        #: Skipped frames the sampler would have taken: each was still the source's newest
        #: frame at some moment at or after the due time, but the subscription was busy
        #: (processing the last frame, or its event loop late) and a newer one replaced it.
        self.frames_skipped_overload = 0
        #: The last crop error (the frame size made the crop impossible), else None.
        self.error: str | None = None

    @property
    def closed(self) -> bool:
        return self._closed

    def move_to(self, entry: _Source) -> None:
        """Hub use: follow the new reader of this source (its frames number from 1 again)."""
        self._entry = entry
        self._last_seq = 0

    @property
    def status(self) -> SourceStatus:
        """The shared source's status (online, last error, fps, size, decoder, …)."""
        return self._entry.status()

    @property
    def latest_frame_id(self) -> tuple[str, tuple[int, int]] | None:
        """Which frame :meth:`latest` would give now, as ``(source, (reader, number))``, the
        same for every subscriber of the source (a key for caching what is made of it; a
        restarted reader numbers its frames from 1 again); None before the first frame or
        once closed."""
        slot = self._entry.reader.slot.latest
        if slot is None or self._closed:
            return None
        return self._entry.key, (self._entry.generation, slot.seq)

    async def next_frame(
        self,
        timeout: float | None = None,  # noqa: ASYNC109 - the documented contract
        *,
        convert: bool = True,
    ) -> CameraFrame | None:
        """The next frame newer than the last one returned, no sooner than 1/target_fps after
        it. None on timeout, or once the subscription is closed.

        ``convert=False`` skips the RGB conversion of an uncropped frame (and its hop to a
        conversion thread): the frame's ``pixels`` convert on first use, off the loop.

        Raises :class:`CropError` when the crop lies entirely outside this frame (the frame
        counts as taken, so the next call waits for a newer one).
        """
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        while True:
            if self._closed:
                return None
            now = loop.time()
            wait = self._sampler.wait_s(now)
            if wait > 0:
                if deadline is not None and now + wait > deadline:
                    await self._sleep(deadline - now)
                    return None
                await self._sleep(wait)
                continue
            slot = self._new_frame()
            if slot is not None:
                break
            remaining = None if deadline is None else deadline - now
            if remaining is not None and remaining <= 0:
                return None
            signal = self._entry.signal
            waiter = signal.waiter()
            signal.waiting += 1
            try:
                slot = self._new_frame()  # published before the reader could see us waiting?
                if slot is not None:
                    break
                # asyncio.timeout, not wait_for: on Python 3.11 wait_for can swallow a
                # cancellation that arrives as its timeout fires, and a subscription's
                # processing task then runs on after its stop.
                async with asyncio.timeout(remaining):
                    await waiter.wait()
            except TimeoutError:
                return None
            finally:
                signal.waiting -= 1
        if self._last_seq:
            self._count_skipped(slot.seq, loop)
        self._last_seq = slot.seq
        self._sampler.take(loop.time())
        frame = await self._to_camera_frame(slot, convert=convert)
        if frame is not None:
            self.frames_taken += 1
            self._entry.reader.tracker.delivered()
        return frame

    def _count_skipped(self, seq: int, loop: asyncio.AbstractEventLoop) -> None:
        """Count the frames between the last one taken and ``seq`` (about to be taken).

        The sampler's due time (``next_due``, before this take) splits them: a frame that
        was still the newest at or after it is one the subscription would have taken had
        it been asking (overload); one replaced before it was never going to be taken
        (sampler). The slot's publish times are monotonic clock seconds: the due time (on
        the loop's clock) is moved onto that clock first.
        """
        skipped = max(0, seq - self._last_seq - 1)
        if not skipped:
            return
        due = self._sampler.next_due
        if due is None:  # no interval in force: every frame was due
            overload = skipped
        else:
            since = due - loop.time() + time.monotonic()
            overload = self._entry.reader.slot.newest_after(self._last_seq, seq, since)
        overload = min(overload, skipped)
        self.frames_skipped += skipped
        self.frames_skipped_overload += overload
        self.frames_skipped_sampler += skipped - overload

    def _new_frame(self) -> DecodedFrame | None:
        slot = self._entry.reader.slot.latest
        return slot if slot is not None and slot.seq > self._last_seq else None

    async def latest(self, *, cropped: bool = True) -> CameraFrame | None:
        """The source's newest frame (cropped unless ``cropped`` is False), without
        affecting :meth:`next_frame`."""
        slot = self._entry.reader.slot.latest
        if slot is None or self._closed:
            return None
        return await self._to_camera_frame(slot, cropped=cropped)

    async def _sleep(self, seconds: float) -> None:
        if seconds <= 0:
            return
        try:
            async with asyncio.timeout(seconds):  # not wait_for: see next_frame
                await self._closed_event.wait()
        except TimeoutError:
            return

    async def _to_camera_frame(
        self, slot: DecodedFrame, *, convert: bool = True, cropped: bool = True
    ) -> CameraFrame | None:
        width, height = slot.width, slot.height
        x1, y1, x2, y2 = 0, 0, width, height
        if self.crop is not None and cropped:
            try:
                rect, clipped = clip_crop(self.crop, width, height)
            except CropError as exc:
                self.error = str(exc)
                raise
            if clipped and not self._clip_warned:
                self._clip_warned = True
                logger.warning(
                    "%s: crop (%d, %d, %d, %d) extends outside the %dx%d frame; clipped to "
                    "(%d, %d, %d, %d)",
                    self._entry.reader.label,
                    self.crop.x1,
                    self.crop.y1,
                    self.crop.x2,
                    self.crop.y2,
                    width,
                    height,
                    *rect,
                )
            x1, y1, x2, y2 = rect
        self.error = None
        whole = (x1, y1, x2, y2) == (0, 0, width, height)
        rgb = slot.rgb_ready
        if rgb is None and (convert or not whole):
            rgb = await self._hub.convert(slot)
            if rgb is None:
                return None
        if rgb is not None and not whole:
            rgb = rgb[y1:y2, x1:x2]
        return CameraFrame(
            seq=slot.seq,
            capture_time=slot.capture_time,
            pts_time=slot.pts_time,
            width=x2 - x1,
            height=y2 - y1,
            source_width=width,
            source_height=height,
            converted=rgb,
            pixels=slot if whole else None,
        )

    def mark_closed(self) -> None:
        """Hub use: end the subscription without releasing it (the hub is stopping)."""
        self._closed = True
        self._closed_event.set()

    async def close(self) -> None:
        """Leave the camera; the last subscription to leave stops the reader and waits for its
        connection to close (an open or read in progress cannot be interrupted, so this can
        take up to the reader's open/read timeout; cancelling the wait does not cancel the
        stop)."""
        if self._closed:
            return
        self.mark_closed()
        await self._hub.release(self, self._entry)

    async def __aenter__(self) -> Subscription:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.close()


class CameraHub:
    """Shares camera readers between subscribers; see the module docstring."""

    def __init__(
        self,
        config: IngestConfig | None = None,
        *,
        rng: random.Random | None = None,
        cores: int | None = None,
    ):
        self.config = config if config is not None else IngestConfig()
        self._rng = rng
        self._sources: dict[str, _Source] = {}
        self._generations = 0
        self._stopping: set[_Source] = set()  # readers whose last subscriber left
        self._loop: asyncio.AbstractEventLoop | None = None
        self._executor: ThreadPoolExecutor | None = None
        self._nvdec = False
        #: The cores the decoders share (the process's usable cores unless given).
        self._cores = cores if cores is not None else host_cores()

    def decoder_threads(self) -> int:
        """Software decoder threads for a camera session opening now: the configured count,
        else one as soon as the hub runs as many sources as the process has cores (below
        that, 0: FFmpeg's frame+slice threads, so a lone camera may use several cores).

        One thread per camera costs 5-20% less CPU per frame than frame threading
        (bench/RESULTS.md, "Decoder threads and priorities"); with a camera per core the
        cores are used anyway. Called from reader threads: ``len`` of the sources is one
        atomic read.
        """
        if self.config.decoder_threads > 0:
            return self.config.decoder_threads
        return 1 if len(self._sources) >= self._cores else 0

    # ------------------------------------------------------------------ lifecycle
    async def start(self) -> None:
        """Create the conversion threads and decide NVDEC (NVML is asked once, off-loop)."""
        if self._loop is not None:
            return
        loop = asyncio.get_running_loop()
        workers = self.config.convert_threads or min(4, host_cores())
        executor = ThreadPoolExecutor(
            max_workers=workers,
            thread_name_prefix="ingest-convert",
            initializer=name_os_thread,
            initargs=("ptw-convert",),
        )
        mode = self.config.hw_decode
        if mode == "off":
            self._nvdec = False
        else:
            resolve = partial(resolve_nvdec, mode, api=self.config.nvdec_api)
            self._nvdec = await loop.run_in_executor(executor, resolve)
        self._loop, self._executor = loop, executor
        logger.info(
            "camera hub started: %s decoding, %d conversion threads",
            "NVDEC (software fallback)" if self._nvdec else "software",
            workers,
        )

    async def stop(self) -> None:
        """Close every subscription and reader, and the conversion threads."""
        sources = list(self._sources.values())
        self._sources.clear()
        for source in sources:
            for subscription in source.subscriptions:
                subscription.mark_closed()
            source.subscriptions.clear()
            source.reader.request_stop()
            source.signal.fire()
        sources.extend(self._stopping)  # a cancelled close() left its reader stopping
        self._stopping.clear()
        await asyncio.gather(*(self._wait_reader(source) for source in sources))
        executor, self._executor, self._loop = self._executor, None, None
        if executor is not None:
            executor.shutdown(wait=False)  # in-flight conversions finish; threads then exit

    async def __aenter__(self) -> CameraHub:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.stop()

    @property
    def nvdec(self) -> bool:
        """Whether readers try NVDEC for H.264/HEVC (``hw_decode`` resolved at start)."""
        return self._nvdec

    # ------------------------------------------------------------------ subscriptions
    def subscribe(
        self, source: SourceConfig, *, target_fps: float, crop: CropBox | None = None
    ) -> Subscription:
        """Subscribe to ``source``; the first subscriber of its normalised URL starts a reader.

        Raises :class:`CropError` for a crop that can never select a pixel (empty, entirely
        left of/above the frame, or outside the frame size already known for the source).
        """
        loop = self._loop
        if loop is None or self._executor is None:
            raise HubNotStartedError("await CameraHub.start() before subscribing")
        if not (math.isfinite(target_fps) and target_fps > 0):
            raise IngestError(f"target_fps must be a positive number, got {target_fps!r}")
        if crop is not None:
            validate_crop(crop)
        key = source.key
        entry = self._sources.get(key)
        if entry is not None and entry.status().gave_up:
            entry = self._restart(entry, loop)
        if entry is None:
            entry = self._create_source(key, source, loop)
        else:
            if crop is not None:
                latest = entry.reader.slot.latest
                if latest is not None:
                    validate_crop(crop, (latest.width, latest.height))
            settings = entry.reader.source.reader_settings
            if settings != source.reader_settings and not entry.mismatch_warned:
                entry.mismatch_warned = True
                logger.warning(
                    "%s: a subscriber asked for other reader settings than the running "
                    "reader's; it shares the running reader",
                    entry.reader.label,
                )
        subscription = Subscription(self, entry, source, target_fps, crop)
        entry.subscriptions.add(subscription)
        if isinstance(entry.reader, SnapshotReader):
            entry.reader.interval_changed()  # it may ask for snapshots more often
        return subscription

    def _restart(self, dead: _Source, loop: asyncio.AbstractEventLoop) -> _Source:
        """A new reader for a source whose reader gave up (``max_retries``), taking over its
        subscriptions: a new subscriber asks for the camera again, and the ones already there
        would otherwise wait on a dead reader until every one of them left."""
        status = dead.status()
        logger.warning(
            "%s: its reader gave up after %d consecutive failures (%s); a new subscriber "
            "starts it again",
            dead.reader.label,
            status.consecutive_failures,
            status.last_error,
        )
        del self._sources[dead.key]
        dead.reader.request_stop()  # it has returned already; this only closes what is left
        entry = self._create_source(dead.key, dead.reader.source, loop)
        for subscription in dead.subscriptions:
            subscription.move_to(entry)
            entry.subscriptions.add(subscription)
        dead.subscriptions.clear()
        dead.signal.fire()  # its waiters wake and wait on the new reader
        return entry

    def _create_source(
        self, key: str, source: SourceConfig, loop: asyncio.AbstractEventLoop
    ) -> _Source:
        assert self._executor is not None
        signal = _FrameSignal()
        notify = _threadsafe_notifier(loop, signal)
        reader: SourceReader
        if source.kind == "snapshot":
            reader = SnapshotReader(source, self.config, notify, self._executor, rng=self._rng)
        elif source.kind == "trickle":
            reader = TrickleReader(
                source, self.config, notify, try_nvdec=self._nvdec, rng=self._rng
            )
        else:
            reader = StreamReader(
                source,
                self.config,
                notify,
                try_nvdec=self._nvdec,
                rng=self._rng,
                decoder_threads=self.decoder_threads,
            )
        self._generations += 1
        entry = _Source(key, reader, signal, self._generations)
        if isinstance(reader, SnapshotReader):
            reader.interval = partial(_shortest_interval, entry, source.snapshot_interval_s)
        self._sources[key] = entry
        reader.start(loop)
        logger.info("%s: %s reader started", reader.label, source.kind)
        return entry

    async def release(self, subscription: Subscription, entry: _Source) -> None:
        """Called by :meth:`Subscription.close`; the last one out stops the reader."""
        entry.subscriptions.discard(subscription)
        entry.signal.fire()
        if entry.subscriptions or self._sources.get(entry.key) is not entry:
            return
        del self._sources[entry.key]
        entry.reader.request_stop()
        self._stopping.add(entry)
        try:
            await self._wait_reader(entry)
        finally:
            self._stopping.discard(entry)

    async def _wait_reader(self, entry: _Source) -> None:
        reader = entry.reader
        if await reader.wait_stopped(reader.stop_timeout_s):
            logger.info("%s: reader stopped", reader.label)
        else:
            logger.warning(
                "%s: reader did not stop within %.1f s; it will exit on its own",
                reader.label,
                reader.stop_timeout_s,
            )

    async def convert(self, slot: DecodedFrame) -> RgbArray | None:
        """``slot.to_rgb()`` in a conversion thread; None when the hub has stopped."""
        executor, loop = self._executor, self._loop
        if executor is None or loop is None:
            return None
        try:
            return await loop.run_in_executor(executor, slot.to_rgb)
        except RuntimeError:  # the executor shut down while we were scheduling
            return None

    # ------------------------------------------------------------------ status
    def statuses(self) -> list[SourceStatus]:
        """Every active source's status (masked)."""
        return [entry.status() for entry in self._sources.values()]

    def status(self, source: SourceConfig) -> SourceStatus | None:
        entry = self._sources.get(source.key)
        return entry.status() if entry is not None else None

    def subscriber_count(self, source: SourceConfig) -> int:
        entry = self._sources.get(source.key)
        return len(entry.subscriptions) if entry is not None else 0


def _threadsafe_notifier(
    loop: asyncio.AbstractEventLoop, signal: _FrameSignal
) -> Callable[[], None]:
    """The reader's ``notify``: wake the loop only when a subscriber waits for a frame."""

    def notify() -> None:
        if signal.waiting:
            call_on_loop(loop, signal.fire)

    return notify
