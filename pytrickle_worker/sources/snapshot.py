"""SnapshotReader: fetch a still image every interval (aiohttp) and decode it with PyAV.

One fetch per interval whatever the number of subscribers; every subscriber gets the same
decoded image. Failures (refused, timeouts, HTTP errors, undecodable bodies) mark the source
offline and are retried at the interval, or later when the backoff is longer, until
``max_retries`` consecutive failures.

Credentials in the URL (``http://user:pass@cam/snapshot.jpg``) go as Basic auth; a camera
that answers 401 with a Digest challenge (Hikvision ISAPI, Dahua ``snapshot.cgi``, Axis by
default) is asked again at once with Digest auth, which the reader then keeps using.
"""

from __future__ import annotations

import asyncio
import io
import logging
import random
from collections.abc import Callable
from concurrent.futures import Executor
from urllib.parse import unquote, urlsplit, urlunsplit

import aiohttp
import av
from av.error import FFmpegError

from pytrickle_worker.core.logutil import mask_text
from pytrickle_worker.media.images import ImageError, ImageLimitError, probe_image
from pytrickle_worker.media.nvdec import (
    MAX_VIDEO_PIXELS,
    VideoTooLargeError,
    check_video_size,
    pixel_limit_options,
)
from pytrickle_worker.sources.config import IngestConfig
from pytrickle_worker.sources.reader import TaskReader
from pytrickle_worker.sources.source import SourceConfig

__all__ = ["SnapshotError", "SnapshotReader", "decode_image"]

logger = logging.getLogger(__name__)

#: Largest snapshot body accepted (a 4K JPEG is a few MB).
MAX_SNAPSHOT_BYTES = 32 * 1024 * 1024


class SnapshotError(Exception):
    """A snapshot could not be fetched or decoded; the message is credential-free."""


def decode_image(data: bytes, max_pixels: int = MAX_VIDEO_PIXELS) -> tuple[av.VideoFrame, str]:
    """The first video frame of an encoded image (JPEG, PNG, …) and its codec. Blocking.

    A JPEG or PNG is checked from its header first (FFmpeg decodes the first picture while
    it opens the file): one that declares more than ``max_pixels`` (a "decompression bomb":
    a few hundred kB declaring 12000x12000 took 627 MB), or a JPEG of more scans than any
    camera writes (each decoded whole), is refused before a pixel is decoded. A header this
    check cannot read (cameras write imperfect JPEGs) is left to FFmpeg, which refuses more
    than about ``max_pixels`` itself, as it does for other formats."""
    try:
        info = probe_image(data)
    except ImageLimitError as exc:
        raise SnapshotError(f"the snapshot is not a valid image: {exc}") from None
    except ImageError:
        pass  # another format, or a header only FFmpeg can read
    else:
        _check_pixels(info.width, info.height, max_pixels)
    try:
        with av.open(io.BytesIO(data), mode="r", options=pixel_limit_options(max_pixels)) as box:
            if not box.streams.video:
                raise SnapshotError("the snapshot is not an image")
            stream = box.streams.video[0]
            codec = stream.codec_context.name
            for frame in box.decode(stream):
                _check_pixels(frame.width, frame.height, max_pixels)
                return frame, codec
    except FFmpegError as exc:
        raise SnapshotError(f"the snapshot cannot be decoded: {exc.strerror or exc}") from exc
    raise SnapshotError("the snapshot holds no image")


def _check_pixels(width: int, height: int, max_pixels: int) -> None:
    try:
        check_video_size(width, height, max_pixels, what="snapshot")
    except VideoTooLargeError as exc:
        raise SnapshotError(str(exc)) from None


async def _read_body(response: aiohttp.ClientResponse) -> bytes:
    """The whole body, up to :data:`MAX_SNAPSHOT_BYTES`.

    Not ``content.read(n)``: that returns what has arrived so far, and a camera writes a
    large JPEG in pieces; the first piece still decodes, as an image grey below it. A body
    cut short of its Content-Length raises (aiohttp's ``ClientPayloadError``).
    """
    chunks: list[bytes] = []
    size = 0
    async for chunk in response.content.iter_chunked(256 * 1024):
        size += len(chunk)
        if size > MAX_SNAPSHOT_BYTES:
            raise SnapshotError(f"the snapshot is larger than {MAX_SNAPSHOT_BYTES} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


async def _body(response: aiohttp.ClientResponse) -> bytes:
    """A snapshot response's image bytes; :class:`SnapshotError` for an HTTP error, an empty
    body or one over the limit."""
    if response.status >= 400:
        raise SnapshotError(f"HTTP {response.status} {response.reason or ''}".strip())
    declared = response.content_length
    if declared is not None and declared > MAX_SNAPSHOT_BYTES:
        raise SnapshotError(f"the snapshot is larger than {MAX_SNAPSHOT_BYTES} bytes ({declared})")
    body = await _read_body(response)
    if not body:
        raise SnapshotError("the snapshot is empty")
    return body


class SnapshotReader(TaskReader):
    """Polls ``snapshot_url`` every ``snapshot_interval_ms`` on the event loop."""

    task_kind = "snapshot"

    def __init__(
        self,
        source: SourceConfig,
        config: IngestConfig,
        notify: Callable[[], None],
        executor: Executor,
        *,
        rng: random.Random | None = None,
    ) -> None:
        super().__init__(source, config, notify, rng)
        self._executor = executor
        self._previous_error: str | None = None
        #: The interval between fetches (seconds); the hub points it at the shortest interval
        #: its subscribers asked for, so a display sharing a camera with a slower one gets
        #: its own rate. Alone: the source's.
        self.interval: Callable[[], float] = lambda: source.snapshot_interval_s
        #: Set when :attr:`interval` may have shortened (a faster subscriber joined): the
        #: wait for the next fetch is measured again.
        self._interval_changed = asyncio.Event()
        #: The URL without its credentials and a session that answers Digest challenges
        #: with them, once the camera asked for Digest; None while Basic (or nothing) works.
        self._digest: tuple[str, aiohttp.ClientSession] | None = None

    @property
    def stop_timeout_s(self) -> float:
        return 5.0

    def _digest_session(
        self, response: aiohttp.ClientResponse
    ) -> tuple[str, aiohttp.ClientSession] | None:
        """The URL and session for Digest auth when ``response`` is a Digest challenge to a
        URL that carries credentials; else None."""
        challenge = response.headers.get("WWW-Authenticate", "")
        if response.status != 401 or not challenge.lower().lstrip().startswith("digest"):
            return None
        parts = urlsplit(self.source.target_url)
        if parts.username is None:
            return None
        login, password = unquote(parts.username), unquote(parts.password or "")
        netloc = parts.netloc.rpartition("@")[2]
        bare = urlunsplit((parts.scheme, netloc, parts.path, parts.query, ""))
        session = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=self.config.snapshot_timeout_s),
            middlewares=(aiohttp.DigestAuthMiddleware(login, password),),
        )
        logger.info("%s: the camera asks for Digest auth; using it", self.label)
        return bare, session

    async def _fetch(self, session: aiohttp.ClientSession) -> bytes:
        asked_digest = self._digest is not None
        url, client = self._digest or (self.source.target_url, session)
        try:
            async with client.get(url) as response:
                digest = None if asked_digest else self._digest_session(response)
                if digest is None:
                    return await _body(response)
            # Asked again at once (the 401 released first), with Digest from now on.
            self._digest = digest
            async with digest[1].get(digest[0]) as response:
                return await _body(response)
        except TimeoutError as exc:
            raise SnapshotError(
                f"timed out after {self.config.snapshot_timeout_s:g} s fetching the snapshot"
            ) from exc
        except aiohttp.ClientError as exc:
            raise SnapshotError(mask_text(f"{type(exc).__name__}: {exc}")) from exc

    def interval_changed(self) -> None:
        """Hub use (on its loop): :attr:`interval` may be shorter now."""
        self._interval_changed.set()

    async def _wait_next(self, started: float, wait: float) -> None:
        """Until ``started`` + the interval (measured again when it changes), or + ``wait``
        when that is longer (a failure's backoff)."""
        loop = asyncio.get_running_loop()
        changed = self._interval_changed
        backoff = wait > self.interval()
        while (remaining := started + (wait if backoff else self.interval()) - loop.time()) > 0:
            changed.clear()
            try:
                async with asyncio.timeout(remaining):
                    await changed.wait()
            except TimeoutError:
                return

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        timeout = aiohttp.ClientTimeout(total=self.config.snapshot_timeout_s)
        try:
            async with aiohttp.ClientSession(timeout=timeout) as session:
                while True:
                    started = loop.time()
                    wait = await self._poll_once(session)
                    if wait is None:
                        return
                    await self._wait_next(started, wait)
        finally:
            if self._digest is not None:
                await self._digest[1].close()
                self._digest = None
            self.tracker.stopped()

    async def _poll_once(self, session: aiohttp.ClientSession) -> float | None:
        """Fetch, decode and publish one snapshot; the wait before the next, None to give up."""
        interval = self.interval()
        if self._previous_error is not None:
            self.tracker.reconnecting()
        self.tracker.packet()
        try:
            body = await self._fetch(session)
            frame, codec = await asyncio.get_running_loop().run_in_executor(
                self._executor, decode_image, body, self.config.max_video_pixels
            )
        except SnapshotError as exc:
            error = mask_text(str(exc))
            delay = self._retry_delay(error)
            if delay is None:
                return None
            log = logger.debug if error == self._previous_error else logger.warning
            log("%s: snapshot failed: %s", self.label, error)
            self._previous_error = error
            return max(interval, delay)
        self._backoff.reset()
        self._previous_error = None
        self.tracker.decoder_info(codec, codec, False)
        self.slot.publish(frame, None)
        if self.tracker.frame(frame.width, frame.height):
            logger.info(
                "%s: online, %dx%d snapshots every %g s",
                self.label,
                frame.width,
                frame.height,
                interval,
            )
        return interval
