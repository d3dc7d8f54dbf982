"""TrickleReader: a trickle channel of MPEG-TS segments as a camera of the hub.

A ``trickle://host:port/channel`` source subscribes to the channel at ``-2`` (the segment
being written, which starts with an IDR, so the first frame comes at once) and feeds every
segment to one long-lived :class:`SegmentDecoder`, whose frames go straight into the hub's
latest-frame slot: one decode per channel whatever the number of subscribers, like any other
source.

Failures follow the other readers: the channel ending (404, ``Lp-Trickle-Closed``: the
publisher stopped), the subscriber giving up on errors, undecodable input, or no decoded frame
for ``stall_timeout_s`` while segments keep coming or not, mark the source offline, and it
reconnects after the backoff (a restarted publisher is picked up again) until ``max_retries``
consecutive failures.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Callable
from fractions import Fraction

import aiohttp
import av

from pytrickle_worker.core.logutil import mask_text
from pytrickle_worker.media.segment_decoder import SegmentDecoder
from pytrickle_worker.sources.config import IngestConfig
from pytrickle_worker.sources.reader import TaskReader
from pytrickle_worker.sources.source import SourceConfig, trickle_channel_url
from pytrickle_worker.transport.trickle.errors import TrickleError
from pytrickle_worker.transport.trickle.headers import SEQ_LATEST
from pytrickle_worker.transport.trickle.subscriber import TrickleSubscriber

__all__ = ["TrickleReader"]

logger = logging.getLogger(__name__)

#: How often the watchdog looks at the time of the last decoded frame.
_WATCH_INTERVAL_S = 0.25


class TrickleReader(TaskReader):
    """Subscribes to one trickle channel on the event loop; decodes on a thread."""

    task_kind = "trickle"

    def __init__(
        self,
        source: SourceConfig,
        config: IngestConfig,
        notify: Callable[[], None],
        *,
        try_nvdec: bool = False,
        rng: random.Random | None = None,
    ) -> None:
        super().__init__(source, config, notify, rng)
        self.channel_url = trickle_channel_url(source.target_url)
        self._try_nvdec = try_nvdec
        self._decoder: SegmentDecoder | None = None
        self._last_frame = 0.0
        self._session_frames = 0

    @property
    def stop_timeout_s(self) -> float:
        return 6.0  # the decoder thread is given 5 s to notice its closed input

    # ------------------------------------------------------------------ reading
    async def _run(self) -> None:
        previous_error: str | None = None
        timeout = aiohttp.ClientTimeout(total=None)
        try:
            async with aiohttp.ClientSession(timeout=timeout) as http:
                while True:
                    error = await self._session(http)
                    if self._session_frames > 0:
                        self._backoff.reset()
                        previous_error = None
                    delay = self._retry_delay(error)
                    if delay is None:
                        return
                    log = logger.warning if error != previous_error else logger.debug
                    log("%s: %s; reconnecting in %.2f s", self.label, error, delay)
                    previous_error = error
                    await asyncio.sleep(delay)
                    self.tracker.reconnecting()
        finally:
            self.tracker.stopped()

    async def _session(self, http: aiohttp.ClientSession) -> str:
        """Read the channel until it ends, fails or stalls; returns why it stopped."""

        def sink(frame: av.VideoFrame) -> None:
            # A decoder thread that outlived its session (stuck past close()) must not feed
            # stale frames, or hide a stall of the next session.
            if decoder is self._decoder:
                self._publish(frame)

        decoder = SegmentDecoder(
            frame_queue_size=1,
            pass_audio=False,
            try_nvdec=self._try_nvdec,
            nvdec_api=self.config.nvdec_api,
            decoder_threads=self.config.decoder_threads,
            max_video_pixels=self.config.max_video_pixels,
            frame_sink=sink,
            name=self.label,
        )
        subscriber = TrickleSubscriber(
            self.channel_url,
            start_seq=SEQ_LATEST,
            session=http,
            connect_timeout_s=self.config.open_timeout_s,
            read_timeout_s=self.config.read_timeout_s,
        )
        self._decoder = decoder
        self._session_frames = 0
        self._last_frame = time.monotonic()
        decoder.start()
        feeding = asyncio.ensure_future(self._feed(subscriber, decoder))
        try:
            return await self._watch(feeding, decoder)
        finally:
            feeding.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await feeding
            await subscriber.close()
            await decoder.close()
            self._decoder = None

    async def _feed(self, subscriber: TrickleSubscriber, decoder: SegmentDecoder) -> str:
        try:
            while (segment := await subscriber.next_segment()) is not None:
                self.tracker.packet()
                try:
                    if not await decoder.feed_segment(segment.chunks()):
                        break  # the decoder ended: its error says why
                except TrickleError as exc:  # one broken segment: the next one may be fine
                    logger.debug("%s: a segment broke off: %s", self.label, exc)
        except TrickleError as exc:
            return f"subscription failed: {mask_text(str(exc))}"
        if decoder.error is not None:
            return f"undecodable input: {decoder.error}"
        return "the trickle channel ended"

    async def _watch(self, feeding: asyncio.Future[str], decoder: SegmentDecoder) -> str:
        stall_s = self.config.stall_timeout_s
        while True:
            done, _ = await asyncio.wait({feeding}, timeout=_WATCH_INTERVAL_S)
            if done:
                return feeding.result()
            if decoder.ended and decoder.error is not None:
                return f"undecodable input: {decoder.error}"
            if time.monotonic() - self._last_frame > stall_s:
                return f"stalled: no frame decoded for {stall_s:g} s"

    def _publish(self, frame: av.VideoFrame) -> None:
        """The decoder thread's frame sink: into the latest-frame slot."""
        self._last_frame = time.monotonic()
        self._session_frames += 1
        time_base = frame.time_base or Fraction(1, 90_000)
        pts_time = float(frame.pts * time_base) if frame.pts is not None else None
        if self._publish_frame(frame, pts_time):
            decoder = self._decoder
            info = decoder.info if decoder is not None else None
            codec = info.codec if info is not None else "unknown"
            if decoder is not None and decoder.video_decoder is not None:
                self.tracker.decoder_info(codec, decoder.video_decoder, decoder.hw_decoder)
            else:
                self.tracker.decoder_info(codec, codec, False)
