"""An in-process aiohttp media server on 127.0.0.1 for the camera-ingest tests.

Routes (all ``GET``; ``width``/``height``/``fps`` query parameters pick the encoding and
default to 640x360 at 15 fps; each size is rendered and encoded once per process):

``/stream.ts``
    A live MPEG-TS (H.264) stream that never ends: the pre-encoded packets of
    ``clip_seconds`` of :func:`~pytrickle_worker.devtools.synthetic.moving_objects` frames
    (key frame every second), muxed for each connection with continuous timestamps across
    loops and sent one frame at a time, paced at real time.
``/mjpeg``
    ``multipart/x-mixed-replace; boundary=frame``: one JPEG part per frame, paced at ``fps``.
``/snapshot.jpg``
    One JPEG per request, the frame of the moment (the picture moves over time); counted in
    :attr:`MediaHttpServer.snapshot_hits`.
``/auth/<route>``
    The same routes behind HTTP Basic auth (:attr:`MediaHttpServer.credentials`): 401 with
    ``WWW-Authenticate: Basic`` unless the right credentials are given.
``/missing``
    404 (so does any other unknown path).
``/stall.ts``
    200 and the first ``stall_frames`` frames of a valid TS at once, then nothing, without
    closing, until the client goes away or the server stops.
``/eof.ts``
    A finite TS: ``seconds`` (query, default 1) of frames paced at real time, then the
    response ends.

Counters: :attr:`requests` (per path, every request, also 401/404), :attr:`open_streams`
(streaming responses in progress: ``stream.ts``, ``mjpeg``, ``stall.ts``, ``eof.ts``),
:attr:`open_streams_by_path`, :attr:`streams_total`, :attr:`snapshot_hits`.

The server runs on the event loop that started it: a blocking client (PyAV) must run in a
thread (``asyncio.to_thread``) or the server cannot answer it.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import threading
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

import av
from aiohttp import web

from pytrickle_worker.devtools.camera import LoopClip, LoopPacket, TsLooper
from pytrickle_worker.devtools.synthetic import moving_objects, render_scene
from pytrickle_worker.media.jpeg import encode_jpeg

DEFAULT_WIDTH = 640
DEFAULT_HEIGHT = 360
DEFAULT_FPS = 15
STREAM_PATHS = ("/stream.ts", "/mjpeg", "/stall.ts", "/eof.ts")


@dataclass(frozen=True)
class Clip:
    """``frames`` frames of the moving-objects scene: H.264 (Annex B, timestamps in frames,
    ready for the demo camera's :class:`TsLooper`) and JPEG."""

    width: int
    height: int
    fps: int
    frames: int
    video: LoopClip
    jpegs: tuple[bytes, ...]


_clip_cache: dict[tuple[int, int, int, int], Clip] = {}
_clip_lock = threading.Lock()


def get_clip(width: int, height: int, fps: int, seconds: float) -> Clip:
    """Render and encode a clip once per process (thread-safe; about 15 ms a 640x360 frame)."""
    frames = max(1, round(seconds * fps))
    key = (width, height, fps, frames)
    with _clip_lock:
        clip = _clip_cache.get(key)
        if clip is None:
            clip = _encode_clip(width, height, fps, frames)
            _clip_cache[key] = clip
        return clip


def _encode_clip(width: int, height: int, fps: int, frames: int) -> Clip:
    ctx: Any = av.CodecContext.create("libx264", "w")
    ctx.width = width
    ctx.height = height
    ctx.pix_fmt = "yuv420p"
    ctx.time_base = Fraction(1, fps)
    ctx.framerate = Fraction(fps, 1)
    ctx.gop_size = fps
    ctx.max_b_frames = 0
    ctx.options = {"preset": "ultrafast", "tune": "zerolatency"}
    packets: list[LoopPacket] = []
    jpegs: list[bytes] = []

    def collect(encoded: Any) -> None:
        for packet in encoded:
            packets.append(
                LoopPacket(bytes(packet), int(packet.pts), int(packet.dts), packet.is_keyframe)
            )

    for index in range(frames):
        rgb = render_scene(width, height, moving_objects(index, width, height, fps), seed=index)
        jpegs.append(encode_jpeg(rgb, quality=80))
        frame = av.VideoFrame.from_ndarray(rgb, format="rgb24").reformat(format="yuv420p")
        frame.pts = index
        collect(ctx.encode(frame))
    collect(ctx.encode(None))
    video = LoopClip(
        codec="h264",
        width=width,
        height=height,
        rate=Fraction(fps),
        time_base=Fraction(1, fps),
        span=frames,
        packets=tuple(packets),
    )
    return Clip(width, height, fps, frames, video, tuple(jpegs))


class MediaHttpServer:
    """See the module docstring. ``await start()``, use :attr:`base_url`, ``await stop()``."""

    def __init__(
        self,
        *,
        credentials: tuple[str, str] = ("admin", "s3cret"),
        clip_seconds: float = 4.0,
        stall_frames: int = 5,
    ) -> None:
        self.credentials = credentials
        self.clip_seconds = clip_seconds
        self.stall_frames = stall_frames
        self.requests: Counter[str] = Counter()
        self.open_streams_by_path: Counter[str] = Counter()
        self.streams_total = 0
        self.snapshot_hits = 0
        self._unfrozen = asyncio.Event()
        self._unfrozen.set()
        self.port = 0
        self._runner: web.AppRunner | None = None
        self._started_at = time.monotonic()
        self._streams: dict[asyncio.Task[Any], web.Request] = {}
        self._routes: dict[str, Callable[[web.Request], Awaitable[web.StreamResponse]]] = {
            "/stream.ts": self._stream_ts,
            "/mjpeg": self._mjpeg,
            "/snapshot.jpg": self._snapshot,
            "/stall.ts": self._stall_ts,
            "/eof.ts": self._eof_ts,
        }

    # -- lifecycle ----------------------------------------------------------------------

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def url(self, path: str, *, auth: tuple[str, str] | None = None) -> str:
        """``http://[user:pass@]127.0.0.1:PORT{path}``."""
        userinfo = f"{auth[0]}:{auth[1]}@" if auth is not None else ""
        return f"http://{userinfo}127.0.0.1:{self.port}{path}"

    @property
    def frozen(self) -> bool:
        """While True, live streams (stream.ts, mjpeg) send nothing but stay open."""
        return not self._unfrozen.is_set()

    @frozen.setter
    def frozen(self, value: bool) -> None:
        if value:
            self._unfrozen.clear()
        else:
            self._unfrozen.set()

    @property
    def open_streams(self) -> int:
        return sum(self.open_streams_by_path.values())

    async def start(self) -> None:
        # Render the default clip now, so the first request is not slowed by it.
        await asyncio.to_thread(
            get_clip, DEFAULT_WIDTH, DEFAULT_HEIGHT, DEFAULT_FPS, self.clip_seconds
        )
        app = web.Application(middlewares=[self._count_requests])
        app.router.add_get("/auth/{tail:.*}", self._auth)
        app.router.add_get("/missing", self._missing)
        for path, handler in self._routes.items():
            app.router.add_get(path, handler)
        self._runner = web.AppRunner(
            app, handler_cancellation=True, access_log=None, shutdown_timeout=1.0
        )
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = int(self._runner.addresses[0][1])
        self._started_at = time.monotonic()

    async def stop(self) -> None:
        await self.drop_streams()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def drop_streams(self) -> None:
        """Close every open streaming connection from the server side (a network drop)."""
        streams = list(self._streams.items())
        for task, request in streams:
            if request.transport is not None:
                request.transport.close()
            task.cancel()
        for task, _ in streams:
            with contextlib.suppress(BaseException):
                await task

    async def wait_for(
        self,
        predicate: Callable[[MediaHttpServer], bool],
        timeout: float = 5.0,  # noqa: ASYNC109 - the same API as RtspServer.wait_for
    ) -> None:
        """Wait until ``predicate(self)`` holds (polled every 20 ms); TimeoutError if not."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while not predicate(self):
            if loop.time() >= deadline:
                raise TimeoutError(
                    f"condition not met in {timeout}s: requests={dict(self.requests)} "
                    f"open_streams={dict(self.open_streams_by_path)} "
                    f"snapshot_hits={self.snapshot_hits}"
                )
            await asyncio.sleep(0.02)

    # -- plumbing -----------------------------------------------------------------------

    @web.middleware
    async def _count_requests(
        self,
        request: web.Request,
        handler: Callable[[web.Request], Awaitable[web.StreamResponse]],
    ) -> web.StreamResponse:
        self.requests[request.path] += 1
        return await handler(request)

    @contextlib.contextmanager
    def _streaming(self, request: web.Request, path: str) -> Iterator[None]:
        task = asyncio.current_task()
        assert task is not None
        self._streams[task] = request
        self.open_streams_by_path[path] += 1
        self.streams_total += 1
        try:
            yield
        finally:
            self._streams.pop(task, None)
            self.open_streams_by_path[path] -= 1
            if self.open_streams_by_path[path] <= 0:
                del self.open_streams_by_path[path]

    async def _clip_for(self, request: web.Request, seconds: float | None = None) -> Clip:
        try:
            width = int(request.query.get("width", DEFAULT_WIDTH))
            height = int(request.query.get("height", DEFAULT_HEIGHT))
            fps = int(request.query.get("fps", DEFAULT_FPS))
        except ValueError as exc:
            raise web.HTTPBadRequest(text=f"bad query: {exc}") from exc
        if not (16 <= width <= 3840 and 16 <= height <= 2160 and 1 <= fps <= 60):
            raise web.HTTPBadRequest(text="width/height/fps out of range")
        return await asyncio.to_thread(
            get_clip, width, height, fps, seconds if seconds is not None else self.clip_seconds
        )

    async def _pace(self, start: float, frame_index: int, fps: int) -> None:
        loop = asyncio.get_running_loop()
        delay = start + frame_index / fps - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)

    async def _wait_while_frozen(self) -> float:
        """Sleep while :attr:`frozen`; return how long (to shift the pacing schedule)."""
        loop = asyncio.get_running_loop()
        began = loop.time()
        await self._unfrozen.wait()
        return loop.time() - began

    # -- handlers -----------------------------------------------------------------------

    async def _auth(self, request: web.Request) -> web.StreamResponse:
        route = "/" + request.match_info["tail"]
        handler = self._routes.get(route)
        if handler is None:
            raise web.HTTPNotFound()
        header = request.headers.get("Authorization", "")
        if not self._authorised(header):
            raise web.HTTPUnauthorized(
                headers={"WWW-Authenticate": 'Basic realm="camera"'}, text="401 Unauthorized"
            )
        return await handler(request)

    def _authorised(self, header: str) -> bool:
        scheme, _, value = header.partition(" ")
        if scheme.lower() != "basic":
            return False
        try:
            decoded = base64.b64decode(value.strip(), validate=True).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError):
            return False
        user, _, password = decoded.partition(":")
        return (user, password) == self.credentials

    async def _missing(self, _request: web.Request) -> web.StreamResponse:
        raise web.HTTPNotFound(text="no such camera")

    async def _stream_ts(self, request: web.Request) -> web.StreamResponse:
        clip = await self._clip_for(request)
        response = web.StreamResponse(
            headers={"Content-Type": "video/mp2t", "Cache-Control": "no-cache"}
        )
        await response.prepare(request)
        muxer = TsLooper(clip.video)
        loop = asyncio.get_running_loop()
        try:
            with self._streaming(request, "/stream.ts"):
                start = loop.time()
                index = 0
                while True:
                    start += await self._wait_while_frozen()
                    await response.write(muxer.next_chunk())
                    index += 1
                    await self._pace(start, index, clip.fps)
        except ConnectionError:
            pass
        finally:
            muxer.close()
        return response

    async def _eof_ts(self, request: web.Request) -> web.StreamResponse:
        seconds = float(request.query.get("seconds", "1"))
        clip = await self._clip_for(request, seconds)
        response = web.StreamResponse(headers={"Content-Type": "video/mp2t"})
        await response.prepare(request)
        muxer = TsLooper(clip.video)
        loop = asyncio.get_running_loop()
        try:
            with self._streaming(request, "/eof.ts"):
                start = loop.time()
                for index in range(clip.frames):
                    await response.write(muxer.next_chunk())
                    await self._pace(start, index + 1, clip.fps)
                await response.write(muxer.close())
                await response.write_eof()
        except ConnectionError:
            pass
        finally:
            muxer.close()
        return response

    async def _stall_ts(self, request: web.Request) -> web.StreamResponse:
        clip = await self._clip_for(request)
        response = web.StreamResponse(headers={"Content-Type": "video/mp2t"})
        await response.prepare(request)
        muxer = TsLooper(clip.video)
        try:
            with self._streaming(request, "/stall.ts"):
                await response.write(b"".join(muxer.next_chunk() for _ in range(self.stall_frames)))
                await asyncio.Event().wait()  # until the client leaves or the server stops
        except ConnectionError:
            pass
        finally:
            muxer.close()
        return response

    async def _mjpeg(self, request: web.Request) -> web.StreamResponse:
        clip = await self._clip_for(request)
        response = web.StreamResponse(
            headers={
                "Content-Type": "multipart/x-mixed-replace; boundary=frame",
                "Cache-Control": "no-cache",
            }
        )
        await response.prepare(request)
        loop = asyncio.get_running_loop()
        try:
            with self._streaming(request, "/mjpeg"):
                start = loop.time()
                index = 0
                while True:
                    start += await self._wait_while_frozen()
                    jpeg = clip.jpegs[index % len(clip.jpegs)]
                    await response.write(
                        b"--frame\r\nContent-Type: image/jpeg\r\n"
                        + f"Content-Length: {len(jpeg)}\r\n\r\n".encode()
                        + jpeg
                        + b"\r\n"
                    )
                    index += 1
                    await self._pace(start, index, clip.fps)
        except ConnectionError:
            pass
        return response

    async def _snapshot(self, request: web.Request) -> web.StreamResponse:
        clip = await self._clip_for(request)
        self.snapshot_hits += 1
        index = int((time.monotonic() - self._started_at) * clip.fps) % len(clip.jpegs)
        return web.Response(
            body=clip.jpegs[index],
            content_type="image/jpeg",
            headers={"Cache-Control": "no-cache", "X-Frame-Index": str(index)},
        )
