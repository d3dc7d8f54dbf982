"""CPU cost of the live view per camera, against a bare encode of the same frames measured
in the same run.

    .venv/bin/python bench/bench_live.py [--frames 150] [--sizes 1920x1080,1280x720]
        [--max-width 960] [--quality 80] [--analysed-fps 30] [--json]

Input: the project's demo scene (``write_sample_video``: H.264, libx264) at each size, decoded
by PyAV into RGB frames, as a camera reader hands them to the pipeline; the boxes of the two
moving objects (with track ids) are the frame's detections. Then, frame by frame, the three
paths below take turns (their order rotates each frame); each figure is the process CPU time
(``time.process_time``: every thread, so the writer's encode thread counts) of one stored
frame, and the median over the frames:

* ``floor``: bare PyAV, one thread: wrap the RGB frame, one swscale call that scales it to
  ``--max-width`` (area averaging, aspect kept) straight into ``yuvj420p``, and FFmpeg's mjpeg
  encoder with exactly the worker's settings (``media/jpeg.py``: fixed qscale from
  ``--quality``, default Huffman tables, one thread), opened once for the run as the
  worker's writer keeps its encoder. No boxes, no store;
* ``redis``: the worker's :class:`LiveWriter` whole path: ``offer`` (name check, per-key rate
  decision, queue), the wake-up of the writer's render thread, scale, boxes and labels,
  encode, the entry, and ``XADD MAXLEN`` + ``PEXPIRE`` on a real redis-server this bench
  starts on a free port (the store's blocking client, on that thread). The frame counts when
  the store's ``add_blocking`` has returned;
* ``memory``: the same writer with the in-process store (the default without Redis);
* ``render``: the writer's blocking part alone (``render_frame``: scale, boxes and labels,
  encode), called directly: what drawing adds to the floor, and what the rest (the hop to the
  writer's thread and back, the store) adds to it.

The writer runs with a rate limit far above the frame rate so every frame offered is stored
(the decision still runs); what a rate-limited frame costs (``offer`` dropping it, all a
camera's frames between two stored ones cost) is measured apart, over many offers, and
counted at ``--analysed-fps`` in the per-camera figure:

    % of one core per camera = (2 x writer ms per stored frame
                                + (analysed fps - 2) x ms per dropped offer) / 10

Redis's own CPU per frame (``INFO cpu`` before and after the frames; another process, another
pod in production) is reported beside it, not in the ratio. Goals (issue 14): redis / floor
<= 1.1 and < 5% of one core per camera at 1080p.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from fractions import Fraction
from pathlib import Path
from typing import Any, cast

import av
import numpy as np
import numpy.typing as npt
import redis
from av.packet import Packet
from av.video.reformatter import Interpolation, VideoReformatter

from pytrickle_worker.core.frame import VideoFrame
from pytrickle_worker.devtools.assets import write_sample_video
from pytrickle_worker.devtools.synthetic import MOVING_TRUCK_CONFIDENCE, moving_objects
from pytrickle_worker.frontdoors.live.model import LiveEntry
from pytrickle_worker.frontdoors.live.store import FrameStore, MemoryFrameStore, RedisFrameStore
from pytrickle_worker.frontdoors.live.writer import LiveWriter, LiveWriterSettings, render_frame
from pytrickle_worker.media.frames import fit_width
from pytrickle_worker.media.jpeg import JpegEncoder, jpeg_qscale
from pytrickle_worker.processing.sink import SinkFrame
from pytrickle_worker.sources.frame import DecodedFrame

CLIP_FPS = 30
#: swscale threads of the floor: one, as the worker's JPEG path uses (its default, one per
#: core, costs more CPU for the same pixels).
SWS_THREADS = 1
STORED_FPS = 2.0
#: Frames each path runs before the measured ones (thread pools, codec tables, sockets).
WARMUP = 5
#: Offers timed together for the rate-limited case (one is far below the clock's grain).
DROP_OFFERS = 20_000
#: How long one writer frame may take before the bench gives up (a stuck writer).
WRITE_TIMEOUT_S = 30.0

Rgb = npt.NDArray[np.uint8]
Source = Rgb | DecodedFrame


# ------------------------------------------------------------------------------ input


def decoded_frames(clip: Path, count: int, kind: str) -> list[tuple[Source, list[dict[str, Any]]]]:
    """The clip's first ``count`` frames, each with its scene's detections: as RGB arrays
    (``kind`` "rgb": what the trickle door and an RGB source hand over), or as the decoder's
    frames (``kind`` "decoded": what a camera reader hands the CMS door, ``DecodedFrame``)."""
    frames: list[tuple[Source, list[dict[str, Any]]]] = []
    with av.open(str(clip)) as container:
        stream = container.streams.video[0]
        for index, frame in enumerate(container.decode(stream)):
            if index >= count:
                break
            width, height = frame.width, frame.height
            records: list[dict[str, Any]] = []
            for track_id, obj in enumerate(moving_objects(index, width, height, CLIP_FPS), 1):
                nominal = 1.0 if obj.class_name == "car" else MOVING_TRUCK_CONFIDENCE
                # A detector's confidence moves a little every frame, and so does the label.
                confidence = nominal - 0.01 * ((index * 7 + track_id * 3) % 9)
                records.append(
                    {
                        "detection": {
                            "class": obj.class_name,
                            "confidence": confidence,
                            "id": track_id,
                        },
                        "bbox": list(obj.box),
                    }
                )
            source: Source = (
                cast("Rgb", frame.to_ndarray(format="rgb24"))
                if kind == "rgb"
                else DecodedFrame(index, time.time(), None, frame)
            )
            frames.append((source, records))
    return frames


def source_size(source: Source) -> tuple[int, int]:
    if isinstance(source, np.ndarray):
        return int(source.shape[1]), int(source.shape[0])
    return source.width, source.height


# ------------------------------------------------------------------------------ floor


class BareEncoder:
    """Scale + JPEG with bare PyAV and the worker's mjpeg settings; nothing else."""

    def __init__(self, max_width: int, quality: int) -> None:
        self.max_width = max_width
        self.qscale = jpeg_qscale(quality)
        self.reformatter = VideoReformatter()
        self.codec: av.VideoCodecContext | None = None
        self.pts = 0

    def encode(self, frame: Source) -> bytes:
        if isinstance(frame, np.ndarray):
            source = av.VideoFrame.from_numpy_buffer(frame, format="rgb24")
        else:
            with frame.decoded() as decoded:
                assert decoded is not None
                source = decoded
        width, height = fit_width(source.width, source.height, self.max_width)
        yuv = self.reformatter.reformat(
            source,
            width=width,
            height=height,
            format="yuvj420p",
            interpolation=Interpolation.AREA,
            threads=SWS_THREADS,
        )
        if self.codec is None or (self.codec.width, self.codec.height) != (width, height):
            # One encoder for the run, as the worker's writer keeps one: opening it costs a
            # sixth of an encode at 960x540.
            codec = self.codec = av.CodecContext.create("mjpeg", "w")
            codec.width, codec.height, codec.pix_fmt = width, height, "yuvj420p"
            codec.time_base = Fraction(1, 25)
            codec.qmin = codec.qmax = self.qscale
            codec.thread_count = 1
            codec.options = {"huffman": "default"}
        yuv.pts, yuv.time_base = self.pts, Fraction(1, 25)
        self.pts += 1
        packets = cast("list[Packet[Any]]", self.codec.encode(yuv))
        return b"".join(bytes(packet) for packet in packets)


# ------------------------------------------------------------------------------ writer


class _Signalled:
    """Mixin for a store: an event set after each write of the writer's thread returns (the
    frame is stored)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.added = threading.Event()
        self.last_bytes = 0

    def add_blocking(self, label: str, key: str, entry: LiveEntry) -> str:
        entry_id: str = super().add_blocking(label, key, entry)  # type: ignore[misc] - mixin over a FrameStore
        self.last_bytes = len(entry.frame)
        self.added.set()
        return entry_id


class SignalledRedisStore(_Signalled, RedisFrameStore):
    pass


class SignalledMemoryStore(_Signalled, MemoryFrameStore):
    pass


def _settings(fps: float, max_width: int, quality: int) -> LiveWriterSettings:
    return LiveWriterSettings(worker_id="bench", fps=fps, max_width=max_width, jpeg_quality=quality)


class WriterCpu:
    """The CPU the worker spends on one writer's frames, and nothing of the bench's.

    Per frame: the caller's ``offer`` (this thread's CPU clock: the name check, the rate
    decision, the queue and the render thread's wake-up), plus the writer's render thread
    from this frame's ``offer`` to the next one's (its own CPU clock, read from here: its
    wake-up, the render, the entry, the store and whatever it does after the store returns).
    The bench's thread waits for the store's signal between the two; that wait and its own
    wake-up are the bench's, not the worker's (in the worker nobody waits for a frame to be
    stored), so they are not counted.
    """

    def __init__(self, writer: LiveWriter, store: _Signalled) -> None:
        thread = writer.render_thread
        if thread is None or thread.ident is None:
            raise RuntimeError("start the writer first")
        self.writer = writer
        self.store = store
        self.clock = time.pthread_getcpuclockid(thread.ident)
        self.offers: list[float] = []
        self.marks: list[float] = []

    def frame(self, rgb: Source, records: list[dict[str, Any]], index: int) -> None:
        frame = VideoFrame(rgb, index, Fraction(1, CLIP_FPS), capture_time=time.time())
        item = SinkFrame("display-1", "camera-1", frame, records, (), "cms", float(CLIP_FPS))
        self.store.added.clear()
        self.marks.append(time.clock_gettime(self.clock))
        started = time.thread_time()
        self.writer.offer(item)
        self.offers.append(time.thread_time() - started)
        if not self.store.added.wait(WRITE_TIMEOUT_S):
            raise RuntimeError(
                f"the writer stored nothing in {WRITE_TIMEOUT_S} s: {self.writer.snapshot()}"
            )

    def per_frame(self) -> list[float]:
        """CPU seconds of each frame (call once the writer is idle after the last)."""
        marks = [*self.marks, time.clock_gettime(self.clock)]
        return [
            offer + after - before
            for offer, before, after in zip(self.offers, marks, marks[1:], strict=False)
        ]


def drop_cost(rgb: Source, records: list[dict[str, Any]]) -> float:
    """CPU seconds of one ``offer`` that the per-key rate limit drops."""
    writer = LiveWriter(MemoryFrameStore(), _settings(STORED_FPS, 960, 80))
    frame = VideoFrame(rgb, 0, Fraction(1, CLIP_FPS))
    item = SinkFrame("display-1", "camera-1", frame, records, (), "cms", float(CLIP_FPS))
    writer.offer(item)  # the first is kept (queued: the writer task is not running)
    started = time.process_time()
    for _ in range(DROP_OFFERS):
        writer.offer(item)
    spent = time.process_time() - started
    assert writer.dropped["rate_limit"] == DROP_OFFERS, writer.snapshot()
    return spent / DROP_OFFERS


# ------------------------------------------------------------------------------ redis


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class RedisServer:
    """A throwaway redis-server on 127.0.0.1 (no persistence)."""

    def __init__(self, workdir: Path) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise SystemExit("redis-server is not installed (apt-get install redis-server)")
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.proc = subprocess.Popen(
            [
                *(binary, "--port", str(self.port), "--bind", "127.0.0.1"),
                *("--save", "", "--appendonly", "no", "--dir", str(workdir)),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        self.client = redis.Redis(port=self.port)
        deadline = time.monotonic() + 10
        while True:
            try:
                self.client.ping()
                break
            except redis.ConnectionError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)

    def cpu_s(self) -> float:
        info = cast("dict[str, float]", self.client.info("cpu"))
        return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])

    def stop(self) -> None:
        self.client.close()
        self.proc.terminate()
        self.proc.wait(timeout=10)


# ------------------------------------------------------------------------------ run


def ms(seconds: float) -> float:
    return round(seconds * 1000, 3)


async def measure_size(
    frames: Sequence[tuple[Source, list[dict[str, Any]]]],
    kind: str,
    server: RedisServer,
    args: argparse.Namespace,
) -> dict[str, Any]:
    bare = BareEncoder(args.max_width, args.quality)
    unlimited = _settings(1000.0, args.max_width, args.quality)
    redis_store = SignalledRedisStore(server.url, maxlen=10, ttl_s=30.0)
    memory_store = SignalledMemoryStore(maxlen=10, ttl_s=30.0)
    redis_writer = LiveWriter(cast("FrameStore", redis_store), unlimited)
    memory_writer = LiveWriter(cast("FrameStore", memory_store), unlimited)
    redis_writer.start()
    memory_writer.start()
    render_reformatter = VideoReformatter()
    render_encoder = JpegEncoder()
    meters = {
        "redis": WriterCpu(redis_writer, redis_store),
        "memory": WriterCpu(memory_writer, memory_store),
    }
    times: dict[str, list[float]] = {"floor": [], "render": []}
    floor_bytes: list[int] = []
    # Only the redis path talks to the server while the frames run.
    redis_before = server.cpu_s()
    try:
        for index, (rgb, records) in enumerate(frames):
            paths: list[tuple[str, Callable[[], Any]]] = [
                ("floor", lambda rgb=rgb: floor_bytes.append(len(bare.encode(rgb)))),
                (
                    "render",
                    lambda rgb=rgb, records=records: render_frame(
                        rgb,
                        records,
                        (),
                        max_width=args.max_width,
                        quality=args.quality,
                        reformatter=render_reformatter,
                        encoder=render_encoder,
                    ),
                ),
                *(
                    (
                        name,
                        lambda m=meter, rgb=rgb, records=records, index=index: m.frame(
                            rgb, records, index
                        ),
                    )
                    for name, meter in meters.items()
                ),
            ]
            shift = index % len(paths)
            for name, run in paths[shift:] + paths[:shift]:
                if name in meters:
                    run()  # timed by its meter
                    continue
                # One thread (one swscale thread, one codec thread): its own CPU clock.
                started = time.thread_time()
                run()
                if index >= WARMUP:
                    times[name].append(time.thread_time() - started)
        await asyncio.sleep(0.2)  # the writers finish their last frame's bookkeeping
        for name, meter in meters.items():
            times[name] = meter.per_frame()[WARMUP:]
        redis_cpu = server.cpu_s() - redis_before
    finally:
        await redis_writer.stop()
        await memory_writer.stop()
        await redis_store.close()
    measured = len(frames) - WARMUP
    assert redis_writer.stored == len(frames), redis_writer.snapshot()
    assert memory_writer.stored == len(frames), memory_writer.snapshot()
    source_w, source_h = source_size(frames[0][0])
    width, height = fit_width(source_w, source_h, args.max_width)
    floor = statistics.median(times["floor"])
    medians = {name: statistics.median(values) for name, values in times.items()}
    drop = statistics.median(drop_cost(frames[0][0], frames[0][1]) for _ in range(3))
    dropped_per_s = max(0.0, args.analysed_fps - STORED_FPS)
    return {
        "input": f"{source_w}x{source_h}",
        "kind": kind,
        "stored": f"{width}x{height}",
        "frames": measured,
        "floor_ms": ms(floor),
        "redis_ms": ms(medians["redis"]),
        "memory_ms": ms(medians["memory"]),
        "render_ms": ms(medians["render"]),
        "render_ratio": round(medians["render"] / floor, 3),
        "redis_ratio": round(medians["redis"] / floor, 3),
        "memory_ratio": round(medians["memory"] / floor, 3),
        "drop_us": round(drop * 1e6, 2),
        "redis_server_ms": ms(redis_cpu / len(frames)),
        "core_pct_per_camera": round(
            (STORED_FPS * medians["redis"] + dropped_per_s * drop) * 100, 2
        ),
        "floor_core_pct": round(STORED_FPS * floor * 100, 2),
        "jpeg_kb_floor": round(statistics.mean(floor_bytes) / 1024, 1),
        "jpeg_kb_writer": round(redis_store.last_bytes / 1024, 1),
    }


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--frames", type=int, default=150, help="stored frames per size")
    parser.add_argument("--sizes", default="1920x1080,1280x720")
    parser.add_argument(
        "--inputs",
        default="rgb,decoded",
        help="rgb (RGB arrays: the trickle door), decoded (the decoder's frames: cameras)",
    )
    parser.add_argument("--max-width", type=int, default=960)
    parser.add_argument("--quality", type=int, default=80)
    parser.add_argument(
        "--analysed-fps",
        type=float,
        default=30.0,
        help="frames a camera offers per second (all but 2 are rate-limited)",
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args()
    if args.frames <= WARMUP:
        parser.error(f"--frames must be more than {WARMUP}")
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        server = RedisServer(Path(tmp))
        try:
            for size in args.sizes.split(","):
                width, height = (int(v) for v in size.lower().split("x"))
                clip = write_sample_video(
                    Path(tmp) / f"clip_{width}x{height}.mp4",
                    width=width,
                    height=height,
                    fps=CLIP_FPS,
                    seconds=args.frames / CLIP_FPS,
                )
                for kind in args.inputs.split(","):
                    if kind not in ("rgb", "decoded"):
                        parser.error(f"--inputs: unknown input {kind!r}")
                    frames = decoded_frames(clip, args.frames, kind)
                    rows.append(asyncio.run(measure_size(frames, kind, server, args)))
                    del frames
        finally:
            server.stop()
    if args.json:
        print(json.dumps({"max_width": args.max_width, "quality": args.quality, "sizes": rows}))
        return 0
    print(
        f"Live view CPU per stored frame (ms, median of {rows[0]['frames']} frames), "
        f"max width {args.max_width}, quality {args.quality}, "
        f"{STORED_FPS:g} stored of {args.analysed_fps:g} analysed fps"
    )
    for row in rows:
        print(
            f"{row['input']:>9} {row['kind']:<7} -> {row['stored']:<8} "
            f"floor {row['floor_ms']:6.2f}  "
            f"render {row['render_ms']:6.2f} (x{row['render_ratio']:.3f})  "
            f"redis {row['redis_ms']:6.2f} (x{row['redis_ratio']:.3f})  "
            f"memory {row['memory_ms']:6.2f} (x{row['memory_ratio']:.3f})  "
            f"drop {row['drop_us']:.2f} us  redis-server {row['redis_server_ms']:.3f}  "
            f"per camera {row['core_pct_per_camera']:.2f}% of a core "
            f"(floor {row['floor_core_pct']:.2f}%)  "
            f"jpeg {row['jpeg_kb_floor']:.0f}/{row['jpeg_kb_writer']:.0f} KB"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
