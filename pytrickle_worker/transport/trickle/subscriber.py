"""Trickle subscriber: ``GET {url}/{seq}`` one segment after another, the next one preconnected.

Protocol rules (as go-livepeer's server expects them):

* Start at ``start_seq``: ``-2`` (the segment being written now, or the last one) or ``-1`` (the
  next one to be written), or an explicit index.
* 200: a segment; the next index is ``Lp-Trickle-Seq + 1``, and its GET is opened at once, while
  the caller still reads the current segment (preconnect).
* 470: the asked segment is not in the server's ring (overwritten, or too far ahead): jump to
  ``Lp-Trickle-Latest`` and ask again straight away.
* 404, or any response with ``Lp-Trickle-Closed``: the stream ended; ``next_segment`` returns
  None from then on.
* Anything else (5xx, other 4xx, connection errors) is retried after ``retry_delay_s``, up to
  ``max_retries`` times in a row, then :class:`TrickleError` is raised.

Timeouts: ``connect_timeout_s`` bounds the TCP connect, ``read_timeout_s`` bounds every wait for
bytes from the server (aiohttp ``sock_read``). There is no total timeout, so a long segment is
never cut. A GET for a segment that is not written yet gets no headers until data arrives; when
such a wait passes ``read_timeout_s``, the GET is simply made again for the same index (like
go-livepeer's subscriber refreshing a pending preconnect). That refresh is not counted as an error.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator

import aiohttp

from pytrickle_worker.core.logutil import mask_url
from pytrickle_worker.transport.trickle.errors import TrickleError, describe_error
from pytrickle_worker.transport.trickle.headers import (
    CLOSED_HEADER,
    LATEST_HEADER,
    SEQ_HEADER,
    SEQ_LATEST,
    SEQ_NEXT,
    STATUS_SEGMENT_MISSING,
    parse_int_header,
    segment_url,
)

logger = logging.getLogger(__name__)

DEFAULT_RETRY_DELAY_S = 0.5
# After this many 470 jumps in a row, wait retry_delay_s between them (a server misbehaving).
_FREE_JUMPS = 10
_ERROR_BODY_LIMIT = 512


class TrickleSegment:
    """One segment being received. Read it with :meth:`chunks` or :meth:`read_all`, once."""

    def __init__(self, response: aiohttp.ClientResponse, seq: int, url: str) -> None:
        self._response = response
        self.seq = seq
        self.url = url
        self.latest: int | None = parse_int_header(response.headers, LATEST_HEADER)
        """``Lp-Trickle-Latest`` when the server sent it (this segment is behind the live edge)."""
        self.content_type: str = response.headers.get("Content-Type", "")
        self._eos = CLOSED_HEADER in response.headers
        self._consumed = False
        self._done = False

    @property
    def closed(self) -> bool:
        """The end-of-stream flag: the response carried ``Lp-Trickle-Closed``.

        Servers send that header only on responses without data, which ``next_segment`` turns
        into None, so a segment it returns has ``closed`` False; kept for parity with
        pytrickle's ``Segment.eos()``.
        """
        return self._eos

    @property
    def done(self) -> bool:
        """The body was read to its end, or the segment was released."""
        return self._done

    async def chunks(self) -> AsyncIterator[bytes]:
        """The segment's bytes as they arrive. Raises :class:`TrickleError` if the body breaks."""
        if self._consumed:
            raise TrickleError(f"segment {self.seq} of {mask_url(self.url)} was already read")
        self._consumed = True
        try:
            async for chunk in self._response.content.iter_any():
                yield chunk
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise TrickleError(
                f"segment {self.seq} of {mask_url(self.url)} broke off: {describe_error(exc)}"
            ) from exc
        finally:
            self._release()

    async def read_all(self, limit: int) -> bytes:
        """The whole segment; :class:`TrickleError` if it is larger than ``limit`` bytes."""
        parts: list[bytes] = []
        size = 0
        async for chunk in self.chunks():
            size += len(chunk)
            if size > limit:
                raise TrickleError(
                    f"segment {self.seq} of {mask_url(self.url)} is larger than {limit} bytes"
                )
            parts.append(chunk)
        return b"".join(parts)

    async def close(self) -> None:
        """Stop reading this segment (the connection is dropped if the body was not finished)."""
        self._release()

    def _release(self) -> None:
        if not self._done:
            self._done = True
            self._response.release()


class TrickleSubscriber:
    """Reads a trickle channel segment by segment. Not safe for concurrent ``next_segment``."""

    def __init__(
        self,
        url: str,
        *,
        start_seq: int = SEQ_LATEST,
        session: aiohttp.ClientSession | None = None,
        connect_timeout_s: float = 10.0,
        read_timeout_s: float = 30.0,
        max_retries: int = 5,
        retry_delay_s: float = DEFAULT_RETRY_DELAY_S,
    ) -> None:
        if start_seq < SEQ_LATEST:
            raise ValueError(f"start_seq must be -2, -1 or an index, not {start_seq}")
        self.url = url.rstrip("/")
        self._seq = start_seq
        self._session = session
        self._own_session = session is None
        self._timeout = aiohttp.ClientTimeout(
            total=None, sock_connect=connect_timeout_s, sock_read=read_timeout_s
        )
        self.max_retries = max_retries
        self.retry_delay_s = retry_delay_s
        self._pending: tuple[int, asyncio.Task[aiohttp.ClientResponse]] | None = None
        self._current: TrickleSegment | None = None
        self._eos = False
        self._closed = False
        self.segments_received = 0
        self.jumps = 0
        """470 answers followed (the subscriber fell behind, or asked ahead)."""
        self.errors = 0
        """Failed attempts that were retried (connection errors, unexpected statuses)."""
        self.refreshes = 0
        """GETs made again after waiting ``read_timeout_s`` for a segment that did not come."""

    @property
    def seq(self) -> int:
        """The index the next GET asks for (negative until the first segment resolves it)."""
        return self._seq

    @property
    def ended(self) -> bool:
        """The server said the stream ended (404 or ``Lp-Trickle-Closed``)."""
        return self._eos

    async def __aenter__(self) -> TrickleSubscriber:
        return self

    async def __aexit__(self, *_exc: object) -> None:
        await self.close()

    async def next_segment(self) -> TrickleSegment | None:
        """The next segment, or None once the stream has ended.

        Calling it again ends the previous segment (its unread bytes are dropped).
        """
        if self._closed:
            raise TrickleError(f"subscriber of {mask_url(self.url)} is closed")
        if self._current is not None:
            await self._current.close()
            self._current = None
        if self._eos:
            return None
        failures = 0
        jumps = 0
        while True:
            seq = self._seq
            try:
                response = await self._take_response(seq)
            except aiohttp.SocketTimeoutError:
                # Nothing was published within read_timeout_s: ask again, not an error.
                self.refreshes += 1
                logger.debug("refreshing GET %s/%d", mask_url(self.url), seq)
                continue
            except (aiohttp.ClientError, OSError, TimeoutError) as exc:
                failures = await self._failed(seq, failures, describe_error(exc))
                continue
            status = response.status
            if status == 200:
                if CLOSED_HEADER in response.headers:
                    response.release()
                    self._ended(f"closed at seq {seq}")
                    return None
                got = parse_int_header(response.headers, SEQ_HEADER)
                if got is None:
                    got = seq
                if got >= 0:
                    self._seq = got + 1
                    self._preconnect(self._seq)
                segment = TrickleSegment(response, got, self.url)
                self._current = segment
                self.segments_received += 1
                return segment
            if status == STATUS_SEGMENT_MISSING:
                latest = parse_int_header(response.headers, LATEST_HEADER)
                response.release()
                if CLOSED_HEADER in response.headers:
                    self._ended(f"closed at seq {seq}")
                    return None
                self._seq = latest if latest is not None and latest >= 0 else SEQ_NEXT
                self.jumps += 1
                jumps += 1
                logger.info(
                    "trickle %s: segment %d is gone, jumping to %d",
                    mask_url(self.url),
                    seq,
                    self._seq,
                )
                if jumps > _FREE_JUMPS:
                    await asyncio.sleep(self.retry_delay_s)
                continue
            if status == 404:
                response.release()
                self._ended("channel not found (404)")
                return None
            detail = await _error_body(response)
            failures = await self._failed(seq, failures, f"HTTP {status} {detail}")

    async def close(self) -> None:
        """Drop the pending and current requests; close the session if this subscriber made it."""
        if self._closed:
            return
        self._closed = True
        await self._drop_pending()
        if self._current is not None:
            await self._current.close()
            self._current = None
        if self._own_session and self._session is not None:
            await self._session.close()
        self._session = None

    # -- internals -----------------------------------------------------------------------------

    def _ended(self, why: str) -> None:
        self._eos = True
        logger.info("trickle subscription %s ended: %s", mask_url(self.url), why)

    async def _failed(self, seq: int, failures: int, why: str) -> int:
        failures += 1
        self.errors += 1
        if failures > self.max_retries:
            raise TrickleError(
                f"GET {mask_url(self.url)}/{seq} failed {failures} times, last: {why}"
            )
        logger.warning(
            "GET %s/%d failed (%s); retry %d/%d",
            mask_url(self.url),
            seq,
            why,
            failures,
            self.max_retries,
        )
        await asyncio.sleep(self.retry_delay_s)
        return failures

    def _get_session(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession()
        return self._session

    async def _request(self, seq: int) -> aiohttp.ClientResponse:
        return await self._get_session().get(segment_url(self.url, seq), timeout=self._timeout)

    def _preconnect(self, seq: int) -> None:
        task = asyncio.create_task(self._request(seq), name=f"trickle-preconnect-{seq}")
        self._pending = (seq, task)

    async def _take_response(self, seq: int) -> aiohttp.ClientResponse:
        pending, self._pending = self._pending, None
        if pending is not None:
            pending_seq, task = pending
            if pending_seq == seq:
                return await task
            await _drop_task(task)
        return await self._request(seq)

    async def _drop_pending(self) -> None:
        pending, self._pending = self._pending, None
        if pending is not None:
            await _drop_task(pending[1])


async def _drop_task(task: asyncio.Task[aiohttp.ClientResponse]) -> None:
    """Cancel a pending GET (or release its response if it already came)."""
    task.cancel()
    await asyncio.wait({task})
    if not task.cancelled() and task.exception() is None:
        task.result().release()


async def _error_body(response: aiohttp.ClientResponse) -> str:
    try:
        body = await response.content.read(_ERROR_BODY_LIMIT)
    except (aiohttp.ClientError, TimeoutError):
        body = b""
    finally:
        response.release()
    return body.decode("utf-8", "replace").strip()
