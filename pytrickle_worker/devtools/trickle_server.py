"""A trickle server that behaves on the wire like go-livepeer's ``trickle/trickle_server.go``.

Routes, under ``base_path`` (default ``/``):

==============================  ===========================================================
``POST {base}{ch}``             create the channel (404 unless ``autocreate``); MIME type
                                from ``Expect-Content``
``GET {base}{ch}/next``         the next write index, as text and in ``Lp-Trickle-Latest``
``GET {base}{ch}/{idx}``        subscribe to one segment (``-1`` next write, ``-2`` latest)
``POST {base}{ch}/{idx}``       publish one segment with a (chunked) body (``-1`` = next)
``DELETE {base}{ch}/{idx}``     close one segment
``DELETE {base}{ch}``           close and remove the channel (200, or 400 "Invalid stream")
==============================  ===========================================================

Behaviour worth knowing (the same as go-livepeer unless marked *ours*):

* Each channel keeps a ring of five segments; segment ``idx`` lives in slot ``idx % 5`` and a
  newer segment overwrites the older one in its slot. A POST for an ``idx`` below the next
  write index therefore overwrites its slot and moves the next write index back to
  ``idx + 1`` on its first byte: this is how a publisher that restarts from 0 is treated.
* A GET for the next write index (or for 1 while nothing was written yet) pre-creates the
  segment and blocks until data arrives. Data is streamed to every subscriber as it arrives,
  each subscriber from the start of the segment.
* A GET for a segment that is not in the ring answers 470 with ``Lp-Trickle-Latest`` (the next
  write index) and ``Lp-Trickle-Seq``; on a closed channel it answers 200 with
  ``Lp-Trickle-Closed: terminated``. A segment that ends without any data gives the same two
  answers. An unknown channel is a 404. ``autocreate`` applies to POSTs, as in go-livepeer;
  *ours*: ``autocreate_on_get`` (default off) also creates channels on GET. It is off by
  default so that a GET on a removed channel is the 404 that tells subscribers the stream ended.
* The next write index advances on the first byte of a POST. Until that byte the server sends
  an interim ``HTTP/1.1 100 Continue`` every ``keepalive_interval_s`` (10 s), written straight
  onto the connection before the final response, as go-livepeer's ``WriteHeader(100)`` does.
  This is a real interim response, not an approximation; it is skipped for HTTP/1.0 clients.
* A POST whose segment is closed before its first byte (DELETE of the segment, the channel
  closing, an overwrite, a reset) is answered 200 with ``Connection: close`` at once. *Ours*:
  this does not move the next write index (go-livepeer advances it to ``idx + 1``). A POST whose
  body ends without any data does advance it, as in go-livepeer.
* ``Lp-Trickle-Reset`` on a POST for ``idx`` (a restarted publisher) takes effect when the
  request arrives: every other segment in the ring is closed and dropped (which releases
  subscribers waiting on the old sequence; they get a 470 whose ``Lp-Trickle-Latest`` is
  ``idx``), except the publisher's own preconnected ``idx + 1``; the next write index becomes
  ``idx``.
* *Ours*: a segment that is closed by someone else while its POST is still streaming stops
  taking data; the rest of that body is read and dropped. A publisher whose connection breaks
  mid-body closes its segment (subscribers see the end) instead of leaving it open.
* Idle sweep: a channel with no write for ``idle_timeout_s`` is closed and removed; the sweep
  runs every ``sweep_interval_s``. Channels whose name starts with ``_`` are never swept.
* Memory bounds (*ours*): a segment may hold at most ``max_segment_bytes``. A POST declaring a
  larger ``Content-Length`` is refused with 413 before anything is stored; a chunked body that
  grows past the limit gets 413 and its segment is closed after exactly ``max_segment_bytes``
  bytes (subscribers see it end there). At most ``max_channels`` channels exist (503).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator
from typing import Final

from aiohttp import web
from aiohttp.http import HttpVersion11

from pytrickle_worker.transport.listen import listen_socket
from pytrickle_worker.transport.trickle.headers import (
    CLOSED_HEADER,
    CLOSED_VALUE,
    LATEST_HEADER,
    MAX_SEGMENTS_PER_CHANNEL,
    NEXT_PATH,
    RESET_HEADER,
    SEQ_HEADER,
    SEQ_LATEST,
    SEQ_NEXT,
    STATUS_SEGMENT_MISSING,
)

logger = logging.getLogger(__name__)

DEFAULT_MAX_SEGMENT_BYTES: Final = 64 * 1024 * 1024
DEFAULT_MAX_CHANNELS: Final = 1024
DEFAULT_IDLE_TIMEOUT_S: Final = 300.0
DEFAULT_SWEEP_INTERVAL_S: Final = 60.0
DEFAULT_KEEPALIVE_INTERVAL_S: Final = 10.0

_DEFAULT_MIME: Final = "application/octet-stream"
_CONTINUE_LINE: Final = b"HTTP/1.1 100 Continue\r\n\r\n"
# A subscriber waiting for data checks this often whether its client went away (aiohttp does
# not cancel handlers on disconnect unless the runner asks it to).
_DISCONNECT_POLL_S: Final = 1.0


class _Segment:
    """One segment's bytes, kept as the chunks the publisher sent, readable by many subscribers."""

    __slots__ = ("_changed", "chunks", "closed", "closed_event", "idx", "size", "writers")

    def __init__(self, idx: int) -> None:
        self.idx = idx
        self.chunks: list[bytes] = []
        self.size = 0
        self.closed = False
        self.writers = 0
        self.closed_event = asyncio.Event()
        self._changed = asyncio.Event()

    @property
    def fresh(self) -> bool:
        """Not written to and not closed: a pre-created segment waiting for its publisher."""
        return not self.closed and self.size == 0

    def append(self, data: bytes) -> None:
        self.chunks.append(data)
        self.size += len(data)
        self._notify()

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.closed_event.set()
            self._notify()

    def _notify(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    async def wait_change(self, wait_s: float) -> None:
        """Wait until data is appended or the segment closes, or ``wait_s`` passes."""
        changed = self._changed
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(wait_s):
                await changed.wait()


class _Channel:
    __slots__ = ("closed", "mime_type", "name", "next_write", "segments", "write_time")

    def __init__(self, name: str, mime_type: str) -> None:
        self.name = name
        self.mime_type = mime_type
        self.segments: list[_Segment | None] = [None] * MAX_SEGMENTS_PER_CHANNEL
        self.next_write = 0
        self.write_time = time.monotonic()
        self.closed = False

    def close(self) -> None:
        for segment in self.segments:
            if segment is not None:
                segment.close()
        self.segments = [None] * MAX_SEGMENTS_PER_CHANNEL
        self.closed = True

    def get_for_write(self, idx: int, *, reset: bool) -> _Segment:
        if idx == SEQ_NEXT:
            idx = self.next_write
        if reset:
            self._reset(idx)
        pos = idx % MAX_SEGMENTS_PER_CHANNEL
        segment = self.segments[pos]
        if segment is not None:
            if segment.idx == idx and segment.fresh and segment.writers == 0:
                # Pre-created by a subscriber that is waiting for exactly this segment.
                return segment
            # An older segment in this slot, or a second POST for the same index: overwrite.
            segment.close()
        segment = _Segment(idx)
        self.segments[pos] = segment
        return segment

    def _reset(self, idx: int) -> None:
        for pos, segment in enumerate(self.segments):
            if segment is None or segment.idx == idx:
                continue
            if segment.idx == idx + 1 and segment.writers > 0 and segment.fresh:
                continue  # the restarted publisher's own preconnect may arrive first
            segment.close()
            self.segments[pos] = None
        self.next_write = idx
        logger.info("channel %s reset by its publisher at seq %d", self.name, idx)

    def get_for_read(self, idx: int) -> tuple[_Segment | None, int, int, bool]:
        """(segment or None, resolved idx, next write index, channel closed)."""
        if idx == SEQ_NEXT:
            idx = self.next_write
        elif idx == SEQ_LATEST:
            idx = self.next_write - 1 if self.next_write > 0 else 0
        pos = idx % MAX_SEGMENTS_PER_CHANNEL
        segment = self.segments[pos]
        exists = segment is not None and segment.idx == idx
        ahead_ok = idx == self.next_write or (self.next_write == 0 and idx == 1)
        if not exists and ahead_ok and not self.closed:
            # The read is just ahead of the write head: wait for it.
            segment = _Segment(idx)
            self.segments[pos] = segment
            exists = True
        return (segment if exists else None), idx, self.next_write, self.closed


def _parse_idx(raw: str, minimum: int) -> int | None:
    try:
        idx = int(raw)
    except ValueError:
        return None
    return idx if idx >= minimum else None


def _normalise_base_path(base_path: str) -> str:
    path = "/" + base_path.strip("/")
    return path if path == "/" else path + "/"


def _text(status: int, text: str, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(status=status, text=text, headers=headers)


def _disconnected(request: web.BaseRequest) -> bool:
    transport = request.transport
    return transport is None or transport.is_closing()


class TrickleServer:
    """Trickle channels in memory, served by aiohttp (standalone or mounted in another app)."""

    def __init__(
        self,
        *,
        base_path: str = "/",
        autocreate: bool = True,
        autocreate_on_get: bool = False,
        idle_timeout_s: float = DEFAULT_IDLE_TIMEOUT_S,
        sweep_interval_s: float = DEFAULT_SWEEP_INTERVAL_S,
        max_segment_bytes: int = DEFAULT_MAX_SEGMENT_BYTES,
        max_channels: int = DEFAULT_MAX_CHANNELS,
        keepalive_interval_s: float = DEFAULT_KEEPALIVE_INTERVAL_S,
    ) -> None:
        if idle_timeout_s <= 0 or sweep_interval_s <= 0 or keepalive_interval_s <= 0:
            raise ValueError("trickle server timeouts and intervals must be positive")
        if max_segment_bytes <= 0 or max_channels <= 0:
            raise ValueError("trickle server limits must be positive")
        self.base_path = _normalise_base_path(base_path)
        self.autocreate = autocreate
        self.autocreate_on_get = autocreate_on_get
        self.idle_timeout_s = idle_timeout_s
        self.sweep_interval_s = sweep_interval_s
        self.max_segment_bytes = max_segment_bytes
        self.max_channels = max_channels
        self.keepalive_interval_s = keepalive_interval_s
        self._channels: dict[str, _Channel] = {}
        self._app: web.Application | None = None
        self._runner: web.AppRunner | None = None
        self._sweeper: asyncio.Task[None] | None = None
        self.port: int | None = None

    # -- local API (what go-livepeer's orchestrator does with NewLocalPublisher) ---------------

    @property
    def channels(self) -> list[str]:
        """Names of the open channels."""
        return list(self._channels)

    def create_channel(self, name: str, mime_type: str = "") -> bool:
        """Create ``name`` if it does not exist (whatever ``autocreate`` says).

        Returns True when it was created, False when it already existed. Raises ``ValueError``
        when ``max_channels`` channels already exist.
        """
        if name in self._channels:
            return False
        if len(self._channels) >= self.max_channels:
            raise ValueError(f"too many trickle channels (max {self.max_channels})")
        self._channels[name] = _Channel(name, mime_type)
        logger.info("created trickle channel %s (%s)", name, mime_type or "no MIME type")
        return True

    def close_channel(self, name: str) -> bool:
        """Close and remove ``name``; waiting subscribers get ``Lp-Trickle-Closed``."""
        channel = self._channels.pop(name, None)
        if channel is None:
            return False
        channel.close()
        logger.info("closed trickle channel %s", name)
        return True

    def next_write(self, name: str) -> int | None:
        """The next write index of ``name``, or None when there is no such channel."""
        channel = self._channels.get(name)
        return None if channel is None else channel.next_write

    def sweep_idle(self) -> list[str]:
        """Close channels with no write for ``idle_timeout_s``; returns their names."""
        now = time.monotonic()
        swept = [
            name
            for name, channel in self._channels.items()
            if not name.startswith("_") and now - channel.write_time > self.idle_timeout_s
        ]
        for name in swept:
            self.close_channel(name)
            logger.info("swept idle trickle channel %s", name)
        return swept

    def close_all(self) -> None:
        """Close every channel (releases waiting subscribers and pending publishers)."""
        for name in list(self._channels):
            self.close_channel(name)

    # -- aiohttp wiring ------------------------------------------------------------------------

    def routes(self, base_path: str | None = None) -> list[web.RouteDef]:
        """The trickle routes under ``base_path`` (default: the server's ``base_path``).

        When mounting into an app that has other routes, prefer a non-root base path (such as
        go-livepeer's ``/ai/trickle/``): at ``/`` the ``POST /{ch}/{idx}`` route matches any
        two-segment POST that the app did not register before it.
        """
        base = self.base_path if base_path is None else _normalise_base_path(base_path)
        channel = base + "{channel}"
        segment = channel + "/{idx}"
        return [
            web.post(channel, self._handle_create),
            web.get(segment, self._handle_get, allow_head=False),
            web.post(segment, self._handle_post),
            web.delete(segment, self._handle_delete_segment),
            web.delete(channel, self._handle_delete_channel),
        ]

    def attach(self, app: web.Application, base_path: str | None = None) -> None:
        """Mount the routes into ``app`` and tie the idle sweeper to the app's life cycle."""
        app.router.add_routes(self.routes(base_path))
        app.cleanup_ctx.append(self._lifecycle)
        app.on_shutdown.append(self._on_shutdown)

    @property
    def app(self) -> web.Application:
        """A standalone aiohttp application serving the trickle routes (created once)."""
        if self._app is None:
            self._app = web.Application()
            self.attach(self._app)
        return self._app

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> int:
        """Serve ``app`` on ``host:port`` (0 picks a free port); returns the bound port."""
        if self._runner is not None:
            raise RuntimeError("trickle server already started")
        runner = web.AppRunner(
            self.app, handler_cancellation=True, shutdown_timeout=5.0, access_log=None
        )
        await runner.setup()
        site = web.TCPSite(runner, host, port)
        try:
            await site.start()
        except BaseException:
            await runner.cleanup()
            raise
        self._runner = runner
        bound = port
        addresses: list[tuple[str, int]] = list(runner.addresses)
        if addresses:
            bound = int(addresses[0][1])
        self.port = bound
        logger.info("trickle server listening on %s:%d%s", host, bound, self.base_path)
        return bound

    async def stop(self) -> None:
        """Stop serving; every channel is closed first so blocked requests are answered."""
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()
            # An aiohttp app cannot be served again after its cleanup: start() builds a new one.
            self._app = None
            logger.info("trickle server stopped")
        self.port = None

    async def _lifecycle(self, _app: web.Application) -> AsyncIterator[None]:
        self._sweeper = asyncio.create_task(self._sweep_loop(), name="trickle-sweeper")
        try:
            yield
        finally:
            sweeper, self._sweeper = self._sweeper, None
            sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await sweeper
            self.close_all()

    async def _on_shutdown(self, _app: web.Application) -> None:
        # Runs before aiohttp waits for in-flight handlers: release them.
        self.close_all()

    async def _sweep_loop(self) -> None:
        while True:
            await asyncio.sleep(self.sweep_interval_s)
            try:
                self.sweep_idle()
            except Exception:
                logger.exception("trickle idle sweep failed")

    # -- handlers ------------------------------------------------------------------------------

    def _channel_for_write(self, name: str, mime_type: str) -> _Channel | web.Response:
        channel = self._channels.get(name)
        if channel is not None:
            return channel
        if not self.autocreate:
            return _text(404, "Stream not found", {"Connection": "close"})
        try:
            self.create_channel(name, mime_type)
        except ValueError:
            logger.warning("refused trickle channel %s: %d channels exist", name, self.max_channels)
            return _text(503, "Too many channels", {"Connection": "close"})
        return self._channels[name]

    async def _handle_create(self, request: web.Request) -> web.StreamResponse:
        found = self._channel_for_write(
            request.match_info["channel"], request.headers.get("Expect-Content", "")
        )
        return found if isinstance(found, web.StreamResponse) else web.Response()

    async def _handle_delete_channel(self, request: web.Request) -> web.StreamResponse:
        if not self.close_channel(request.match_info["channel"]):
            return _text(400, "Invalid stream")
        return web.Response()

    async def _handle_delete_segment(self, request: web.Request) -> web.StreamResponse:
        channel = self._channels.get(request.match_info["channel"])
        if channel is None:
            return _text(404, "Stream not found")
        idx = _parse_idx(request.match_info["idx"], 0)
        if idx is None:
            return _text(400, "Invalid idx")
        segment = channel.segments[idx % MAX_SEGMENTS_PER_CHANNEL]
        if segment is None or segment.idx != idx:
            return _text(400, "Nonexistent segment")
        logger.debug("DELETE closes %s/%d", channel.name, idx)
        segment.close()
        return web.Response()

    async def _handle_get(self, request: web.Request) -> web.StreamResponse:
        name = request.match_info["channel"]
        channel = self._channels.get(name)
        if channel is None and self.autocreate_on_get:
            found = self._channel_for_write(name, "")
            if isinstance(found, web.StreamResponse):
                return found
            channel = found
        if channel is None:
            return _text(404, "Stream not found")
        raw = request.match_info["idx"]
        if raw == NEXT_PATH:
            headers = {LATEST_HEADER: str(channel.next_write)}
            if channel.closed:
                headers[CLOSED_HEADER] = CLOSED_VALUE
            return _text(200, str(channel.next_write), headers)
        idx = _parse_idx(raw, SEQ_LATEST)
        if idx is None:
            return _text(400, "Invalid idx")
        segment, idx, latest, closed = channel.get_for_read(idx)
        if segment is None:
            headers = {LATEST_HEADER: str(latest), SEQ_HEADER: str(idx)}
            if closed:
                headers[CLOSED_HEADER] = CLOSED_VALUE
                return _text(200, "Entry not found", headers)
            return _text(STATUS_SEGMENT_MISSING, "Entry not found", headers)
        return await self._stream_segment(request, channel, segment, latest)

    async def _stream_segment(
        self, request: web.Request, channel: _Channel, segment: _Segment, latest: int
    ) -> web.StreamResponse:
        response = web.StreamResponse()
        pos = 0
        try:
            while True:
                if pos < len(segment.chunks):
                    if not response.prepared:
                        if segment.idx != latest:
                            response.headers[LATEST_HEADER] = str(latest)
                        response.headers[SEQ_HEADER] = str(segment.idx)
                        response.headers["Content-Type"] = channel.mime_type or _DEFAULT_MIME
                        await response.prepare(request)
                    chunk = segment.chunks[pos]
                    pos += 1
                    await response.write(chunk)
                    continue
                if segment.closed:
                    break
                if _disconnected(request):
                    logger.debug("subscriber of %s/%d went away", channel.name, segment.idx)
                    return response if response.prepared else web.Response(status=499)
                await segment.wait_change(_DISCONNECT_POLL_S)
            if not response.prepared:
                # The segment ended without data: dropped, or the channel closed meanwhile.
                headers = {SEQ_HEADER: str(segment.idx)}
                if channel.closed:
                    headers[CLOSED_HEADER] = CLOSED_VALUE
                    return _text(200, "", headers)
                headers[LATEST_HEADER] = str(channel.next_write)
                return _text(STATUS_SEGMENT_MISSING, "", headers)
            await response.write_eof()
        except ConnectionResetError:
            logger.debug("subscriber of %s/%d disconnected mid-segment", channel.name, segment.idx)
        return response

    async def _handle_post(self, request: web.Request) -> web.StreamResponse:
        idx = _parse_idx(request.match_info["idx"], SEQ_NEXT)
        if idx is None:
            return _text(400, "Invalid idx")
        found = self._channel_for_write(
            request.match_info["channel"], request.headers.get("Content-Type", "")
        )
        if isinstance(found, web.StreamResponse):
            return found
        channel = found
        length = request.content_length
        if length is not None and length > self.max_segment_bytes:
            return _text(413, f"Segment larger than {self.max_segment_bytes} bytes")
        segment = channel.get_for_write(idx, reset=RESET_HEADER in request.headers)
        segment.writers += 1
        try:
            return await self._receive(request, channel, segment)
        finally:
            segment.writers -= 1

    async def _first_chunk(self, request: web.Request, segment: _Segment) -> bytes | None:
        """The body's first chunk (b"" for an empty body), or None if the segment closed first.

        Sends ``100 Continue`` keepalives while waiting. Read errors propagate.
        """
        read = asyncio.ensure_future(request.content.readany())
        closed = asyncio.ensure_future(segment.closed_event.wait())
        try:
            while True:
                done, _ = await asyncio.wait(
                    {read, closed},
                    timeout=self.keepalive_interval_s,
                    return_when=asyncio.FIRST_COMPLETED,
                )
                if read in done:
                    return read.result()
                if closed in done:
                    return None
                if request.version >= HttpVersion11:
                    logger.debug("keepalive 100 Continue for %s", request.path)
                    await request.writer.write(_CONTINUE_LINE)
        finally:
            for task in (read, closed):
                if not task.done():
                    task.cancel()
                    await asyncio.wait({task})
                if not task.cancelled():
                    task.exception()  # retrieved: a lost connection is not worth a log line

    async def _receive(
        self, request: web.Request, channel: _Channel, segment: _Segment
    ) -> web.StreamResponse:
        idx = segment.idx
        done_headers = {SEQ_HEADER: str(idx)}
        try:
            data = await self._first_chunk(request, segment)
        except (ConnectionError, OSError, asyncio.IncompleteReadError) as exc:
            logger.debug("publisher of %s/%d went away before data: %s", channel.name, idx, exc)
            return web.Response(status=499)
        if data is None or data == b"":
            if data == b"":
                # An empty body: go-livepeer still advances the write index.
                channel.next_write = idx + 1
                channel.write_time = time.monotonic()
                segment.close()
            if channel.closed:
                done_headers[CLOSED_HEADER] = CLOSED_VALUE
            done_headers["Connection"] = "close"
            return _text(200, "", done_headers)

        channel.next_write = idx + 1
        channel.write_time = started = time.monotonic()
        dropped = 0
        try:
            while data:
                if segment.closed:
                    dropped += len(data)
                elif segment.size + len(data) > self.max_segment_bytes:
                    # Keep what fits, so subscribers get exactly max_segment_bytes, then end it.
                    room = self.max_segment_bytes - segment.size
                    if room > 0:
                        segment.append(data[:room])
                    logger.warning(
                        "segment %s/%d exceeds %d bytes: closed, POST refused",
                        channel.name,
                        idx,
                        self.max_segment_bytes,
                    )
                    return _text(413, f"Segment larger than {self.max_segment_bytes} bytes")
                else:
                    segment.append(data)
                data = await request.content.readany()
        except Exception as exc:
            logger.info(
                "publisher of %s/%d broke off after %d bytes: %s",
                channel.name,
                idx,
                segment.size,
                exc,
            )
            return _text(500, "Server error")
        finally:
            # Whatever happened (done, oversize, broken body, handler cancelled on disconnect),
            # subscribers of this segment must see its end.
            segment.close()
        if dropped:
            logger.info(
                "segment %s/%d was closed while being written; dropped %d bytes",
                channel.name,
                idx,
                dropped,
            )
        logger.debug(
            "POST %s/%d completed: %d bytes in %.3f s",
            channel.name,
            idx,
            segment.size,
            time.monotonic() - started,
        )
        if channel.closed:
            done_headers[CLOSED_HEADER] = CLOSED_VALUE
        return _text(200, "", done_headers)


def run_trickle_server(host: str, port: int, *, server: TrickleServer | None = None) -> None:
    """Serve a standalone trickle server until SIGINT/SIGTERM, then return. Blocking.

    ``server`` lets the caller choose options; by default channels are autocreated on POST.
    """
    if server is None:
        server = TrickleServer()
    sock = listen_socket(host, port)  # a taken port: one WorkerError line, no traceback
    logger.info(
        "trickle server on http://%s:%d/ (channels are created on %s)",
        host,
        port,
        "POST and GET" if server.autocreate_on_get else "POST",
    )
    web.run_app(
        server.app,
        sock=sock,
        print=None,
        handler_cancellation=True,
        shutdown_timeout=5.0,
        access_log=None,
    )
