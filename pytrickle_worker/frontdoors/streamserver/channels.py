"""The side channels of a stream session: events (out), data (out) and control (in).

None of them can stop the video: every failure is logged, counted and retried, and every
queue is bounded (the oldest entry goes first).

* :class:`ChannelPublisher` wraps a :class:`TricklePublisher` so that a POST that failed
  before any of its body went out is retried at the same index (a new publisher starting
  there): a subscriber waiting on that index is never left behind a gap. One that failed
  part-way moves on to the next index, as pytrickle does: posting the index again would
  make go-livepeer's server reset a segment a subscriber may be reading (it would get the
  first attempt cut off, or its head joined to the second's tail). A 404 means the channel
  is gone (the gateway deleted it): nothing more is posted to it.
* :class:`EventsChannel`: one JSON object per segment, ``{"event": {...},
  "queue_event_type": "..."}``, from a drop-oldest queue.
* :class:`DataChannel`: every ``interval_s`` the records taken from the processor are
  published as ``application/jsonl`` segments, each a JSON array of strings, each one
  record's JSON text, then ``"\\n"``: pytrickle queues strings (``publish_data(str)``) and
  sends ``json.dumps(list) + "\\n"``, so its readers decode each item again. A segment
  holds at most ``MAX_DATA_SEGMENT_BYTES`` (the rest follows in the next); a record too large
  on its own is dropped and counted. ``[]\\n`` after ``keepalive_s`` of silence.
* :class:`ControlChannel`: one JSON object per segment; ``{"keep": "alive"}`` is ignored and
  everything else is handed to a callback.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, cast

import aiohttp

from pytrickle_worker.core.backoff import Backoff
from pytrickle_worker.core.logutil import mask_url
from pytrickle_worker.core.queues import DropOldestQueue
from pytrickle_worker.frontdoors.streamserver.manager import ApiError
from pytrickle_worker.transport.json_body import parse_json
from pytrickle_worker.transport.trickle import (
    SegmentWriter,
    TrickleError,
    TricklePublisher,
    TrickleSubscriber,
)

__all__ = [
    "JSONL_MIME",
    "JSON_MIME",
    "KEEPALIVE_MESSAGE",
    "MAX_DATA_SEGMENT_BYTES",
    "ChannelPublisher",
    "ControlChannel",
    "DataChannel",
    "EventsChannel",
    "now_ms",
]

logger = logging.getLogger(__name__)

JSON_MIME = "application/json"
JSONL_MIME = "application/jsonl"
#: The most serialised text one data segment carries: go-livepeer's gateway reads data
#: segments line by line with a ``bufio.Scanner``, whose lines stop at 64 KiB ("token too
#: long": the gateway reads the segment again and its records are lost).
MAX_DATA_SEGMENT_BYTES = 60 * 1024
#: What the gateway writes to the control channel every 10 s.
KEEPALIVE_MESSAGE: dict[str, Any] = {"keep": "alive"}


def now_ms() -> int:
    """Wall-clock milliseconds since the epoch (event timestamps)."""
    return int(time.time() * 1000)


def _dumps(value: object) -> str:
    # default=str: a processor record with a non-JSON value (numpy scalar, datetime) is
    # published as text rather than failing the whole batch.
    return json.dumps(value, separators=(",", ":"), default=str)


async def _bounded(work: Coroutine[Any, Any, object], timeout_s: float) -> None:
    """Run ``work`` for at most ``timeout_s``; then it is cancelled. Network failures are
    swallowed (closing a channel must not fail the stop)."""
    with contextlib.suppress(TrickleError, aiohttp.ClientError, OSError, TimeoutError):
        async with asyncio.timeout(max(0.0, timeout_s)):
            await work


class ChannelPublisher:
    """A trickle publisher that re-publishes at the same index after a POST that failed
    before sending anything, and stops at a 404 (see the module docs)."""

    def __init__(self, url: str, mime_type: str, http: aiohttp.ClientSession) -> None:
        self.url = url
        self.mime_type = mime_type
        self._http = http
        self._publisher = TricklePublisher(url, mime_type, session=http)
        self.segments_ok = 0
        self.segments_failed = 0
        #: The server answered 404: the channel no longer exists.
        self.gone = False

    @property
    def next_seq(self) -> int:
        """The index the next segment goes to."""
        return self._publisher.seq

    async def begin(self) -> SegmentWriter:
        """Open the next segment's POST (TrickleError once the channel is gone)."""
        if self.gone:
            raise TrickleError(f"trickle channel {mask_url(self.url)} is gone (404)")
        return await self._publisher.next_segment()

    async def end(self, writer: SegmentWriter) -> bool:
        """Finish a segment; True when the server took it. After a failure the next segment
        goes to the same index if none of this one's body went out, else to the next."""
        await writer.close()
        if not writer.failed:
            self.segments_ok += 1
            return True
        self.segments_failed += 1
        old = self._publisher
        if writer.status == 404:
            if not self.gone:
                logger.warning(
                    "trickle channel %s is gone (404): nothing more is published to it",
                    mask_url(self.url),
                )
            self.gone = True
        else:
            start = writer.seq if writer.bytes_out == 0 else writer.seq + 1
            self._publisher = TricklePublisher(
                self.url, self.mime_type, session=self._http, start_seq=start
            )
        with contextlib.suppress(TrickleError):
            await old.close(delete=False)
        return False

    async def publish(self, data: bytes) -> bool:
        """Publish ``data`` as one segment; True when the server took it."""
        writer = await self.begin()
        try:
            await writer.write(data)
        except TrickleError:
            await writer.abort()
        return await self.end(writer)

    async def close(self, *, delete: bool) -> None:
        """Finish what is open; ``delete`` also removes the channel (subscribers see EOS)."""
        await self._publisher.close(delete=delete)


class EventsChannel:
    """Publishes monitoring events, one per segment, from a bounded drop-oldest queue."""

    def __init__(
        self,
        url: str,
        http: aiohttp.ClientSession,
        *,
        queue_size: int = 64,
        retry_initial_s: float = 0.5,
        retry_max_s: float = 10.0,
    ) -> None:
        self.url = url
        self._publisher = ChannelPublisher(url, JSON_MIME, http)
        self._queue: DropOldestQueue[bytes] = DropOldestQueue(queue_size)
        self._backoff = Backoff(retry_initial_s, retry_max_s, jitter=False)
        self.sent = 0
        self.failures = 0
        self._task: asyncio.Task[None] | None = None

    @property
    def dropped(self) -> int:
        return self._queue.dropped

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(
                self._run(), name=f"events-{mask_url(self.url)}"
            )

    def emit(self, event: dict[str, Any], queue_event_type: str) -> None:
        """Queue one event (never blocks; the oldest queued event goes when full)."""
        envelope = {"event": event, "queue_event_type": queue_event_type}
        self._queue.put(_dumps(envelope).encode())

    async def _run(self) -> None:
        pending: bytes | None = None
        while True:
            if pending is None:
                pending = await self._queue.get()
                if pending is None:
                    return
            try:
                ok = await self._publisher.publish(pending)
            except (TrickleError, aiohttp.ClientError, OSError) as exc:
                logger.warning("events channel %s: %r", mask_url(self.url), exc)
                ok = False
            if ok:
                self.sent += 1
                pending = None
                self._backoff.reset()
                continue
            self.failures += 1
            if self._publisher.gone:
                self._queue.close()  # what is queued, and what comes, is dropped
                return
            delay = self._backoff.failed()
            logger.warning(
                "events channel %s: publish failed; retrying in %.1f s", mask_url(self.url), delay
            )
            await asyncio.sleep(delay)

    async def close(self, timeout: float = 3.0) -> None:  # noqa: ASYNC109
        """Publish what is queued, then close without DELETE (the gateway owns the channel
        and may still be reading the last events); all within ``timeout``, after which what
        is left is abandoned (its task cancelled)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        self._queue.close()
        task, self._task = self._task, None
        if task is not None:
            done, _ = await asyncio.wait({task}, timeout=timeout)
            if not done:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            elif not task.cancelled() and task.exception() is not None:
                logger.warning("events channel task failed: %r", task.exception())
        await _bounded(self._publisher.close(delete=False), deadline - loop.time())


class DataChannel:
    """Publishes the processor's records as JSONL batches every ``interval_s``."""

    def __init__(
        self,
        url: str,
        http: aiohttp.ClientSession,
        take: Callable[[], list[dict[str, Any]]],
        *,
        interval_s: float = 1.0 / 3.0,
        keepalive_s: float = 25.0,
        max_pending: int = 1000,
        retry_max_s: float = 10.0,
    ) -> None:
        self.url = url
        self.interval_s = interval_s
        self.keepalive_s = keepalive_s
        self._take = take
        self._publisher = ChannelPublisher(url, JSONL_MIME, http)
        #: Records as they go into a segment: each one's JSON text as a JSON string.
        self._pending: deque[str] = deque(maxlen=max_pending)
        self._backoff = Backoff(interval_s, retry_max_s, jitter=False)
        self._last_publish = time.monotonic()
        self._task: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()
        self.records_sent = 0
        self.records_dropped = 0
        self.batches_sent = 0
        self.failures = 0

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(
                self._run(), name=f"data-{mask_url(self.url)}"
            )

    def _collect(self) -> None:
        try:
            records = self._take()
        except Exception:
            logger.exception("processor take_data failed")
            return
        items: list[str] = []
        for record in records:
            # Items are JSON text, as pytrickle's are: readers written for it decode each.
            item = _dumps(_dumps(record))
            if len(item) + len("[]\n") > MAX_DATA_SEGMENT_BYTES:
                self.records_dropped += 1
                logger.warning(
                    "data channel %s: a record of %d bytes is over the %d bytes of a segment; "
                    "dropped",
                    mask_url(self.url),
                    len(item),
                    MAX_DATA_SEGMENT_BYTES,
                )
                continue
            items.append(item)
        room = (self._pending.maxlen or 0) - len(self._pending)
        if len(items) > room:
            self.records_dropped += len(items) - room
        self._pending.extend(items)

    async def flush(self) -> bool:
        """Take the processor's records and publish what is pending, a segment of at most
        ``MAX_DATA_SEGMENT_BYTES`` at a time; True when nothing is left pending."""
        async with self._lock:
            self._collect()
            if not self._pending and time.monotonic() - self._last_publish < self.keepalive_s:
                return True
            while True:
                items = self._next_batch()
                payload = ("[" + ",".join(items) + "]\n").encode()
                try:
                    ok = await self._publisher.publish(payload)
                except (TrickleError, aiohttp.ClientError, OSError) as exc:
                    logger.warning("data channel %s: %r", mask_url(self.url), exc)
                    ok = False
                if not ok:
                    self.failures += 1
                    return False
                self._pop(len(items))
                self._last_publish = time.monotonic()
                self.records_sent += len(items)
                self.batches_sent += 1
                if not self._pending:
                    return True

    def _next_batch(self) -> list[str]:
        """The oldest pending items that fit one segment (at least one: each fits alone)."""
        items: list[str] = []
        size = len("[]\n")
        for item in self._pending:
            if items and size + len(item) + 1 > MAX_DATA_SEGMENT_BYTES:
                break
            items.append(item)
            size += len(item) + 1
        return items

    def _pop(self, count: int) -> None:
        for _ in range(count):
            self._pending.popleft()

    async def _run(self) -> None:
        delay = self.interval_s
        while True:
            await asyncio.sleep(delay)
            if await self.flush():
                self._backoff.reset()
                delay = self.interval_s
            elif self._publisher.gone:
                return
            else:
                delay = max(self.interval_s, self._backoff.failed())
                logger.warning(
                    "data channel %s: publish failed; retrying in %.1f s (%d records pending)",
                    mask_url(self.url),
                    delay,
                    len(self._pending),
                )

    async def close(self, timeout: float = 3.0) -> None:  # noqa: ASYNC109
        """Publish the last records and close without DELETE, all within ``timeout``; what
        is left then is abandoned (its task cancelled)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        task, self._task = self._task, None
        if task is not None:
            # Never cancel a publish half-way: the server may have the batch already, and
            # the final flush would send it again.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(max(0.0, deadline - loop.time())):
                    await self._lock.acquire()
            try:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            finally:
                if self._lock.locked():
                    self._lock.release()
        await _bounded(self.flush(), deadline - loop.time())
        await _bounded(self._publisher.close(delete=False), deadline - loop.time())


class ControlChannel:
    """Reads control messages (one JSON object per segment) and hands them to ``on_message``.

    Keepalives are dropped; malformed messages are logged and skipped; an exception from
    ``on_message`` is logged and never ends the loop. A failing subscription is re-opened
    where it stopped, with backoff; the loop ends when the channel ends (404 / closed).
    """

    def __init__(
        self,
        url: str,
        http: aiohttp.ClientSession,
        on_message: Callable[[dict[str, Any]], Awaitable[None]],
        *,
        max_bytes: int = 1024 * 1024,
        start_seq: int = -2,
        retry_initial_s: float = 0.5,
        retry_max_s: float = 10.0,
    ) -> None:
        self.url = url
        self._http = http
        self._on_message = on_message
        self._max_bytes = max_bytes
        self._seq = start_seq
        self._backoff = Backoff(retry_initial_s, retry_max_s, jitter=False)
        self._task: asyncio.Task[None] | None = None
        self.messages = 0
        self.keepalives = 0
        self.errors = 0

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(
                self._run(), name=f"control-{mask_url(self.url)}"
            )

    async def _run(self) -> None:
        while True:
            subscriber = TrickleSubscriber(self.url, start_seq=self._seq, session=self._http)
            try:
                while True:
                    segment = await subscriber.next_segment()
                    if segment is None:
                        logger.info("control channel %s ended", mask_url(self.url))
                        return
                    self._backoff.reset()
                    try:
                        data = await segment.read_all(self._max_bytes)
                    except TrickleError as exc:
                        self.errors += 1
                        logger.warning("control message skipped: %s", exc)
                        continue
                    finally:
                        self._seq = max(subscriber.seq, 0)
                    await self._handle(data)
            except (TrickleError, aiohttp.ClientError, OSError) as exc:
                delay = self._backoff.failed()
                logger.warning(
                    "control channel %s failed (%s); resubscribing in %.1f s",
                    mask_url(self.url),
                    exc,
                    delay,
                )
            finally:
                await subscriber.close()
            await asyncio.sleep(delay)

    async def _handle(self, data: bytes) -> None:
        try:
            # Bounded like a REST body (nesting, number length): a hostile message is
            # skipped, never a RecursionError that ends the control loop.
            message: object = parse_json(data.decode("utf-8"))
        except (UnicodeDecodeError, ApiError) as exc:
            self.errors += 1
            logger.warning("control message is not JSON: %s", exc)
            return
        if not isinstance(message, dict):
            self.errors += 1
            logger.warning("control message is not a JSON object: %.100r", message)
            return
        params = cast("dict[str, Any]", message)  # JSON object keys are strings
        if params == KEEPALIVE_MESSAGE:
            self.keepalives += 1
            return
        self.messages += 1
        try:
            await self._on_message(params)
        except Exception:
            self.errors += 1
            logger.exception("control message handler failed")

    async def close(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
