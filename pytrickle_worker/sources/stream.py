"""StreamReader: one thread per video source (RTSP, HTTP MPEG-TS/MJPEG/HLS, local file).

The thread opens the source with PyAV (RTSP over TCP by default, socket timeouts, an
open/read timeout that installs PyAV's interrupt callback), decodes in software with the
threads the hub gives it (one, or FFmpeg's frame+slice threads) or with NVDEC, and
replaces the source's latest-frame slot with every decoded frame: nothing is queued, so a
slow subscriber only ever misses frames. A watchdog ends the session when no frame was
decoded for ``stall_timeout_s``; every failed or ended session is followed by a reconnect
after an exponential, jittered backoff, until ``max_retries`` consecutive failures. All of
it runs on the reader's thread; the event loop only reads the slot and the status.
"""

from __future__ import annotations

import asyncio
import logging
import random
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from typing import cast

import av
import av.container
from av.error import ExitError, FFmpegError, InvalidDataError
from av.packet import Packet
from av.video.stream import VideoStream

from pytrickle_worker.core.logutil import mask_text
from pytrickle_worker.core.threads import name_os_thread
from pytrickle_worker.core.wakeup import call_on_loop
from pytrickle_worker.media.nvdec import VideoDecoder, VideoTooLargeError, pixel_limit_options
from pytrickle_worker.media.options import format_hint, needs_sniff, open_options, sniff_format
from pytrickle_worker.sources.config import IngestConfig
from pytrickle_worker.sources.reader import SourceReader
from pytrickle_worker.sources.source import SourceConfig, local_path

__all__ = ["StreamReader", "describe_error"]

logger = logging.getLogger(__name__)

#: Lateness (seconds) after which a paced file stops trying to catch up and restarts its clock.
_MAX_PACING_LAG_S = 1.0
#: A paced file waits at most this long for one frame (a pts jump must not freeze the reader).
_MAX_PACING_WAIT_S = 5.0


def describe_error(exc: BaseException) -> str:
    """A short, credential-free description of an open/read failure."""
    if isinstance(exc, FFmpegError):
        text = exc.strerror or str(exc)
        return mask_text(f"{type(exc).__name__}: {text}")
    return mask_text(f"{type(exc).__name__}: {exc}")


@dataclass
class _Outcome:
    """How a session ended: ``error`` None and not ``finished`` means a requested stop."""

    frames: int
    error: str | None
    finished: bool = False


class _Pacer:
    """Releases a file's frames at their presentation times, like a live camera."""

    def __init__(self, stop: threading.Event, frame_interval_s: float) -> None:
        self._stop = stop
        self._interval = frame_interval_s
        self._origin: float | None = None  # monotonic time of pts 0
        self._last_pts: float | None = None

    def wait(self, pts: float | None) -> bool:
        """Sleep until ``pts`` is due; False when a stop was requested meanwhile."""
        now = time.monotonic()
        if pts is None:
            pts = (self._last_pts + self._interval) if self._last_pts is not None else 0.0
        if self._origin is None or self._last_pts is None:
            self._origin = now - pts
        elif pts < self._last_pts:  # the file looped: continue one frame after the last one
            self._origin = now + self._interval - pts
        due = self._origin + pts
        if now - due > _MAX_PACING_LAG_S or due - now > _MAX_PACING_WAIT_S:
            self._origin = now - pts
            due = now
        self._last_pts = pts
        delay = due - now
        if delay > 0:
            return not self._stop.wait(delay)
        return not self._stop.is_set()


class StreamReader(SourceReader):
    """Reads one video source on its own thread and publishes the latest frame."""

    def __init__(
        self,
        source: SourceConfig,
        config: IngestConfig,
        notify: Callable[[], None],
        *,
        try_nvdec: bool = False,
        rng: random.Random | None = None,
        decoder_threads: Callable[[], int] | None = None,
    ) -> None:
        super().__init__(source, config, notify, rng)
        #: Software decoder threads for a session opening now (0: FFmpeg's choice); asked at
        #: every (re)connect, so the hub can size it from the cameras it runs then.
        self._decoder_threads = decoder_threads or (lambda: config.decoder_threads)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._exited: asyncio.Event | None = None
        self._try_nvdec = try_nvdec
        self._nvdec_failed = False
        self._format: str | None = source.format or format_hint(source.target_url)
        self._sniff_pending = self._format is None and needs_sniff(source.target_url)
        # A read may block at most this long: the interrupt callback and socket timeouts make
        # a silent peer fail within the stall timeout too.
        self._read_timeout = min(config.read_timeout_s, config.stall_timeout_s)

    # ------------------------------------------------------------------ control (event loop)
    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        if self._thread is not None:
            return
        self._loop = loop
        self._exited = asyncio.Event()
        self._thread = threading.Thread(
            target=self._run, name=f"ingest {self.label}"[:64], daemon=True
        )
        self._thread.start()

    def request_stop(self) -> None:
        self._stop.set()

    async def wait_stopped(self, within_s: float) -> bool:
        exited, thread = self._exited, self._thread
        if exited is None or thread is None:
            return True
        loop = asyncio.get_running_loop()
        deadline = loop.time() + within_s
        try:
            async with asyncio.timeout(within_s):
                await exited.wait()
        except TimeoutError:
            return False
        # The thread signalled from its last lines; let it finish without blocking the loop
        # (no asyncio primitive reports a thread's end, and join() would block).
        while thread.is_alive() and loop.time() < deadline:  # noqa: ASYNC110
            await asyncio.sleep(0.001)
        return not thread.is_alive()

    @property
    def stop_timeout_s(self) -> float:
        """Longest a stop can take: an open (connect, then probe: each bounded by
        ``open_timeout_s``) or a read in progress is not interruptible."""
        return max(2 * self.config.open_timeout_s, self._read_timeout) + 1.0

    # ------------------------------------------------------------------ reader thread
    def _run(self) -> None:
        name_os_thread("ptw-ingest")  # a role, not the camera's URL
        try:
            self._read_loop()
        except Exception as exc:  # a reader must never die silently
            # The traceback is masked too: exception texts may quote the camera URL.
            details = mask_text("".join(traceback.format_exception(exc)))
            logger.error("camera reader for %s crashed:\n%s", self.label, details)
            self.tracker.failed(f"reader crashed: {describe_error(exc)}", self._backoff.failures)
        finally:
            if self._stop.is_set():
                self.tracker.stopped()
            self._signal_exit()

    def _signal_exit(self) -> None:
        loop, exited = self._loop, self._exited
        if loop is None or exited is None:
            return
        if not call_on_loop(loop, exited.set):
            logger.debug("reader of %s exited after its event loop closed", self.label)

    def _read_loop(self) -> None:
        previous_error: str | None = None
        while not self._stop.is_set():
            outcome = self._session()
            if self._stop.is_set():
                break
            if outcome.finished:
                self.tracker.finished()
                logger.info("%s: end of file after %d frames", self.label, outcome.frames)
                break
            if outcome.frames > 0:
                self._backoff.reset()
                previous_error = None
            error = outcome.error or "stream ended"
            delay = self._retry_delay(error)
            if delay is None:
                break
            failures = self._backoff.failures
            log = logger.warning if error != previous_error else logger.debug
            log("%s: %s; reconnecting in %.2f s (failure %d)", self.label, error, delay, failures)
            previous_error = error
            if self._stop.wait(delay):
                break
            self.tracker.reconnecting()

    def _resolve_format(self) -> str | None:
        if self._sniff_pending:
            answer = sniff_format(self.source.target_url, self.config.open_timeout_s)
            if answer.answered:
                self._sniff_pending = False
                self._format = answer.format
        return self._format

    def _open(self, demuxer: str | None) -> av.container.InputContainer:
        url = self.source.target_url
        target = str(local_path(url)) if self.source.is_file else url
        transport = self.source.rtsp_transport or self.config.rtsp_transport
        return av.open(
            target,
            mode="r",
            format=demuxer,
            options={
                **open_options(url, self._read_timeout, transport, self.config.analyze_duration_s),
                **pixel_limit_options(self.config.max_video_pixels),
            },
            timeout=(self.config.open_timeout_s, self._read_timeout),
        )

    def _on_nvdec_fallback(self, reason: str) -> None:
        if not self._nvdec_failed:
            self._nvdec_failed = True
            logger.info(
                "%s: NVDEC is not usable (%s); decoding in software", self.label, mask_text(reason)
            )

    def _session(self) -> _Outcome:
        demuxer = self._resolve_format()
        if self._stop.is_set():
            return _Outcome(0, None)
        try:
            container = self._open(demuxer)
        except (ExitError, TimeoutError):  # the interrupt callback, or a socket timeout
            return _Outcome(0, f"timed out opening after {self.config.open_timeout_s:g} s")
        except (FFmpegError, OSError) as exc:
            return _Outcome(0, describe_error(exc))
        counter = [0]
        try:
            with container:
                return self._decode(container, counter)
        except (ExitError, TimeoutError):  # the interrupt callback, or a socket timeout
            return _Outcome(counter[0], f"stalled: no data for {self._read_timeout:g} s")
        except (FFmpegError, OSError) as exc:
            return _Outcome(counter[0], describe_error(exc))
        except VideoTooLargeError as exc:
            return _Outcome(counter[0], str(exc))

    def _decode(self, container: av.container.InputContainer, counter: list[int]) -> _Outcome:
        if not container.streams.video:
            return _Outcome(0, "the source has no video stream")
        stream = container.streams.video[0]
        decoder = VideoDecoder(
            stream,
            try_nvdec=self._try_nvdec and not self._nvdec_failed,
            threads=self._decoder_threads(),
            on_fallback=self._on_nvdec_fallback,
            api=self.config.nvdec_api,
            max_pixels=self.config.max_video_pixels,
        )
        decoder_name = decoder.name
        self.tracker.decoder_info(decoder.codec, decoder_name, decoder.hardware)
        rate = stream.average_rate or stream.guessed_rate
        pacer: _Pacer | None = None
        if self.source.is_file and self.source.realtime:
            pacer = _Pacer(self._stop, 1.0 / float(rate) if rate else 1.0 / 25.0)
        stall_s = self.config.stall_timeout_s
        last_frame = time.monotonic()
        corrupt_in_session = 0
        while True:
            frames_this_pass = 0
            # Every stream's packets, not the video's alone: PyAV reads and drops the others
            # inside one demux step, so a camera whose video froze while its audio (or ONVIF
            # metadata) flows would never come back here to notice the stall.
            for packet in container.demux():
                if self._stop.is_set():
                    return _Outcome(counter[0], None)
                if packet.stream_index == stream.index:
                    if packet.size:
                        self.tracker.packet()
                    try:
                        frames = decoder.decode(cast("Packet[VideoStream]", packet))
                    except InvalidDataError as exc:
                        frames = []
                        corrupt_in_session += 1
                        total = self.tracker.corrupt_packet()
                        log = logger.warning if corrupt_in_session == 1 else logger.debug
                        log(
                            "%s: corrupt packet skipped (%d so far): %s",
                            self.label,
                            total,
                            describe_error(exc),
                        )
                    if decoder.name != decoder_name:
                        decoder_name = decoder.name
                        self.tracker.decoder_info(decoder.codec, decoder_name, decoder.hardware)
                    for frame in frames:
                        pts_time = frame.time
                        if pacer is not None and not pacer.wait(pts_time):
                            return _Outcome(counter[0], None)
                        self._publish_frame(frame, pts_time)
                        counter[0] += 1
                        frames_this_pass += 1
                        last_frame = time.monotonic()
                if time.monotonic() - last_frame > stall_s:
                    return _Outcome(counter[0], f"stalled: no frame decoded for {stall_s:g} s")
            if self._stop.is_set():
                return _Outcome(counter[0], None)
            if not self.source.is_file:
                return _Outcome(counter[0], "stream ended (end of file from the server)")
            if not self.source.loop:
                return _Outcome(counter[0], None, finished=True)
            if frames_this_pass == 0:
                return _Outcome(counter[0], "the file has no decodable frames")
            container.seek(0)
            decoder.flush()
