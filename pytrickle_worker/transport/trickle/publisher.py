"""Trickle publisher: one ``POST {url}/{seq}`` per segment, its body streamed as it is produced.

* Segments are numbered from ``start_seq`` (0). The POST for a segment is opened as soon as the
  segment is asked for, and the POST for the segment after it is opened in advance
  (preconnect), so its connection and request headers are ready when the next segment starts.
* Each POST body is a chunked stream fed by a bounded queue (``max_queued_chunks``). A full
  queue is backpressure, not loss: :meth:`SegmentWriter.write` waits up to ``write_timeout_s``
  for room. Dropping bytes out of the middle of a segment would corrupt it (an MPEG-TS segment
  with a hole does not decode), so a segment whose transport stalls longer than that is
  abandoned as a whole (its POST aborted, later writes to it dropped and counted).
* A POST that fails (non-2xx, connection error, no response within ``response_timeout_s`` after
  its body ended, or an answer before its body ended) is logged and counted; the next segment is
  a new POST and works normally. A preconnected POST that is already over when its segment
  starts (the server released it because the segment or channel closed, or it could not
  connect) is replaced by a fresh POST, so no data is written into a dead request.
* ``reset_on_start`` adds ``Lp-Trickle-Reset: 1`` to the first POST: use it when a publisher
  restarts on a channel that already had a publisher, so the server releases subscribers stuck
  on the old sequence.
* :meth:`TricklePublisher.close` sends ``DELETE {url}`` (unless ``delete=False``): subscribers
  see the end of the stream.

Timeouts: ``connect_timeout_s`` bounds the TCP connect (aiohttp ``sock_connect``); there is no
total or socket-read timeout on a POST, whose body may legitimately stream (or wait for its
first byte) for a long time. ``response_timeout_s`` bounds the wait for the server's answer
once the body has ended.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass

import aiohttp

from pytrickle_worker.core.logutil import mask_url
from pytrickle_worker.transport.trickle.errors import TrickleError, describe_error
from pytrickle_worker.transport.trickle.headers import (
    CLOSED_HEADER,
    RESET_HEADER,
    SEQ_HEADER,
    parse_int_header,
    segment_url,
)

logger = logging.getLogger(__name__)

_ERROR_BODY_LIMIT = 512


@dataclass
class PublisherStats:
    """Counters of one publisher, for logs and health reports."""

    segments: int = 0
    """Segments started (``next_segment`` calls)."""
    posts_ok: int = 0
    posts_failed: int = 0
    """POSTs that got a non-2xx answer, a connection error or no answer in time."""
    segments_abandoned: int = 0
    """Segments given up because the transport stalled for ``write_timeout_s``."""
    bytes_sent: int = 0
    """Bytes handed to POST bodies."""
    bytes_dropped: int = 0
    """Bytes written to segments whose POST had already failed or been abandoned."""


class SegmentWriter:
    """The body of one segment's POST. Write to it, then :meth:`close` it."""

    def __init__(
        self,
        *,
        session: aiohttp.ClientSession,
        url: str,
        seq: int,
        headers: dict[str, str],
        timeout: aiohttp.ClientTimeout,
        max_queued_chunks: int,
        write_timeout_s: float,
        response_timeout_s: float,
        stats: PublisherStats,
    ) -> None:
        self.seq = seq
        self.url = url
        self._queue: asyncio.Queue[bytes | None] = asyncio.Queue(max_queued_chunks)
        self._write_timeout_s = write_timeout_s
        self._response_timeout_s = response_timeout_s
        self._stats = stats
        self._ended = False
        self._closed = False
        self.status: int | None = None
        """The HTTP status of the POST once answered."""
        self.server_seq: int | None = None
        """``Lp-Trickle-Seq`` from the server's answer (the index it wrote)."""
        self.error: str | None = None
        """Why the POST failed, if it did."""
        self.bytes_written = 0
        """Bytes queued for the body."""
        self.bytes_out = 0
        """Bytes of the body handed to the connection (0 if it never connected): what the
        server may have received."""
        self._task = asyncio.create_task(
            self._post(session, url, headers, timeout), name=f"trickle-post-{seq}"
        )

    @property
    def ok(self) -> bool:
        """The POST was answered with a 2xx status."""
        return self.status is not None and 200 <= self.status < 300

    @property
    def finished(self) -> bool:
        """The POST is over (answered, failed or aborted)."""
        return self._task.done()

    @property
    def failed(self) -> bool:
        """The POST failed or was abandoned; further writes are dropped."""
        return self.error is not None or (self.status is not None and not self.ok)

    async def write(self, data: bytes) -> None:
        """Queue ``data`` for the POST body; waits (bounded) while the transport catches up."""
        if self._ended:
            raise TrickleError(f"segment {self.seq} of {mask_url(self.url)} is already closed")
        if not data:
            return
        if self._task.done() or self.failed or not await self._put(data):
            self._stats.bytes_dropped += len(data)
            return
        self.bytes_written += len(data)
        self._stats.bytes_sent += len(data)

    async def close(self) -> None:
        """End the body and wait for the server's answer (failures are logged and counted)."""
        if self._closed:
            return
        self._closed = True
        self._ended = True
        if not self._task.done():
            await self._put(None)
        done, _ = await asyncio.wait({self._task}, timeout=self._response_timeout_s)
        if not done:
            await self._abort(f"no answer {self._response_timeout_s} s after the body ended")
        self._account()

    async def abort(self) -> None:
        """Abandon the POST without ending its body (the connection is dropped)."""
        if self._closed:
            return
        self._closed = True
        self._ended = True
        if self.error is None and not self._task.done():
            self.error = "aborted"
        self._task.cancel()
        await asyncio.wait({self._task})

    async def _put(self, item: bytes | None) -> bool:
        """Queue ``item``; False (and the segment abandoned) if there was no room in time."""
        if not self._queue.full():
            self._queue.put_nowait(item)
            return True
        put = asyncio.ensure_future(self._queue.put(item))
        try:
            await asyncio.wait(
                {put, self._task},
                timeout=self._write_timeout_s,
                return_when=asyncio.FIRST_COMPLETED,
            )
        finally:
            if not put.done():
                put.cancel()
            await asyncio.wait({put})
        if not put.cancelled() and put.exception() is None:
            return True
        if not self._task.done():
            await self._abandon(f"transport stalled for {self._write_timeout_s} s")
        return False

    async def _abandon(self, why: str) -> None:
        self._stats.segments_abandoned += 1
        await self._abort(why)

    async def _abort(self, why: str) -> None:
        if self.error is None:
            self.error = why
        self._task.cancel()
        await asyncio.wait({self._task})

    def _account(self) -> None:
        if self.ok:
            self._stats.posts_ok += 1
            return
        self._stats.posts_failed += 1
        logger.warning(
            "trickle POST %s failed: %s",
            mask_url(self.url),
            self.error or f"HTTP {self.status}",
        )

    async def _body(self) -> AsyncIterator[bytes]:
        # An empty first chunk makes aiohttp put the request headers on the wire now rather
        # than with the first data, so the server sees a preconnected POST at once.
        yield b""
        while True:
            chunk = await self._queue.get()
            if chunk is None:
                return
            self.bytes_out += len(chunk)
            yield chunk

    async def _post(
        self,
        session: aiohttp.ClientSession,
        url: str,
        headers: dict[str, str],
        client_timeout: aiohttp.ClientTimeout,
    ) -> None:
        try:
            async with session.post(
                url, data=self._body(), headers=headers, timeout=client_timeout
            ) as response:
                self.status = response.status
                self.server_seq = parse_int_header(response.headers, SEQ_HEADER)
                if not self.ok:
                    body = await response.content.read(_ERROR_BODY_LIMIT)
                    self.error = f"HTTP {response.status} {body.decode('utf-8', 'replace')}"
                elif not self._ended:
                    # A 2xx before our body ended: the server released the POST (its segment
                    # or channel was closed), so whatever is written now would be lost.
                    closed = CLOSED_HEADER in response.headers
                    self.error = "answered before the body ended" + (
                        " (channel closed)" if closed else " (segment closed on the server)"
                    )
        except asyncio.CancelledError:
            if self.error is None:
                self.error = "cancelled"
            raise
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            self.error = describe_error(exc)


class TricklePublisher:
    """Publishes segments to one trickle channel, in order. Not safe for concurrent use."""

    def __init__(
        self,
        url: str,
        mime_type: str,
        *,
        session: aiohttp.ClientSession | None = None,
        reset_on_start: bool = False,
        start_seq: int = 0,
        connect_timeout_s: float = 10.0,
        response_timeout_s: float = 30.0,
        write_timeout_s: float = 10.0,
        max_queued_chunks: int = 64,
    ) -> None:
        if start_seq < 0:
            raise ValueError("start_seq must be >= 0")
        if max_queued_chunks <= 0:
            raise ValueError("max_queued_chunks must be positive")
        self.url = url.rstrip("/")
        self.mime_type = mime_type
        self._session = session
        self._own_session = session is None
        self._reset_pending = reset_on_start
        self._seq = start_seq
        self._timeout = aiohttp.ClientTimeout(
            total=None, sock_connect=connect_timeout_s, sock_read=None
        )
        self._response_timeout_s = response_timeout_s
        self._write_timeout_s = write_timeout_s
        self._max_queued_chunks = max_queued_chunks
        self._current: SegmentWriter | None = None
        self._next: SegmentWriter | None = None
        self._closed = False
        self.stats = PublisherStats()

    @property
    def seq(self) -> int:
        """The index the next :meth:`next_segment` will publish."""
        return self._seq

    async def __aenter__(self) -> TricklePublisher:
        return self

    async def __aexit__(self, *_exc: object) -> None:
        await self.close()

    async def next_segment(self) -> SegmentWriter:
        """Start the next segment (the previous one is closed first if it is still open)."""
        if self._closed:
            raise TrickleError(f"publisher of {mask_url(self.url)} is closed")
        if self._current is not None:
            await self._current.close()
            self._current = None
        seq = self._seq
        writer, self._next = self._next, None
        if writer is not None and (writer.seq != seq or writer.finished):
            # A preconnect that already ended (connection error, or released by the server
            # because its segment or channel closed) cannot carry data: open a fresh POST.
            await writer.abort()
            writer = None
        if writer is None:
            writer = self._open(seq)
        self._next = self._open(seq + 1)
        self._seq = seq + 1
        self._current = writer
        self.stats.segments += 1
        return writer

    async def publish(self, data: bytes) -> bool:
        """Publish ``data`` as one whole segment; True when the server took it (2xx)."""
        writer = await self.next_segment()
        await writer.write(data)
        await writer.close()
        self._current = None
        return not writer.failed

    async def close(self, delete: bool = True) -> None:
        """Finish the open segment, drop the preconnected one, and ``DELETE`` the channel."""
        if self._closed:
            return
        self._closed = True
        try:
            if self._current is not None:
                await self._current.close()
                self._current = None
            if self._next is not None:
                # Dropped, not ended: an empty body would count as a segment on the server.
                await self._next.abort()
                self._next = None
            if delete:
                await self._delete()
        finally:
            if self._own_session and self._session is not None:
                await self._session.close()
            self._session = None

    def _get_session(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession()
        return self._session

    def _open(self, seq: int) -> SegmentWriter:
        headers = {"Content-Type": self.mime_type}
        if self._reset_pending:
            headers[RESET_HEADER] = "1"
            self._reset_pending = False
        return SegmentWriter(
            session=self._get_session(),
            url=segment_url(self.url, seq),
            seq=seq,
            headers=headers,
            timeout=self._timeout,
            max_queued_chunks=self._max_queued_chunks,
            write_timeout_s=self._write_timeout_s,
            response_timeout_s=self._response_timeout_s,
            stats=self.stats,
        )

    async def _delete(self) -> None:
        timeout = aiohttp.ClientTimeout(
            total=self._response_timeout_s, sock_connect=self._timeout.sock_connect
        )
        try:
            async with self._get_session().delete(self.url, timeout=timeout) as response:
                if response.status >= 300:
                    logger.info(
                        "trickle DELETE %s answered %d", mask_url(self.url), response.status
                    )
                else:
                    logger.info("trickle channel %s deleted", mask_url(self.url))
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            logger.warning("trickle DELETE %s failed: %s", mask_url(self.url), describe_error(exc))
