"""A demo camera: a video file served as a never-ending live MPEG-TS stream over HTTP.

``pytrickle-worker demo camera [--host H] [--port P] [--video FILE]`` serves

``GET /stream.ts``
    the video's H.264 (or HEVC) packets, copied (never re-encoded), remuxed into MPEG-TS
    for each client with timestamps that keep increasing across loops, and paced at real
    time, like an IP camera's HTTP stream. Every client starts at the clip's first key
    frame.
``GET /health``
    ``ok`` (for container health checks).

Without ``--video`` it serves the demo ``sample.mp4`` from the demo folder, generating that
video first when it is missing (PyAV only; the ``onnx`` demo extra is not needed).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

from aiohttp import web

from pytrickle_worker.core.errors import WorkerError
from pytrickle_worker.transport.listen import listen_socket

__all__ = ["LoopClip", "LoopPacket", "TsLooper", "create_camera_app", "load_clip", "run_camera"]

logger = logging.getLogger(__name__)

STREAM_PATH = "/stream.ts"
_ANNEXB_FILTERS = {"h264": "h264_mp4toannexb", "hevc": "hevc_mp4toannexb"}


@dataclass(frozen=True)
class LoopPacket:
    data: bytes
    pts: int  # in LoopClip.time_base, relative to the clip's first packet
    dts: int
    keyframe: bool


@dataclass(frozen=True)
class LoopClip:
    """A video's packets in Annex B form (parameter sets in-band), ready to loop."""

    codec: str
    width: int
    height: int
    rate: Fraction
    time_base: Fraction
    span: int  # the clip's length in time_base units: the timestamp offset of each loop
    packets: tuple[LoopPacket, ...]


def load_clip(path: Path) -> LoopClip:
    """Read every video packet of ``path`` once (blocking; small demo clips only)."""
    import av  # noqa: PLC0415 - PyAV is heavy; the CLI imports this module lazily
    from av.bitstream import BitStreamFilterContext  # noqa: PLC0415
    from av.error import FFmpegError  # noqa: PLC0415

    try:
        container: Any = av.open(str(path))
    except (FFmpegError, OSError) as exc:
        raise WorkerError(f"cannot open demo camera video {path}: {exc}") from exc
    with container:
        if not container.streams.video:
            raise WorkerError(f"{path} has no video stream")
        stream: Any = container.streams.video[0]
        codec = str(stream.codec_context.name)
        if codec not in _ANNEXB_FILTERS:
            raise WorkerError(f"{path}: the demo camera copies H.264 or HEVC, not {codec}")
        rate = Fraction(stream.average_rate or 15)
        time_base = Fraction(stream.time_base)
        frame_ticks = max(1, round(1 / (rate * time_base)))
        annexb: Any = BitStreamFilterContext(_ANNEXB_FILTERS[codec], stream)
        raw: list[Any] = []
        try:
            for packet in container.demux(stream):
                if packet.size and packet.pts is not None and packet.dts is not None:
                    raw.extend(annexb.filter(packet))
            raw.extend(annexb.filter(None))
        except FFmpegError as exc:
            raise WorkerError(f"cannot read demo camera video {path}: {exc}") from exc
        if not raw:
            raise WorkerError(f"{path} holds no video packets")
        first = min(int(p.dts) for p in raw)
        end = max(int(p.pts) + (int(p.duration) or frame_ticks) for p in raw)
        packets = tuple(
            LoopPacket(bytes(p), int(p.pts) - first, int(p.dts) - first, bool(p.is_keyframe))
            for p in raw
        )
        return LoopClip(
            codec=codec,
            width=int(stream.codec_context.width),
            height=int(stream.codec_context.height),
            rate=rate,
            time_base=time_base,
            span=end - first,
            packets=packets,
        )


class _ByteSink:
    """A write-only file object for PyAV's muxer; :meth:`take` drains what it wrote."""

    def __init__(self) -> None:
        self._buf = bytearray()

    def write(self, data: bytes) -> int:
        self._buf += data
        return len(data)

    def take(self) -> bytes:
        data = bytes(self._buf)
        self._buf.clear()
        return data


class TsLooper:
    """One client's MPEG-TS muxer over a :class:`LoopClip`, repeating it forever."""

    def __init__(self, clip: LoopClip) -> None:
        import av  # noqa: PLC0415

        self.clip = clip
        self._sink = _ByteSink()
        self._container: Any = av.open(
            self._sink, mode="w", format="mpegts", options={"flush_packets": "1"}
        )
        self._stream: Any = self._container.add_stream(clip.codec, rate=clip.rate)
        self._stream.width = clip.width
        self._stream.height = clip.height
        self.index = 0

    def next_dts_seconds(self) -> float:
        """When the next packet is due, in seconds from the start of the stream."""
        clip = self.clip
        loops, i = divmod(self.index, len(clip.packets))
        return float((clip.packets[i].dts + loops * clip.span) * clip.time_base)

    def next_chunk(self) -> bytes:
        """The MPEG-TS bytes of the next packet."""
        import av  # noqa: PLC0415

        clip = self.clip
        loops, i = divmod(self.index, len(clip.packets))
        self.index += 1
        source = clip.packets[i]
        offset = loops * clip.span
        packet = av.Packet(source.data)
        packet.stream = self._stream
        packet.time_base = clip.time_base
        packet.pts = source.pts + offset
        packet.dts = source.dts + offset
        packet.is_keyframe = source.keyframe
        self._container.mux(packet)
        return self._sink.take()

    def close(self) -> bytes:
        """End the stream; returns the muxer's last bytes (for a client that reads to EOF)."""
        with contextlib.suppress(Exception):
            self._container.close()
        return self._sink.take()


CLIP_KEY = web.AppKey("demo_camera_clip", LoopClip)


async def _stream_ts(request: web.Request) -> web.StreamResponse:
    clip = request.app[CLIP_KEY]
    response = web.StreamResponse(
        headers={"Content-Type": "video/mp2t", "Cache-Control": "no-cache"}
    )
    await response.prepare(request)
    looper = TsLooper(clip)
    loop = asyncio.get_running_loop()
    started = loop.time()
    peer = request.remote
    logger.info("camera client %s connected", peer)
    try:
        while True:
            delay = started + looper.next_dts_seconds() - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            await response.write(looper.next_chunk())
    except ConnectionError:
        pass
    finally:
        looper.close()
        logger.info("camera client %s left", peer)
    return response


async def _health(_request: web.Request) -> web.Response:
    return web.Response(text="ok\n")


def create_camera_app(clip: LoopClip) -> web.Application:
    app = web.Application()
    app[CLIP_KEY] = clip
    app.router.add_get(STREAM_PATH, _stream_ts)
    app.router.add_get("/health", _health)
    return app


def run_camera(host: str, port: int, video: Path) -> None:
    """Serve ``video`` at ``http://host:port/stream.ts`` until SIGINT/SIGTERM. Blocking."""
    clip = load_clip(video)
    sock = listen_socket(host, port)  # a taken port: one WorkerError line, no traceback
    logger.info(
        "demo camera: %s (%dx%d, %s fps, %.1f s loop) at http://%s:%d%s",
        video,
        clip.width,
        clip.height,
        clip.rate,
        float(clip.span * clip.time_base),
        host,
        port,
        STREAM_PATH,
    )
    web.run_app(
        create_camera_app(clip),
        sock=sock,
        print=None,
        access_log=None,
        handler_cancellation=True,
        shutdown_timeout=1.0,
    )
